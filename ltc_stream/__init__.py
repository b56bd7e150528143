"""ltc-stream: real-time streaming video generation accelerated by LTC-Accel."""
from __future__ import annotations

__version__ = "0.1.0"

from .ltc import LTCConfig, LTCWeights, OnlineLTC, SampleInfo, calibrate, make_key, psnr, sample  # noqa: E402

__all__ = ["LTCConfig", "LTCWeights", "OnlineLTC", "SampleInfo", "calibrate", "make_key", "psnr", "sample"]
