"""Editors: each is ``edit(wb, request, layers) -> WeightDelta`` and takes the layers tracing located."""

from .emcid import EMCIDRequest, emcid
from .esd import ESDRequest, esd
from .quickfix import QuickFixRequest, quickfix
from .solve import ridge_solve
from .uce import UCERequest, named_attribute_scorer, parse_debias, uce

EDITORS = {"uce": (uce, UCERequest), "quickfix": (quickfix, QuickFixRequest), "esd": (esd, ESDRequest),
           "emcid": (emcid, EMCIDRequest)}

__all__ = ["EDITORS", "EMCIDRequest", "ESDRequest", "QuickFixRequest", "UCERequest", "emcid", "esd", "quickfix",
           "named_attribute_scorer", "parse_debias", "ridge_solve", "uce"]
