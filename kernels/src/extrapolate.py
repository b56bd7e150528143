"""`extrapolate(x1, x2, c)`: x1 + c * (x1 - x2) in one pass (the LTC estimate, c = w_g * gamma).

fp32 maths, output in the input dtype; `c` a Python float or a 0-d device tensor (read inside the
kernel, so no host sync). Reference, Triton kernel and wrapper side by side; benchmark in bench.py.
"""
from __future__ import annotations

import functools

import torch

from .nonfinite import mark_nonfinite_ref


def extrapolate_ref(x1: torch.Tensor, x2: torch.Tensor, c, out: torch.Tensor | None = None, flag=None) -> torch.Tensor:
    c32 = c.float() if torch.is_tensor(c) else float(c)
    res = (x1.float() + c32 * (x1.float() - x2.float())).to(x1.dtype)
    if out is not None:
        out.copy_(res)
        res = out
    mark_nonfinite_ref(flag, res)
    return res


@functools.lru_cache(maxsize=1)
def _kernel():
    import triton
    import triton.language as tl

    from ._triton import block_configs

    @triton.autotune(configs=block_configs(triton), key=["n"])
    @triton.jit
    def extrapolate_kernel(x1_ptr, x2_ptr, out_ptr, c_ptr, c_val, flag_ptr, n,
                           C_IS_PTR: tl.constexpr, HAS_FLAG: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        a = tl.load(x1_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(x2_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if C_IS_PTR:
            c = tl.load(c_ptr).to(tl.float32)
        else:
            c = c_val
        y = a + c * (a - b)
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)
        if HAS_FLAG:
            bad = tl.sum(((y != y) | (tl.abs(y) == float("inf"))) & mask, axis=0)
            if bad > 0:
                tl.atomic_max(flag_ptr, 1)

    return extrapolate_kernel


def extrapolate_triton(x1: torch.Tensor, x2: torch.Tensor, c, out: torch.Tensor | None = None, flag=None) -> torch.Tensor:
    a, b = x1.contiguous(), x2.contiguous()  # strided inputs are made dense once; dense ones pass through
    res = torch.empty_like(a) if out is None or not out.is_contiguous() else out
    n = a.numel()
    c_is_ptr = torch.is_tensor(c)
    c_ptr = c.reshape(1) if c_is_ptr else a  # unused pointer when c is a float
    flag_arg = flag if flag is not None else a
    kernel = _kernel()
    grid = lambda meta: (max(1, -(-n // meta["BLOCK"])),)  # noqa: E731
    kernel[grid](a, b, res, c_ptr, 0.0 if c_is_ptr else float(c), flag_arg, n,
                 C_IS_PTR=c_is_ptr, HAS_FLAG=flag is not None)
    if out is not None and res is not out:
        out.copy_(res)
        return out
    return res
