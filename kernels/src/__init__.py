"""Fused kernels of the LTC estimation step, each dispatched by `dispatch.use_triton`:
Triton on CUDA tensors, the PyTorch reference on CPU tensors, `LTC_KERNELS` forces either.

- `extrapolate(x1, x2, c, out=None, flag=None)`: x1 + c * (x1 - x2)
- `pair_stats(a, b)`: fp32 [<a,b>, ||a||^2, ||b||^2]; `angle_from_stats`, `lsq_weight_from_stats`
- `guided_euler_step(x, v_u, v_c, scale, dt, v_out=None, flag=None)`: CFG combine + Euler update
- `new_nonfinite_flag(device)`, `raise_if_nonfinite(flag, where)`: one host read per chunk
"""
from __future__ import annotations

import torch

from .dispatch import use_triton
from .extrapolate import extrapolate_ref, extrapolate_triton
from .guided_euler import guided_euler_step_ref, guided_euler_step_triton
from .nonfinite import new_nonfinite_flag, raise_if_nonfinite
from .pair_stats import angle_from_stats, lsq_weight_from_stats, pair_stats_ref, pair_stats_triton

__all__ = [
    "extrapolate", "pair_stats", "guided_euler_step", "angle_from_stats", "lsq_weight_from_stats",
    "new_nonfinite_flag", "raise_if_nonfinite",
]


def extrapolate(x1: torch.Tensor, x2: torch.Tensor, c, out: torch.Tensor | None = None, flag=None) -> torch.Tensor:
    """x1 + c * (x1 - x2); c a float or a 0-d tensor on the same device."""
    if x1.shape != x2.shape:
        raise ValueError(f"extrapolate: shapes differ {tuple(x1.shape)} vs {tuple(x2.shape)}")
    impl = extrapolate_triton if use_triton(x1, x2) else extrapolate_ref
    return impl(x1, x2, c, out=out, flag=flag)


def pair_stats(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """fp32 tensor [<a,b>, ||a||^2, ||b||^2] on a's device (no host sync)."""
    if a.shape != b.shape:
        raise ValueError(f"pair_stats: shapes differ {tuple(a.shape)} vs {tuple(b.shape)}")
    return pair_stats_triton(a, b) if use_triton(a, b) else pair_stats_ref(a, b)


def guided_euler_step(x, v_u, v_c, scale, dt, v_out=None, flag=None):
    """(x + dt * v, v) with v = v_u + scale * (v_c - v_u), or v = v_c when v_u is None."""
    tensors = (x, v_c) if v_u is None else (x, v_u, v_c)
    impl = guided_euler_step_triton if use_triton(*tensors) else guided_euler_step_ref
    return impl(x, v_u, v_c, scale, dt, v_out=v_out, flag=flag)
