"""Causal tracing (corrupt-and-restore) in the text encoder and the UNet."""

from .corrupt import corruption, embedding_std
from .metrics import spearman
from .result import TraceResult
from .settings import TraceSettings
from .text import trace_text_encoder
from .unet import trace_unet

__all__ = ["TraceResult", "TraceSettings", "corruption", "embedding_std", "spearman", "trace_text_encoder",
           "trace_unet"]
