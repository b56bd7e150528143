"""ltc-stream: real-time streaming video generation accelerated by LTC-Accel."""
from __future__ import annotations

__version__ = "0.1.0"

from .ltc import (LTCConfig, LTCWeights, OnlineLTC, SampleInfo, calibrate, calibrate_renoise, make_key,  # noqa: E402
                  psnr, sample, sample_renoise)

__all__ = ["LTCConfig", "LTCWeights", "OnlineLTC", "SampleInfo", "apply_ltc_accel", "calibrate", "calibrate_renoise",
           "make_key", "psnr", "remove_ltc_accel", "sample", "sample_renoise"]


def __getattr__(name: str):
    # The diffusers bridge imports diffusers (slow): load it only when asked for.
    if name in ("apply_ltc_accel", "remove_ltc_accel"):
        from . import diffusers_bridge

        return getattr(diffusers_bridge, name)
    raise AttributeError(f"module 'ltc_stream' has no attribute {name!r}")
