"""Fused guided Euler step: v = v_u + s * (v_c - v_u); x_next = x + dt * v; keep v for LTC.

One pass instead of four eager ops, fp32 maths, outputs in x's dtype. Without `v_u` it is a plain
Euler step (v = v_c). A non-finite x_next sets `flag`.
"""
from __future__ import annotations

import functools

import torch

from .nonfinite import mark_nonfinite_ref


def guided_euler_step_ref(x, v_u, v_c, scale, dt, v_out=None, flag=None):
    vc = v_c.float()
    v = vc if v_u is None else v_u.float() + float(scale) * (vc - v_u.float())
    x_next = (x.float() + float(dt) * v).to(x.dtype)
    v = v.to(x.dtype)
    if v_out is not None:
        v_out.copy_(v)
        v = v_out
    mark_nonfinite_ref(flag, x_next)
    return x_next, v


@functools.lru_cache(maxsize=1)
def _kernel():
    import triton
    import triton.language as tl

    from ._triton import block_configs

    @triton.autotune(configs=block_configs(triton), key=["n"])
    @triton.jit
    def guided_euler_kernel(x_ptr, vu_ptr, vc_ptr, xo_ptr, vo_ptr, flag_ptr, scale, dt, n,
                            GUIDED: tl.constexpr, HAS_FLAG: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(vc_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if GUIDED:
            vu = tl.load(vu_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            v = vu + scale * (v - vu)
        y = x + dt * v
        tl.store(xo_ptr + offs, y.to(xo_ptr.dtype.element_ty), mask=mask)
        tl.store(vo_ptr + offs, v.to(vo_ptr.dtype.element_ty), mask=mask)
        if HAS_FLAG:
            bad = tl.sum(((y != y) | (tl.abs(y) == float("inf"))) & mask, axis=0)
            if bad > 0:
                tl.atomic_max(flag_ptr, 1)

    return guided_euler_kernel


def guided_euler_step_triton(x, v_u, v_c, scale, dt, v_out=None, flag=None):
    x, v_c = x.contiguous(), v_c.contiguous()
    v_u = v_c if v_u is None else v_u.contiguous()
    guided = v_u is not v_c
    n = x.numel()
    x_next = torch.empty_like(x)
    v = v_out if v_out is not None and v_out.is_contiguous() and v_out.dtype == x.dtype else torch.empty_like(x)
    grid = lambda meta: (max(1, -(-n // meta["BLOCK"])),)  # noqa: E731
    _kernel()[grid](x, v_u, v_c, x_next, v, flag if flag is not None else x, float(scale), float(dt), n,
                    GUIDED=guided, HAS_FLAG=flag is not None)
    if v_out is not None and v is not v_out:
        v_out.copy_(v)
        v = v_out
    return x_next, v
