"""Causal tracing on tiny random models with planted causal layers: the trace must find them."""

import pytest
import torch

from tracing import TraceResult, TraceSettings, spearman, trace_text_encoder, trace_unet
from workbench import Workbench

PROMPT, SUBJECT = "a photo of van gogh by the river", "van gogh"


def quiet(**kw) -> TraceSettings:
    return TraceSettings(progress=False, **kw)


def _plant_text(wb, keep: int):
    """Zero every self-attention output but layer ``keep``'s: only that layer mixes tokens."""
    for i, name in enumerate(wb.layers("out_proj")):
        if i != keep:
            wb.module(name).weight.data.zero_()
            wb.module(name).bias.data.zero_()


def _plant_unet(wb, keep: str):
    """Zero every cross-attention output but ``keep``'s: only that layer reads the text."""
    for name in wb.layers("attn2"):
        if name != keep:
            wb.module(name).to_out[0].weight.data.zero_()
            wb.module(name).to_out[0].bias.data.zero_()


@pytest.mark.parametrize("seed,keep", [(0, 0), (1, 1), (2, 2), (3, 1)])
def test_text_trace_finds_the_only_mixing_layer(seed, keep):
    wb = Workbench.random("tiny", seed=seed, vae=False)
    _plant_text(wb, keep)
    result = trace_text_encoder(wb, PROMPT, SUBJECT, kind="self_attn", settings=quiet(metric="text", samples=4))
    assert result.pick_layers(1) == [f"text.encoder.layers.{keep}.self_attn"]
    assert result.pick_layers(1, by="max") == [f"text.encoder.layers.{keep}.self_attn"]
    others = [i for i in range(len(result.rows)) if i != keep]
    assert result.scores[others].abs().max() < 1e-6  # restoring a zeroed layer restores nothing
    # after the subject, restoring the mixing layer at a token brings that token back: effect > 0
    after = max(result.subject_cols) + 1
    assert result.scores[keep, after] > 1e-3  # one of ~70 corrupted positions comes back
    # before the subject nothing was corrupted (causal mask): effect 0 there
    assert result.scores[:, : min(result.subject_cols)].abs().max() < 1e-6


@pytest.mark.parametrize("seed,keep", [(5, 0), (6, 2)])
def test_text_trace_over_padding_positions(seed, keep):
    """tokens="all" restores padding states too (SD's UNet reads all of them); such traces rank by max."""
    wb = Workbench.random("tiny", seed=seed, vae=False)
    _plant_text(wb, keep)
    result = trace_text_encoder(wb, PROMPT, SUBJECT, kind="self_attn", tokens="all",
                                settings=quiet(metric="text", samples=2))
    n_real = len(wb.tokens(PROMPT))
    assert len(result.cols) == wb.max_length and result.cols[n_real] == f"<pad>@{n_real}"
    assert result.rank_by == "max" and result.pick_layers(1) == [f"text.encoder.layers.{keep}.self_attn"]
    # the mixing layer carries the subject into the padding: restoring it there restores something
    assert result.scores[keep, n_real:].min() > 1e-5  # each is one of ~70 corrupted positions
    others = [i for i in range(len(result.rows)) if i != keep]
    assert result.scores[others].abs().max() < 1e-6
    grouped = result.grouped()
    assert grouped.cols[-1] == "padding"
    assert torch.allclose(grouped.scores[:, -1], result.scores[:, n_real:].mean(1))
    assert torch.allclose(grouped.scores[:, -2], result.scores[:, n_real - 1])  # "last token" is the end-of-text
    with pytest.raises(ValueError, match="tokens must be 'real', 'all'"):
        trace_text_encoder(wb, PROMPT, SUBJECT, tokens="padding", settings=quiet())
    with pytest.raises(ValueError, match=r"position 99 is outside prompt .* 77 positions with padding"):
        trace_text_encoder(wb, PROMPT, SUBJECT, tokens=[99], settings=quiet())


