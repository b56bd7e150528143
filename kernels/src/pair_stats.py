"""`pair_stats(a, b)` -> fp32 [<a,b>, ||a||^2, ||b||^2] in one pass over both tensors.

Deterministic: each program writes its block's partial sums, then one program adds the partials
in a fixed order (no float atomics), so the bits are the same every run. No host sync.
From the three numbers come the angle between a and b and LTC's closed-form least-squares weight.
"""
from __future__ import annotations

import functools
import math

import torch


def pair_stats_ref(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a32, b32 = a.reshape(-1).float(), b.reshape(-1).float()
    return torch.stack([torch.dot(a32, b32), torch.dot(a32, a32), torch.dot(b32, b32)])


def angle_from_stats(stats: torch.Tensor) -> torch.Tensor:
    """arccos(<a,b> / (|a||b|)) in radians (0-d tensor); pi/2 when either vector is zero."""
    denom = torch.sqrt(stats[1] * stats[2])
    cos = torch.where(denom > 0, stats[0] / denom.clamp_min(1e-30), torch.zeros_like(denom))
    return torch.arccos(cos.clamp(-1.0, 1.0))


def lsq_weight_from_stats(stats: torch.Tensor, gamma: float | torch.Tensor = 1.0) -> torch.Tensor:
    """argmin_w ||a - w * gamma * b||^2 = <a,b> / (gamma * ||b||^2); 1.0 when b is zero."""
    return torch.where(stats[2] > 0, stats[0] / (gamma * stats[2]).clamp_min(1e-30), torch.ones_like(stats[2]))


@functools.lru_cache(maxsize=1)
def _kernels():
    import triton
    import triton.language as tl

    from ._triton import block_configs

    @triton.autotune(configs=block_configs(triton), key=["n"])
    @triton.jit
    def partial_kernel(a_ptr, b_ptr, part_ptr, n, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        a = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(part_ptr + pid * 3 + 0, tl.sum(a * b, axis=0))
        tl.store(part_ptr + pid * 3 + 1, tl.sum(a * a, axis=0))
        tl.store(part_ptr + pid * 3 + 2, tl.sum(b * b, axis=0))

    @triton.jit
    def finish_kernel(part_ptr, out_ptr, n_parts, BLOCK: tl.constexpr):
        acc_ab = tl.zeros([BLOCK], tl.float32)
        acc_aa = tl.zeros([BLOCK], tl.float32)
        acc_bb = tl.zeros([BLOCK], tl.float32)
        for start in range(0, n_parts, BLOCK):
            idx = start + tl.arange(0, BLOCK)
            m = idx < n_parts
            acc_ab += tl.load(part_ptr + idx * 3 + 0, mask=m, other=0.0)
            acc_aa += tl.load(part_ptr + idx * 3 + 1, mask=m, other=0.0)
            acc_bb += tl.load(part_ptr + idx * 3 + 2, mask=m, other=0.0)
        tl.store(out_ptr + 0, tl.sum(acc_ab, axis=0))
        tl.store(out_ptr + 1, tl.sum(acc_aa, axis=0))
        tl.store(out_ptr + 2, tl.sum(acc_bb, axis=0))

    return partial_kernel, finish_kernel


def pair_stats_triton(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.contiguous(), b.contiguous()
    n = a.numel()
    partial_kernel, finish_kernel = _kernels()
    # Partials sized for the smallest autotuned block, so any chosen block fits.
    parts = torch.zeros(max(1, math.ceil(n / 256)) * 3, dtype=torch.float32, device=a.device)
    grid = lambda meta: (max(1, -(-n // meta["BLOCK"])),)  # noqa: E731
    partial_kernel[grid](a, b, parts, n)
    out = torch.empty(3, dtype=torch.float32, device=a.device)
    finish_kernel[(1,)](parts, out, parts.numel() // 3, BLOCK=256)
    return out
