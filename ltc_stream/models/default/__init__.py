"""The built-in default model: a small, distilled, text-conditioned causal video model trained by
the project on a procedural world (see MODEL_CARD.md beside its weights)."""
from .model import PACKAGED, DefaultModel, add_sampling_arguments, load_default, sampling_options

__all__ = ["DefaultModel", "PACKAGED", "add_sampling_arguments", "load_default", "sampling_options"]
