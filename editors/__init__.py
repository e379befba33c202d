"""Editors. Each module (``uce``, ``quickfix``, ``emcid``, ``esd``) exposes the same interface:

- ``REQUEST``: its request dataclass (every setting, with its default and help text, lives there);
- ``LAYER_KINDS``: the layer kinds ``layers`` may name (None: any layer of the part it edits);
- ``edit(wb, request, layers=None, *, progress=True) -> WeightDelta``, taking the layers tracing located.

``EDITORS`` maps each name to its module; the CLI dispatches through it.
"""

from . import emcid, esd, quickfix, uce
from .emcid import EMCIDRequest
from .esd import ESDRequest
from .quickfix import QuickFixRequest
from .solve import ridge_solve
from .uce import UCERequest, named_attribute_scorer, parse_debias

EDITORS = {"uce": uce, "quickfix": quickfix, "emcid": emcid, "esd": esd}

__all__ = ["EDITORS", "EMCIDRequest", "ESDRequest", "QuickFixRequest", "UCERequest", "emcid", "esd",
           "named_attribute_scorer", "parse_debias", "quickfix", "ridge_solve", "uce"]
