"""The built-in default model: a small, distilled, text-conditioned causal video model trained by
the project on a procedural world (see MODEL_CARD.md beside its weights)."""
from .model import OPTIONS, PACKAGED, DefaultModel, load_default

__all__ = ["DefaultModel", "OPTIONS", "PACKAGED", "load_default"]