@pytest.mark.parametrize("seed,which", [(0, 0), (1, 2), (2, 3), (4, 1)])
def test_unet_trace_finds_the_only_text_reading_layer(seed, which):
    wb = Workbench.random("tiny", seed=seed, vae=False)
    keep = wb.layers("attn2")[which]
    _plant_unet(wb, keep)
    result = trace_unet(wb, PROMPT, SUBJECT, layers="attn2", windows=2, settings=quiet(samples=3, steps=4))
    assert result.pick_layers(1) == [keep]
    i = result.rows.index(keep)
    # restoring the only text path = clean (at one thread the scores come out 1e-4 short of 1)
    assert torch.allclose(result.scores[i], torch.ones(2), atol=1e-3)
    others = [j for j in range(len(result.rows)) if j != i]
    assert result.scores[others].abs().max() < 1e-5


def test_unet_faithful_trace_on_planted_layer():
    wb = Workbench.random("tiny", seed=0, vae=False)
    keep = wb.layers("attn2")[1]
    _plant_unet(wb, keep)
    ref = wb.sample(PROMPT, seed=0, steps=3)

    def closeness(images):  # a concept scorer: how close to the clean image
        return -(images - ref).flatten(1).norm(dim=1)

    result = trace_unet(wb, PROMPT, SUBJECT, windows=1, scorer=closeness,
                        settings=quiet(metric="faithful", samples=2, steps=3))
    assert result.pick_layers(1) == [keep]
    assert result.corrupted < result.clean
    assert result.scores[result.rows.index(keep), 0] > 0.99


def test_trace_result_round_trip_and_average(tmp_path):
    wb = Workbench.random("tiny", seed=0, vae=False)
    a = trace_text_encoder(wb, PROMPT, SUBJECT, settings=quiet(metric="text", samples=2))
    b = trace_text_encoder(wb, "a cat by van gogh", SUBJECT, settings=quiet(metric="text", samples=2))
    a.save(tmp_path / "a")
    back = TraceResult.load(tmp_path / "a")
    assert torch.equal(back.scores, a.scores) and back.rows == a.rows and back.cols == a.cols
    assert back.subject_cols == a.subject_cols == [4, 5]
    # typed provenance survives result.json: the settings with every default filled in, and the text part's
    assert isinstance(back.settings, TraceSettings) and back.settings == a.settings
    assert (a.settings.draws, a.settings.steps, a.settings.guidance) == (3, wb.defaults["steps"], 7.5)
    assert a.settings.std is not None and back.metric == "text"
    for name in ("row_kinds", "rank_by", "window", "positions", "real_tokens", "subject_positions", "rows_per_forward"):
        assert getattr(back, name) == getattr(a, name), name
    assert a.row_kinds == ["embeddings", "hidden", "hidden", "hidden"] and a.rank_by == "last_subject"
    assert a.pick_layers(4, kinds=("hidden",)) == [r for r in a.pick_layers(4) if r != "text.embeddings"]
    # the recorded settings repeat the trace exactly
    again = trace_text_encoder(wb, back.prompt, back.subject, kind=back.kind, window=back.window,
                               tokens=back.positions, settings=back.settings)
    assert torch.equal(again.scores, a.scores)
    mean = TraceResult.average([a, b])
    assert mean.cols[2] == "last subject" and mean.scores.shape == (len(a.rows), 6)
    assert torch.allclose(mean.scores[:, 2], (a.scores[:, 5] + b.scores[:, 5]) / 2)


def test_trace_errors():
    wb = Workbench.random("tiny", seed=0, vae=False)
    with pytest.raises(ValueError, match="subject 'monet' not found"):
        trace_text_encoder(wb, PROMPT, "monet", settings=quiet())
    with pytest.raises(ValueError, match="empty prompt"):
        trace_unet(wb, "", "x", settings=quiet())
    with pytest.raises(KeyError, match="no layer named 'unet.nope'"):
        trace_unet(wb, PROMPT, SUBJECT, layers=["unet.nope"], settings=quiet())
    with pytest.raises(ValueError, match="needs scorer="):
        trace_text_encoder(wb, PROMPT, SUBJECT, settings=quiet(metric="faithful"))
    with pytest.raises(ValueError, match="metric 'text' is for text-encoder traces"):
        trace_unet(wb, PROMPT, SUBJECT, settings=quiet(metric="text"))
    with pytest.raises(ValueError, match="unknown text-encoder kind 'attn2'"):
        trace_text_encoder(wb, PROMPT, SUBJECT, kind="attn2", settings=quiet())


