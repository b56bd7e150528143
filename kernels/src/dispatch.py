"""Which implementation runs: Triton on CUDA tensors, the PyTorch reference on CPU tensors.

`LTC_KERNELS=auto|triton|torch` forces a path. A forced Triton path never falls back: if Triton
cannot run (not installed, CPU tensors without TRITON_INTERPRET=1), the call raises.
"""
from __future__ import annotations

import functools
import os

import torch

from ltc_stream.errors import ConfigError

CHOICES = ("auto", "triton", "torch")


def mode() -> str:
    value = os.environ.get("LTC_KERNELS", "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ConfigError(f"LTC_KERNELS={value!r} is not one of {', '.join(CHOICES)}")
    return value


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # an import error of any kind means "not usable here"
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(*tensors: torch.Tensor) -> bool:
    """Decide once per call; raises when Triton is forced but cannot run on these tensors."""
    chosen = mode()
    if chosen == "torch":
        return False
    on_cuda = all(t.is_cuda for t in tensors)
    if chosen == "auto":
        return on_cuda and triton_available()
    if not triton_available():
        raise ConfigError("LTC_KERNELS=triton but Triton cannot be imported")
    if not on_cuda and not interpreting():
        raise ConfigError("LTC_KERNELS=triton on CPU tensors needs TRITON_INTERPRET=1 (set before Triton is imported)")
    return True
