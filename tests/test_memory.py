"""workbench.memory: per-row peak estimates, the memory available, and the batch that fits."""

import json

import pytest
import torch

from workbench import Workbench, memory
from workbench.model import CONFIG_DIR, load_builtin_tokenizer

GB = 10**9


def _meta(arch: str, side: int | None = None, vae: bool = True) -> Workbench:
    """A Workbench of ``arch``'s real modules on the meta device: every shape, no weights, no memory."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = {p: json.loads((CONFIG_DIR / arch / f"{p}.json").read_text())
           for p in ("unet", "text_encoder", "scheduler", "vae")}
    if side is not None:
        cfg["unet"]["sample_size"] = side
    text_cfg = {k: v for k, v in cfg["text_encoder"].items() if k not in ("architectures", "model_type")}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(cfg["unet"])
        text = CLIPTextModel(CLIPTextConfig(**text_cfg))
        kl = AutoencoderKL.from_config(cfg["vae"]) if vae else None
    return Workbench(unet, text, load_builtin_tokenizer(cfg["text_encoder"]["max_position_embeddings"]),
                     DDIMScheduler.from_config(cfg["scheduler"]), vae=kl, name=f"meta-{arch}")


@pytest.fixture(scope="module")
def sd15():
    return _meta("sd15")


def test_estimate_grows_with_latent_size_and_batch(sd15):
    sizes = [memory.unet_row_bytes(sd15, (4, s, s)) for s in (16, 32, 64, 96)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert memory.unet_row_bytes(sd15) == sizes[2]  # the model's own 64×64
    # the SD-1.5 64×64 row measured 175–204 MiB: the estimate is above it, but not absurdly
    assert 204 * 2**20 < sizes[2] < 400 * 2**20
    assert memory.unet_row_bytes(sd15, dtype=torch.bfloat16) < sizes[2]
    peaks = [memory.peak_bytes(sd15, "unet", b) for b in (1, 2, 4, 8)]
    assert peaks == sorted(peaks) and peaks[1] - peaks[0] == memory.unet_row_bytes(sd15)
    # classifier-free guidance doubles a generation's UNet rows; the decoder runs after the loop
    assert memory.row_bytes(sd15, "generate") >= 2 * memory.row_bytes(sd15, "unet")
    assert memory.row_bytes(sd15, "generate") >= memory.decoder_row_bytes(sd15) > 965 * 2**20  # measured/image
    assert 6.4 * 2**20 < memory.row_bytes(sd15, "text") < 64 * 2**20  # measured 4.3–6.4 MiB per row
    with pytest.raises(ValueError, match="unknown part 'vae'"):
        memory.row_bytes(sd15, "vae")


def test_sd15_default_shapes_fit_24_gb(sd15):
    assert sd15.latent_shape == (4, 64, 64)
    for part in memory.PARTS:
        rows = memory.rows_per_batch(sd15, part, budget=24 * GB)
        assert rows >= 1 and memory.peak_bytes(sd15, part, rows) <= 24 * GB
        assert memory.peak_bytes(sd15, part, rows + 1) > 24 * GB  # and it is the largest such batch
    # the measured defect: 510 rows at 64×64 (~110 GB) must never be chosen on a 24 GB machine
    assert memory.rows_per_batch(sd15, "unet", budget=24 * GB) < 510
    assert memory.rows_per_batch(sd15, "unet", budget=24 * GB, extra_per_row=10**9) < 24


def test_rows_per_batch_respects_the_environment(sd15, monkeypatch):
    monkeypatch.setenv("WORKBENCH_MEMORY_GB", "24")
    assert memory.available_bytes() == 24 * GB
    rows = memory.rows_per_batch(sd15, "unet")
    assert rows == memory.rows_per_batch(sd15, "unet", budget=int(memory.SAFETY * 24 * GB))
    assert memory.peak_bytes(sd15, "unet", rows) <= memory.SAFETY * 24 * GB
    monkeypatch.setenv("WORKBENCH_MEMORY_GB", "48")
    assert memory.rows_per_batch(sd15, "unet") > rows
    monkeypatch.setenv("WORKBENCH_MEMORY_GB", "0.001")
    assert memory.rows_per_batch(sd15, "unet") == 1  # never 0, however little there is
    assert memory.rows_per_batch(sd15, "generate", budget=0) == 1
    for bad in ("lots", "-2", "0", "nan"):
        monkeypatch.setenv("WORKBENCH_MEMORY_GB", bad)
        with pytest.raises(ValueError, match="WORKBENCH_MEMORY_GB must be a number of gigabytes > 0"):
            memory.available_bytes()


def test_available_memory_is_real(monkeypatch):
    monkeypatch.delenv("WORKBENCH_MEMORY_GB", raising=False)
    free = memory.available_bytes()
    assert free > 0
    meminfo = memory._meminfo_available()
    if meminfo is not None:
        assert free <= meminfo


def test_small_models_and_layer_sizes(monkeypatch):
    monkeypatch.setenv("WORKBENCH_MEMORY_GB", "8")
    tiny = Workbench.random("tiny", seed=0, vae=False)
    assert memory.unet_row_bytes(tiny) < memory.unet_row_bytes(Workbench.random("tiny", sample_size=32, vae=False))
    assert memory.rows_per_batch(tiny, "unet") > 1000  # an 8×8 tiny row costs little
    names = tiny.layers("attn2") + tiny.layers("resnet")[:2]
    sizes = memory.layer_bytes(tiny, names)
    x = torch.zeros(2, *tiny.latent_shape)
    _, reads = tiny.run_unet(x, 1, torch.zeros(2, tiny.max_length, 32), read=names)
    assert sizes == {n: reads[n][0].numel() * reads[n].element_size() for n in names}
    assert memory.layer_bytes(tiny, names) is not sizes and memory.layer_bytes(tiny, names) == sizes  # cached copy
