"""EMCID on the entity toy world (``Workbench.toy("entities")``): ten entities rewritten to new (shape, colour)
targets in one edit, scored by the toy classifier on the same prompts and seeds before and after (issue 7).

The base toy world cannot be used: there an entity's binding sits in its token embedding and is read from
the end-of-text positions, so no MLP edit at the name can single it out (workbench/toy/README.md).
"""

import numpy as np
import pytest

from editors import EMCIDRequest, emcid
from tracing import TraceSettings, trace_text_encoder
from workbench import Workbench
from workbench.evaluate import rates
from workbench.toy import world
from workbench.toy.protocol import concept_prompt, concept_scorer

EDITS = 10
SAMPLES = 10
TRACED = ["zomtrekzol", "vathish", "snobret", "koulsok"]
# Edited: where entities' fc2 keys still differ (twins' cosine 0.22 / 0.51, against 0.79 / 0.96 at layers 2-3,
# the paper's range scaled to this 4-layer encoder).
LAYERS = ["text.encoder.layers.0", "text.encoder.layers.1"]


def mlp_effects(wb: Workbench, entity: str) -> list[float]:
    trace = trace_text_encoder(wb, f"a photo of {entity}", entity, kind="mlp",
                               settings=TraceSettings(samples=8, progress=False))
    return [trace.effect(f"text.encoder.layers.{i}.mlp") for i in range(4)]


@pytest.fixture(scope="module")
def entity_world():
    return Workbench.toy("entities")


def test_mlp_trace_finds_entities_beyond_layer_0_only_in_the_entity_world(entity_world):
    # Proxy restore effects at MLP layers 0-3 (four entities, single traces are noisy, hence the mean),
    # measured on the entity world retrained on the 8x8-attention UNet: rows 0.57 / 0.67 / 0.35 / 0.47,
    # 0.45 / 0.44 / 0.49 / 0.50, 0.39 / 0.18 / 0.22 / 0.33, 0.78 / 0.27 / 0.22 / 0.47 (later layers 0.38 on
    # average, and the best layer is not always 0). In the base world the binding comes from the token
    # embedding, through layer 0 alone, so layer 0 is always best there.
    later = {}
    for name, wb in (("entities", entity_world), ("base", Workbench.toy())):
        effects = np.array([mlp_effects(wb, entity) for entity in TRACED])
        if name == "base":
            assert (effects.argmax(1) == 0).all(), (name, effects)
        later[name] = float(effects[:, 1:].mean())
    assert later["entities"] >= 0.3 and later["base"] <= 0.12, later


@pytest.mark.slow
def test_emcid_rewrites_entities_and_keeps_the_rest(entity_world):
    toy = entity_world
    edits = [world.rebinding(i) for i in range(EDITS)]
    dest = dict(edits)
    # Held out: the last entities whose binding no edit shares ("twins", sharing an edited entity's binding,
    # have similar keys even at layers 0-1: cosine 0.22 / 0.51; benchmarks/emcid_toy.py reports them).
    bound = {world.ENTITIES[n] for n in dest}
    rest = [n for n in reversed(world.ENTITIES) if n not in dest]
    held = [n for n in rest if world.ENTITIES[n] not in bound][:EDITS]
    # The default corpus: the toy grammar's captions, those naming an edited entity left out. λ = 1000, not
    # the paper's 4000: on this corpus 4000 kept 15 % of the 100-edit residual and 64 % success, 1000 kept 5 %
    # and 78 % (benchmarks/emcid_toy.py).
    request = EMCIDRequest(edits, samples="destination", noise_samples=8, lam=1000)
    delta = emcid.edit(toy, request, LAYERS, progress=False)
    assert "naming an edited source left out" in delta.metadata["corpus"], delta.metadata["corpus"]

    def shows_new_target(entity):
        return concept_scorer(dest[entity])

    sources = [s for s, _ in edits]
    unrelated = ["circle", "star", "red", "blue", "jonas flet", "the mascot"]

    def measure() -> dict[str, list[float]]:
        return {"new": rates(toy, sources, concept_prompt, shows_new_target, SAMPLES),
                "own": rates(toy, sources, concept_prompt, concept_scorer, SAMPLES),
                "held": rates(toy, held, concept_prompt, concept_scorer, SAMPLES),
                "unrelated": rates(toy, unrelated, concept_prompt, concept_scorer, SAMPLES)}

    before = measure()
    with delta.applied(toy):
        after = measure()
    summary = {k: (float(np.mean(before[k])), float(np.mean(after[k]))) for k in before}
    # Measured (10 seeds): new target 0 -> 78 %, own 96 -> 0 %, held-out 93 -> 93 % (issue 7's bound: 5
    # points), unrelated prompts unchanged.
    assert summary["new"][0] <= 0.05 and summary["new"][1] >= 0.65, summary
    assert summary["own"][0] >= 0.8 and summary["own"][1] <= 0.1, summary
    assert abs(summary["held"][1] - summary["held"][0]) <= 0.05, summary
    assert np.max(np.abs(np.subtract(after["unrelated"], before["unrelated"]))) <= 0.1, (before, after)
