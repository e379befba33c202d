"""concept-workbench: localize and edit concepts inside text-to-image diffusion models."""

from .delta import WeightDelta
from .layers import Layer
from .model import Generation, Patch, Workbench

__all__ = ["Generation", "Layer", "Patch", "WeightDelta", "Workbench"]
__version__ = "0.1.0"
