"""Closed-form editors on the toy world: bad input is refused and leaves the model untouched.

The before/after acceptance tests of issue 5 (UCE erase/moderate/debias, QuickFix) are not here yet: the
first measurements (see the issue note) miss the targets, and a test that is known to fail cannot land.
"""

import pytest
import torch

from editors import QuickFixRequest, UCERequest, quickfix, uce
from workbench import Workbench

SAMPLES = 50


@pytest.fixture(scope="module")
def toy():
    return Workbench.toy()


def test_editor_bad_input(toy):
    with pytest.raises(ValueError, match="empty UCE request"):
        UCERequest()
    with pytest.raises(ValueError, match=r"unknown word\(s\) \['unicorn'\]"):
        uce(toy, UCERequest(erase=["unicorn"]), progress=False)
    with pytest.raises(ValueError, match="is a 'resnet' layer"):
        uce(toy, UCERequest(erase=["circle"]), [toy.layers("resnet")[0]], progress=False)
    with pytest.raises(ValueError, match="is a 'attn2' layer"):
        quickfix(toy, QuickFixRequest(["circle"], ["square"]), [toy.layers("attn2")[0]])
    before = {n: toy.parameter(n).clone() for n in (toy.layers("to_k")[0] + ".weight",)}
    with pytest.raises(ValueError, match="NaN or inf"):
        uce(toy, UCERequest(erase=["circle"], lam=float("nan")), progress=False)
    for n, w in before.items():
        assert torch.equal(toy.parameter(n), w)
