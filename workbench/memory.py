"""How many batch rows fit: a small, conservative estimate of peak bytes per row, and the memory available.

Peak extra bytes per batch row of one no-grad forward (``*_row_bytes``) are counted from the configs in
units of the largest activation and scaled by factors measured on this machine, then padded (``MARGIN``):
the estimate errs on smaller batches. :func:`rows_per_batch` divides a budget (by default ``SAFETY`` of
:func:`available_bytes`) by it. Nothing here runs a full forward; :func:`layer_bytes` runs one tiny one
(cached per model, latent shape and dtype).

Measured (torch 2.13 CPU, 2 threads, float32 unless said; a fresh process per point: build the random
model, one warm-up forward at batch 1, reset the peak with ``/proc/self/clear_refs``, read ``VmHWM`` after
one forward at batch b; MiB over the model-loaded baseline, "per row" the slopes between batch sizes):

==============================================  ==============================  ==========  ==========
forward                                         peak at b = 1 / 2 / 4           per row     estimate
==============================================  ==============================  ==========  ==========
UNet sd15, 64×64 latents                        162 / 366 / 716                 175–204     263
UNet sd15, 32×32                                121 / 158 / 181                 8–37        66
UNet sd15, 64×64, bfloat16                      109 / – / 300                   64          131
UNet sd21, 96×96                                214 / 793 / 1322                264–580     591
UNet tiny, 32×32 (b = 4 / 16 / 64)              18 / 66 / 304                   4.0–5.0     6.6
UNet tiny, 64×64 (b = 4 / 16 / 64)              68 / 321 / 916                  12.4–21     26.4
text encoder sd15 (b = 1 / 8 / 32 / 128)        2.5 / 43 / 137 / 749            4.3–6.4     8.9
KL decoder sd15, 64×64 → 512×512 (b = 1 / 2)    960 / 1930                      960–970     1216
==============================================  ==============================  ==========  ==========

So a UNet row costs up to ~42 times its largest activation (sd15 at 64×64: 320 channels × 64 × 64
floats, 5 MiB): the skip connections held for the up path, the GEGLU feed-forward (8× channels) and the
attention working set; attention itself is the fused kernel (no (HW)² score matrix; an unfused
processor is counted when one is installed). The decoder peaks at ~7.5 times its largest activation
(128 channels at image resolution). Classifier-free guidance doubles the UNet rows of a generation,
and the decoder runs after the denoising loop: the ``generate`` part counts both (the larger per prompt).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

PARTS = ("unet", "text", "generate")
SAFETY = 0.5  # the fraction of the available memory a batch may use
MARGIN = 1.25  # over the largest measured cost per row
UNET_FACTOR = 42 * MARGIN  # peak bytes per row / bytes of the largest UNet activation (measured: ≤ 42)
UNET_MATH_ATTENTION = 3  # score matrices held by an unfused self-attention (scores, softmax, a copy)
TEXT_FACTORS = (5, 8)  # × (intermediate, hidden) activations per token (fits 6.4 MiB/row on sd15)
DECODER_FACTOR = 7.6 * MARGIN  # peak per image / bytes of the decoder's largest activation (measured: 7.5)
FIXED_BYTES = 256 * 2**20  # per forward, whatever the batch: workspaces, allocator slack


def _size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def unet_row_bytes(wb, latent_shape: tuple[int, int, int] | None = None, dtype: torch.dtype | None = None) -> int:
    """Peak bytes one batch row adds to a no-grad UNet forward at ``latent_shape`` (default the model's)."""
    c = wb.unet.config
    _, h, w = latent_shape or wb.latent_shape
    size = _size(dtype or wb.dtype)
    biggest = 0
    attention = 0
    heads = c.attention_head_dim  # diffusers' legacy name: the number of heads in SD-1.x configs
    for level, channels in enumerate(c.block_out_channels):
        area = math.ceil(h / 2 ** level) * math.ceil(w / 2 ** level)
        biggest = max(biggest, channels * area)
        if _unfused_self_attention(wb):
            n_heads = heads[level] if isinstance(heads, (list, tuple)) else heads
            attention = max(attention, UNET_MATH_ATTENTION * int(n_heads) * area * area)
    # a (cross-attention) context row and the input/output latents ride along
    rows_in = wb.max_length * c.cross_attention_dim + 2 * c.in_channels * h * w
    return int((UNET_FACTOR * biggest + attention + rows_in) * size)


def _unfused_self_attention(wb) -> bool:
    """Whether some attention processor of the UNet materialises the score matrix (not the fused SDPA one)."""
    processors = getattr(wb.unet, "attn_processors", {})
    return any("2_0" not in type(p).__name__ and "SDPA" not in type(p).__name__.upper()
               for p in processors.values())


def text_row_bytes(wb, dtype: torch.dtype | None = None) -> int:
    """Peak bytes one batch row adds to a no-grad text-encoder forward (a prompt of ``wb.max_length`` tokens),
    summed over the model's text encoders (they run one after the other, but their outputs are all kept)."""
    t = wb.max_length
    size = _size(dtype or wb.dtype)
    inter, hidden = TEXT_FACTORS
    elements = 0
    for encoder in getattr(wb, "text_encoders", {"text": wb.text_encoder}).values():
        c = encoder.config
        elements += t * (inter * c.intermediate_size + hidden * c.hidden_size) + 3 * c.num_attention_heads * t * t
    return int(elements * size * MARGIN)


def decoder_row_bytes(wb) -> int:
    """Peak bytes one image adds to the decoder (latents -> image); 0 for pixel-space models."""
    vae = getattr(wb, "vae", None)
    if vae is None:  # pixels or a pixel shuffle: a copy of the image at most
        _, h, w = wb.latent_shape
        return 4 * wb.latent_shape[0] * h * w * 4
    c = vae.config
    _, h, w = wb.latent_shape
    factor = 2 ** (len(c.block_out_channels) - 1)
    # the decoder's last level runs the first of block_out_channels at image resolution
    biggest = max(ch * (h * factor // 2 ** i) * (w * factor // 2 ** i)
                  for i, ch in enumerate(c.block_out_channels))
    return int(DECODER_FACTOR * biggest * _size(next(vae.parameters()).dtype))


def row_bytes(wb, part: str) -> int:
    """Peak bytes per row: ``unet`` (one UNet forward row), ``text`` (one text-encoder row) or ``generate``
    (one prompt of :meth:`Workbench.generate`: two UNet rows under classifier-free guidance, then its
    image through the decoder)."""
    if part == "unet":
        return unet_row_bytes(wb)
    if part == "text":
        return text_row_bytes(wb)
    if part == "generate":
        return max(2 * unet_row_bytes(wb) + 2 * text_row_bytes(wb), decoder_row_bytes(wb))
    raise ValueError(f"unknown part {part!r}; expected one of {', '.join(PARTS)}")


# ---------------------------------------------------------------------- what is available
def _env_bytes() -> int | None:
    raw = os.environ.get("WORKBENCH_MEMORY_GB", "").strip()
    if not raw:
        return None
    try:
        gb = float(raw)
    except ValueError:
        gb = float("nan")
    if not math.isfinite(gb) or gb <= 0:
        raise ValueError(f"WORKBENCH_MEMORY_GB must be a number of gigabytes > 0, got {raw!r}")
    return int(gb * 1e9)


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _read_int(path: Path) -> int | None:
    try:
        raw = path.read_text().strip()
    except OSError:
        return None
    return int(raw) if raw.isdigit() else None


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_available() -> int | None:
    """Limit − usage (+ reclaimable file cache) of this process's memory cgroup, when it has a limit."""
    root = Path("/sys/fs/cgroup")
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    best = None
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        rel = rel.lstrip("/")
        if controllers == "":  # cgroup v2
            folder = root / rel
            limit, used = _read_int(folder / "memory.max"), _read_int(folder / "memory.current")
            cache = _stat(folder / "memory.stat", "inactive_file")
        elif "memory" in controllers.split(","):  # cgroup v1
            folder = root / "memory" / rel
            if not folder.is_dir():
                folder = root / "memory"
            limit = _read_int(folder / "memory.limit_in_bytes")
            used = _read_int(folder / "memory.usage_in_bytes")
            cache = _stat(folder / "memory.stat", "total_inactive_file")
        else:
            continue
        if limit is None or used is None or limit >= 2 ** 60:  # "max" or a huge number: no limit
            continue
        free = max(0, limit - used + cache)
        best = free if best is None else min(best, free)
    return best


def available_bytes(device: str | torch.device | None = None) -> int:
    """Memory a new batch can use now: ``WORKBENCH_MEMORY_GB`` (gigabytes, 10⁹ bytes) when set; on a CUDA
    device its free memory plus what torch caches unused; else Linux ``MemAvailable``, or the cgroup's
    headroom when that is lower."""
    env = _env_bytes()
    if env is not None:
        return env
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    found = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    if not found:  # not Linux: assume a modest machine rather than none
        return 8 * 10 ** 9
    return min(found)


def budget_bytes(wb) -> int:
    """The bytes a batch may use by default: ``SAFETY`` × :func:`available_bytes` on the model's device."""
    return int(SAFETY * available_bytes(wb.device))


def peak_bytes(wb, part: str, rows: int, *, extra_per_row: int = 0) -> int:
    """Estimated peak bytes (over the loaded model) of one forward of ``rows`` rows of ``part``."""
    return FIXED_BYTES + int(rows) * (row_bytes(wb, part) + max(0, int(extra_per_row)))


def rows_per_batch(wb, part: str, budget: int | None = None, *, extra_per_row: int = 0) -> int:
    """Batch rows (≥ 1) of ``part`` whose estimated peak fits in ``budget`` bytes.

    ``part``: ``"unet"`` (UNet forward rows), ``"text"`` (text-encoder rows) or ``"generate"`` (prompts per
    :meth:`Workbench.generate` call, classifier-free guidance's doubled rows and the decoder counted).
    ``budget``: bytes the batch may use (default :func:`budget_bytes`: ``SAFETY`` of what is available
    now). ``extra_per_row``: bytes the caller holds per row on top (patch values, reads). The result is
    the largest batch with :func:`peak_bytes` ≤ ``budget``, or 1 when not even one row fits.
    """
    per = row_bytes(wb, part) + max(0, int(extra_per_row))
    budget = budget_bytes(wb) if budget is None else int(budget)
    return max(1, (budget - FIXED_BYTES) // per)


# ---------------------------------------------------------------------- layer outputs
_LAYER_CACHE: dict[tuple, dict[str, int]] = {}


def layer_bytes(wb, names: list[str] | tuple[str, ...]) -> dict[str, int]:
    """Bytes per batch row of each UNet layer's output at the model's latent shape and dtype.

    Two small forwards (bottom side 2 and 4) tell which outputs scale with the latent area; cached per
    (model, latent shape, dtype, names)."""
    names = tuple(names)
    key = (id(wb.unet), wb.latent_shape, wb.dtype, names, wb.max_length)
    if key not in _LAYER_CACHE:
        c = wb.unet.config
        small = 2 ** len(c.down_block_types)
        found = []
        for side in (small, 2 * small):
            x = torch.zeros(1, c.in_channels, side, side, device=wb.device, dtype=wb.dtype)
            ctx = wb.family.dummy_conditioning(wb, wb.max_length)
            _, saved = wb.run_unet(x, torch.tensor([1], device=wb.device), ctx, read=list(names))
            found.append({n: saved[n].numel() * saved[n].element_size() for n in names})
        _, h, w = wb.latent_shape
        out = {}
        for n in names:
            a, b = found[0][n], found[1][n]
            out[n] = a * h * w // (small * small) if b == 4 * a else max(a, b)
        if len(_LAYER_CACHE) > 64:
            _LAYER_CACHE.clear()
        _LAYER_CACHE[key] = out
    return dict(_LAYER_CACHE[key])
