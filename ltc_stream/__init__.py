"""ltc-stream: real-time streaming video generation accelerated by LTC-Accel."""
from __future__ import annotations

__version__ = "0.1.0"
