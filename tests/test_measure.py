"""Scorers from local folders, image-set metrics and prompt suites, each checked against an independent
computation (plain transformers calls, torchmetrics, scipy) on random-weight models made here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from workbench.measure import load_scorer
from workbench.measure.clip import Clip
from workbench.measure.image_sets import Lpips, fid, kid, load_lpips
from workbench.measure.suites import load_suite


def _pil(images: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray((x.permute(1, 2, 0) * 255).round().byte().numpy()) for x in images]


def _plain(folder, texts, images):
    """The independent computation: transformers' own CLIPModel forward on the processor's inputs."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(folder).eval()
    tok, proc = AutoTokenizer.from_pretrained(folder), AutoImageProcessor.from_pretrained(folder)
    ids = tok(texts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=proc(images=_pil(images), return_tensors="pt").pixel_values)
    return out


def test_clip_zero_shot_matches_plain_transformers(clip_folder):
    images = torch.rand(6, 3, 40, 48, generator=torch.Generator().manual_seed(1))  # resized + cropped to 32
    texts = ["a cat", "a dog", "a photo of a car"]
    ours = load_scorer(f"clip:{clip_folder}:a dog,a photo of a car")("a cat")(images)
    ref = _plain(clip_folder, texts, images).logits_per_image.softmax(-1)[:, 0]
    assert torch.allclose(ours, ref, atol=1e-5), (ours, ref)
    assert ours.std() > 1e-3  # the images are told apart: the comparison is not between constants


def test_clip_score_matches_plain_transformers(clip_folder):
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    texts = ["a cat", "a dog on grass", "a red car", "a photo"]
    ours = Clip(clip_folder).clip_score(images, texts)
    out = _plain(clip_folder, texts, images)
    ref = 100 * (out.image_embeds * out.text_embeds).sum(-1).clamp(min=0)
    assert torch.allclose(ours, ref, atol=1e-4)  # 100 x cosine: 1e-6 in cosine terms


def test_clip_refuses_bad_folders_and_concepts(clip_folder, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="is not a CLIP model folder"):
        load_scorer(f"clip:{tmp_path}")
    with pytest.raises(ValueError, match="does not exist"):
        load_scorer(f"clip:{tmp_path}/missing")
    bad = tmp_path / "resnet"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "resnet"}))
    with pytest.raises(ValueError, match="holds a 'resnet' model, expected model_type 'clip'"):
        load_scorer(f"clip:{bad}")
    scorer = load_scorer(f"clip:{clip_folder}:a dog")
    with pytest.raises(ValueError, match="also in the contrast set"):
        scorer("a dog")
    with pytest.raises(ValueError, match="tokens; this CLIP reads at most 77"):
        scorer("cat " * 80)
    with pytest.raises(ValueError, match="unknown scorer 'clop:x'"):
        load_scorer("clop:x")
    with pytest.raises(ValueError, match="no world scorer 'toy'"):
        load_scorer("toy", world=None)


def test_fid_and_kid_match_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(300, 16, generator=gen, dtype=torch.float64)
    b = torch.randn(250, 16, generator=gen, dtype=torch.float64) @ torch.randn(16, 16, generator=gen,
                                                                              dtype=torch.float64) * 0.3 + 0.5

    class Features(torch.nn.Module):  # torchmetrics reads a custom extractor's num_features; inputs are features
        num_features = 16

        def forward(self, x):
            return x

    tm_fid = FrechetInceptionDistance(feature=Features(), normalize=True)
    tm_fid.update(a, real=True)
    tm_fid.update(b, real=False)
    assert fid(a, b) == pytest.approx(float(tm_fid.compute()), rel=1e-6)
    tm_kid = KernelInceptionDistance(feature=Features(), subsets=1, subset_size=250, normalize=True)
    tm_kid.update(a[:250], real=True)
    tm_kid.update(b, real=False)
    mean, _ = kid(a[:250], b, subsets=1, subset_size=250)  # the whole sets: no random subset to disagree on
    assert mean == pytest.approx(float(tm_kid.compute()[0]), rel=1e-6)
    assert fid(a, a) == pytest.approx(0, abs=1e-8) and fid(a, b) > 1


def test_fid_matches_scipy_sqrtm():
    from scipy import linalg

    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(200, 8, generator=gen).double(), torch.randn(150, 8, generator=gen).double() * 2 + 1
    s_a, s_b = np.cov(a.numpy().T), np.cov(b.numpy().T)
    ref = (((a.mean(0) - b.mean(0)) ** 2).sum().item() + np.trace(s_a) + np.trace(s_b)
           - 2 * np.trace(linalg.sqrtm(s_a @ s_b).real))
    assert fid(a, b) == pytest.approx(ref, rel=1e-8)


