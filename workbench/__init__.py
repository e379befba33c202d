"""concept-workbench: localize and edit concepts inside text-to-image diffusion models."""

from .conditioning import Conditioning
from .delta import WeightDelta
from .layers import Layer
from .model import Generation, Patch, Workbench

__all__ = ["Conditioning", "Generation", "Layer", "Patch", "WeightDelta", "Workbench"]
__version__ = "0.1.0"
