"""UCE key extraction on a tiny random model: template contexts, anchors and the causal shortcut."""

import torch

from editors import UCERequest, uce
from editors.uce import _anchor, concept_keys


def test_last_token_keys_equal_the_full_encoding(tiny):
    concepts, templates = ["van gogh", "a cat"], ["{}", "a painting by {}", "a photo of {} at night"]
    keys = concept_keys(tiny, concepts, "last", templates)
    full = tiny.encode([" ".join(t.format(c).split()) for c in concepts for t in templates])
    row = 0
    for i, c in enumerate(concepts):
        for j, t in enumerate(templates):
            a = tiny.subject_positions(" ".join(t.format(c).split()), c)[-1]
            assert keys[i][j].shape == (1, full.shape[-1])
            torch.testing.assert_close(keys[i][j][0], full[row, a], rtol=1e-5, atol=1e-5)
            row += 1


def test_empty_guide_anchors_on_the_token_before_the_concept(tiny):
    assert _anchor(tiny, "{}", "") == 0  # the start token, as UCE v2 uses for ""
    n = len(tiny.tokens("a painting by")) - 2
    assert _anchor(tiny, "a painting by {}", "") == n  # "by"
    spans = concept_keys(tiny, ["", "van gogh"], "to_end", ["a painting by {}"])
    assert spans[0][0].shape[0] == tiny.max_length - n  # from "by" through the padding
    assert spans[1][0].shape[0] == tiny.max_length - _anchor(tiny, "a painting by {}", "van gogh")


def test_preserve_prompts_alone_leave_the_weights_alone(tiny):
    # Erasing a concept onto itself is no change; with preserve prompts the solve must return W_old.
    delta = uce.edit(tiny, UCERequest(erase=["a cat"], guides=["a cat"], preserve_prompts=["a dog", "a house"]),
                progress=False)
    for name in delta.names:
        torch.testing.assert_close(delta.tensors[name], tiny.parameter(name).detach(), rtol=1e-4, atol=1e-5)
