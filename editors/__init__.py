"""Editors: each is ``edit(wb, request, layers) -> WeightDelta`` and takes the layers tracing located."""

from .quickfix import QuickFixRequest, quickfix
from .solve import ridge_solve
from .uce import UCERequest, uce

EDITORS = {"uce": (uce, UCERequest), "quickfix": (quickfix, QuickFixRequest)}

__all__ = ["EDITORS", "QuickFixRequest", "UCERequest", "quickfix", "ridge_solve", "uce"]
