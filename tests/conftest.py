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
