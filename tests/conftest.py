import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Under pytest-xdist each worker takes its share of the cores: two one-thread processes generate ~1.4x the
# images of one two-thread process on the 2-core CI machine.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // _workers))


@pytest.fixture(scope="session")
def tiny():
    from workbench import Workbench

    return Workbench.random("tiny", seed=0)


@pytest.fixture(scope="session")
def word_level_tokenizer():
    """A word-level tokenizer (as the toy world uses): unknown words map to <|unk|>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<|startoftext|>", "<|endoftext|>", "<|unk|>", "a", "red", "circle", "by", "vera", "kolm"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|unk|>", pad_token="<|endoftext|>", model_max_length=16)


@pytest.fixture(scope="session")
def clip_folder(tmp_path_factory):
    """A random-weight CLIP with the repo's CLIP-layout BPE tokenizer and a 32 px image processor."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    from workbench.model import load_builtin_tokenizer

    torch.manual_seed(0)
    tok = load_builtin_tokenizer(77)
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    with torch.no_grad():
        model.logit_scale.fill_(3.0)  # sharper than the init's 2.66, so probabilities spread
    folder = tmp_path_factory.mktemp("clip")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def _write_json(value, file) -> None:
    import json

    file.write_text(json.dumps(value))


def _read_json(file):
    import json

    return json.loads(file.read_text())


@pytest.fixture(scope="session")
def run_shared(tmp_path_factory, worker_id):
    """``run_shared(name, make, save=, load=)``: a value made once per test run and kept in a file of the run's
    temporary folder, which every xdist worker shares; made under a lock, so whoever asks again, on any worker,
    loads it. For expensive readings that depend only on fixed weights and seeds (session fixtures are built
    once per worker: twice under -n 2)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if worker_id != "master" else base  # the run's folder, above each worker's own

    def get(name, make, save=None, load=None):
        save, load = save or _write_json, load or _read_json
        file = root / name
        with FileLock(str(file) + ".lock"):
            if not file.is_file():
                save(make(), file)
            return load(file)  # the same types whichever worker made it

    return get


@pytest.fixture(scope="session")
def doctor_debiased(run_shared):
    """The README's UCE debias recipe on the toy world ("doctor" to 50/50 warm/cool; ~4 min: its alpha is found
    by generating), made once per run for the tests that read it."""
    from workbench import Workbench
    from workbench.delta import WeightDelta
    from workbench.toy import recipes

    toy = Workbench.toy()
    return run_shared(f"doctor_debiased_{toy.fingerprint()}.safetensors", lambda: recipes.uce_debias_doctor(toy)[0],
                      lambda delta, file: delta.save(file), WeightDelta.load)
