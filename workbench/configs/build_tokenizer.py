"""Build the small offline CLIP-layout BPE tokenizer the random-weight models use.

Real SD checkpoints bring their own tokenizer; random models need one that behaves like CLIP's
(byte-level alphabet, ``</w>`` word ends, BOS/EOS) without downloading anything. Run once; the
output (``tokenizer/vocab.json``, ``tokenizer/merges.txt``) is committed.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

WORDS = """
a an the of in on at by with and or to from for as is are this that it its his her their our my your
photo picture image painting drawing sketch portrait illustration render rendering art artwork style
styled lovely beautiful detailed realistic abstract oil watercolor digital pencil ink charcoal
cat dog bird fish horse cow sheep lion tiger bear elephant monkey rabbit mouse snake frog duck owl
car truck bus train plane boat ship bicycle motorcycle house church castle tower bridge road city
street village mountain river lake sea ocean beach forest tree flower garden field sky cloud sun
moon star night day morning evening winter summer spring autumn rain snow storm fire water stone
man woman boy girl child person people doctor nurse teacher pilot farmer baker chef soldier king
queen president engineer artist painter scientist lawyer firefighter police officer worker
red orange yellow green blue purple pink black white gray grey brown gold silver teal
big small large tiny tall short old young new happy sad angry dark bright colorful warm cool
cassette player chain saw gas pump tench garbage english springer golf ball parachute french horn
van gogh monet picasso rembrandt dali kahlo hokusai vermeer klimt warhol munch cezanne
nude naked blood gore violence weapon gun knife danger hazard toxic poison
circle square triangle cross heart diamond ring hexagon arrow shape
mascot logo sign poster card book table chair cup bottle window door wall floor room
sitting standing running flying walking looking holding wearing hat shirt dress
""".split()


def bytes_to_unicode() -> dict[int, str]:
    # CLIP's reversible byte -> printable-unicode map (the GPT-2 scheme).
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    chars = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, map(chr, chars), strict=True))


def build(out: Path, vocab_size: int = 2000) -> None:
    alphabet = sorted(bytes_to_unicode().values())
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=alphabet, end_of_word_suffix="</w>", show_progress=False
    )
    # Each word twice so every listed word ends as one token; frequencies are otherwise flat.
    bpe.train_from_iterator([" ".join(WORDS)] * 2, trainer)
    merges = [tuple(m) if isinstance(m, (list, tuple)) else tuple(m.split()) for m in
              json.loads(bpe.to_str())["model"]["merges"]]
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab: dict[str, int] = {}
    for t in tokens:
        vocab.setdefault(t, len(vocab))
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")


if __name__ == "__main__":
    build(Path(__file__).parent / "tokenizer")