def test_lpips_from_safetensors(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = Lpips()
    names = {"shift": "scaling_layer.shift", "scale": "scaling_layer.scale"}
    names |= {f"convs.{i}.{p}": f"net.slice{s}.{j}.{p}" for i, (s, j) in
              enumerate([(1, 0), (2, 3), (3, 6), (4, 8), (5, 10)]) for p in ("weight", "bias")}
    names |= {f"lins.{i}.weight": f"lin{i}.model.1.weight" for i in range(5)}
    state = {names[k]: v.abs() if k.startswith("lins") else v for k, v in net.state_dict().items()}
    save_file(state, tmp_path / "lpips.safetensors")
    model = load_lpips(tmp_path / "lpips.safetensors")
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    y = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    d = model(x, y)
    assert torch.allclose(model(x, x), torch.zeros(3), atol=1e-6)
    assert (d > 0).all() and torch.allclose(d, model(y, x), atol=1e-6)
    # by hand, layer by layer: unit-normalise channels, weighted squared difference, spatial mean, sum
    ref = torch.zeros(3)
    for fa, fb, lin in zip(model.features(x * 2 - 1), model.features(y * 2 - 1), model.lins, strict=True):
        na, nb = fa / (fa.norm(dim=1, keepdim=True) + 1e-10), fb / (fb.norm(dim=1, keepdim=True) + 1e-10)
        ref += ((na - nb) ** 2 * lin.weight.view(1, -1, 1, 1)).sum(1).mean((1, 2))
    assert torch.allclose(d, ref, rtol=1e-5)
    save_file({"x": torch.zeros(1)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="lacks lin0.model.1.weight"):
        load_lpips(tmp_path / "other.safetensors")


def test_nudenet_runs_offline():
    pytest.importorskip("nudenet")
    from workbench.measure.nudenet import EXPOSED, detect

    blank = torch.zeros(2, 3, 64, 64)
    found = detect(blank)
    assert found == [[], []]  # a blank image has no detection
    scorer = load_scorer("nudenet")
    assert scorer("nudity")(blank).tolist() == [0.0, 0.0]
    noise = torch.rand(1, 3, 320, 320, generator=torch.Generator().manual_seed(0))
    for d in detect(noise)[0]:  # the detector's output format, whatever it finds on noise
        assert set(d) == {"class", "score", "box"} and 0 <= d["score"] <= 1 and len(d["box"]) == 4
    assert "FEMALE_BREAST_EXPOSED" in EXPOSED and "FACE_FEMALE" not in EXPOSED
    with pytest.raises(ValueError, match="reads 'nudity' or a NudeNet class"):
        scorer("a cat")
    with pytest.raises(ValueError, match="unknown class 'ELBOW_EXPOSED'"):
        load_scorer("nudenet:0.5:ELBOW_EXPOSED")
    with pytest.raises(ValueError, match="threshold must be"):
        load_scorer("nudenet:high")


def test_classifier_scorer_is_top1(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    labels = ["tench, Tinca tinca", "gas pump, gasoline pump", "church"]
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, initializer_range=1.0, num_labels=3, id2label=dict(enumerate(labels)),
                       label2id={x: i for i, x in enumerate(labels)})
    model = ViTForImageClassification(config).eval()  # wide init: random images get different top-1 classes
    model.save_pretrained(tmp_path / "clf")
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "clf")
    images = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    scorer = load_scorer(f"classifier:{tmp_path / 'clf'}")
    from transformers import AutoImageProcessor

    pixels = AutoImageProcessor.from_pretrained(tmp_path / "clf")(images=_pil(images), return_tensors="pt")
    with torch.no_grad():
        top = model(**pixels).logits.argmax(-1)
    assert len(set(top.tolist())) >= 2
    for i, concept in enumerate(["tench", "gasoline pump", "Church"]):
        assert scorer(concept)(images).tolist() == (top == i).float().tolist()
    with pytest.raises(ValueError, match="no class named 'zebra'"):
        scorer("zebra")
    (tmp_path / "labels.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="has 2 labels, the model has 3 classes"):
        load_scorer(f"classifier:{tmp_path / 'clf'}:{tmp_path / 'labels.txt'}")


def test_suites_read_the_field_formats(tmp_path):
    i2p = tmp_path / "i2p.csv"
    i2p.write_text("prompt,categories,hard,nudity_percentage,sd_seed,sd_guidance_scale\n"
                   "a nude figure,sexual,1,80.0,2539888290,7\n\"a man, smiling\",hate,0,0.0,123,7.5\n")
    s = load_suite(i2p)
    assert [(it.prompt, it.seed, it.guidance) for it in s.items] == [("a nude figure", 2539888290, 7.0),
                                                                     ("a man, smiling", 123, 7.5)]
    assert s.items[0].meta["categories"] == "sexual" and s.items[0].concept is None
    nette = tmp_path / "imagenette.csv"
    nette.write_text("case_number,prompt,evaluation_seed,class\n0,Image of cassette player,4068,cassette player\n")
    item = load_suite(nette).items[0]
    assert (item.case, item.seed, item.concept, item.guidance) == ("0", 4068, "cassette player", None)
    coco = tmp_path / "captions.json"
    coco.write_text(json.dumps({"annotations": [{"image_id": 9, "id": 1, "caption": "A dog.  "},
                                                {"image_id": 9, "id": 2, "caption": "a cat"}]}))
    s = load_suite(coco, seed=10)
    assert [(it.case, it.prompt, it.seed) for it in s.items] == [("1", "A dog.", 10), ("2", "a cat", 11)]
    names = tmp_path / "artists.txt"
    names.write_text("# artists\nvera kolm\njonas flet\n")
    s = load_suite(names, template="a circle by {}", per_concept=2, seed=5)
    assert [(it.prompt, it.seed, it.concept) for it in s.items][1:3] == [("a circle by vera kolm", 6, "vera kolm"),
                                                                         ("a circle by jonas flet", 5, "jonas flet")]


@pytest.mark.parametrize("text, match", [
    ("caption_text,seed\nx,1\n", "has no prompt column .* found caption_text, seed"),
    ("prompt,seed\nx,1.5\n", "row 1: seed '1.5' is not a whole number"),
    ("prompt,guidance\nx,high\n", "row 1: guidance 'high' is not a number"),
    ("prompt,case_number\nx,1\ny,1\n", "row 2: case '1' appears twice"),
    ("prompt\n", "has no rows"),
])
def test_suite_bad_files_are_one_line_errors(tmp_path, text, match):
    path = tmp_path / "suite.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_suite(path)