def test_spearman():
    assert spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([10.0, 20, 30, 40])) == pytest.approx(1.0)
    assert spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([4.0, 3, 2, 1])) == pytest.approx(-1.0)


def test_cross_attention_maps_match_plain_generation():
    from tracing.attention import cross_attention_maps

    wb = Workbench.random("tiny", seed=0, vae=False)
    before = dict(wb.unet.attn_processors)
    maps = cross_attention_maps(wb, ["a photo of van gogh", "a red cat"], seed=3, steps=3)
    assert dict(wb.unet.attn_processors) == before  # processors restored
    plain = wb.sample(["a photo of van gogh", "a red cat"], seed=3, steps=3)
    assert (maps.images - plain).abs().max() < 1e-4  # the eager processor computes the same attention
    assert maps.maps.shape == (2, wb.max_length, 8, 8)
    # probabilities sum to 1 over tokens at each position, summed over 3 steps (bicubic resampling aside)
    total = maps.maps.sum(1)
    assert torch.allclose(total.mean(), torch.tensor(3.0), atol=0.05)
    assert maps.word(0, "van gogh").shape == (8, 8)
    with pytest.raises(ValueError, match="not found in prompt"):
        maps.word(1, "dog")


def test_unique_rows_is_exact():
    from tracing.metrics import unique_rows

    next_up = float(torch.nextafter(torch.tensor(2.0), torch.tensor(3.0)))
    x = torch.tensor([[1.0, 2.0], [0.0, 0.0], [1.0, 2.0], [-0.0, 0.0], [1.0, next_up], [0.0, 0.0]])
    first, inverse = unique_rows(x)
    assert first == [0, 1, 3, 4]  # -0.0 and 0.0 differ in their bits, and so do 2 and the next float
    assert inverse.tolist() == [0, 1, 0, 2, 3, 1]
    assert torch.equal(x[first][inverse].view(torch.int32), x.view(torch.int32))
    first, inverse = unique_rows(x, keys=[0, 0, 1, 0, 0, 0])  # rows with different keys never merge
    assert first == [0, 1, 2, 3, 4] and inverse.tolist() == [0, 1, 2, 3, 4, 1]


@pytest.mark.parametrize("metric", ["proxy", "faithful"])
def test_text_dedupe_changes_no_number(metric, monkeypatch):
    """Restored runs whose text states equal another row's go through the UNet once: same result, bit for bit."""
    import tracing.text as text

    wb = Workbench.random("tiny", seed=0, vae=False)
    ref = wb.sample(PROMPT, seed=0, steps=2)
    kw = dict(tokens=list(range(7)), settings=quiet(metric=metric, samples=2, steps=2))
    if metric == "faithful":
        kw["scorer"] = lambda images: -(images - ref).flatten(1).norm(dim=1)
    deduped = trace_text_encoder(wb, PROMPT, SUBJECT, **kw)
    monkeypatch.setattr(text, "unique_rows", lambda x, keys=None: (list(range(x.shape[0])), torch.arange(x.shape[0])))
    plain = trace_text_encoder(wb, PROMPT, SUBJECT, **kw)
    assert torch.equal(deduped.scores, plain.scores) and torch.equal(deduped.spread, plain.spread)
    assert deduped.clean == plain.clean and deduped.corrupted == plain.corrupted
    done = deduped.rows_per_forward
    key = "unet_rows" if metric == "proxy" else "generations"
    # the 4 positions before the subject, in every row, equal the corrupted run (causal encoder)
    assert done[key] < done[f"{key}_without_dedupe"] == plain.rows_per_forward[key]
    assert done[f"{key}_without_dedupe"] - done[key] >= 4 * len(deduped.rows) * 2 * (3 if metric == "proxy" else 1)
    # restoring before the subject restores nothing: exactly for the proxy (the same UNet output as the
    # corrupted run); faithful compares with the mean corrupted score, a rounding away
    before = deduped.scores[:, :4]
    assert torch.equal(before, torch.zeros_like(before)) if metric == "proxy" else before.abs().max() < 1e-5
