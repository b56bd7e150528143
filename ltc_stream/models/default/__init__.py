"""The built-in default model: a small, distilled, text-conditioned causal video model trained by
the project on a procedural world (see MODEL_CARD.md beside its weights)."""
from .model import PACKAGED, DefaultModel, add_seam_anchor_argument, load_default, seam_anchor_option

__all__ = ["DefaultModel", "PACKAGED", "add_seam_anchor_argument", "load_default", "seam_anchor_option"]
