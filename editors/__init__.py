"""Editors: each is ``edit(wb, request, layers) -> WeightDelta`` and takes the layers tracing located."""

from .esd import ESDRequest, esd
from .quickfix import QuickFixRequest, quickfix
from .solve import ridge_solve
from .uce import UCERequest, uce

EDITORS = {"uce": (uce, UCERequest), "quickfix": (quickfix, QuickFixRequest), "esd": (esd, ESDRequest)}

__all__ = ["EDITORS", "ESDRequest", "QuickFixRequest", "UCERequest", "esd", "quickfix", "ridge_solve", "uce"]
