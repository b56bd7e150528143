"""A non-finite flag in device memory: kernels OR into it as they write, the caller reads it once
per chunk, so a NaN never reaches a viewer's screen silently and the loop has no per-step sync."""
from __future__ import annotations

import torch

from ltc_stream.errors import NonFiniteError


def new_nonfinite_flag(device: torch.device | str) -> torch.Tensor:
    """int32 [1] zero on `device`; any kernel given `flag=` sets it to 1 on a NaN/Inf output."""
    return torch.zeros(1, dtype=torch.int32, device=device)


def mark_nonfinite_ref(flag: torch.Tensor | None, *tensors: torch.Tensor) -> None:
    """Reference: flag |= any(!isfinite(t)) without a host sync."""
    if flag is None:
        return
    for t in tensors:
        bad = (~torch.isfinite(t)).any().to(torch.int32).reshape(1)
        torch.maximum(flag, bad, out=flag)


def raise_if_nonfinite(flag: torch.Tensor, where: str = "latent") -> None:
    """The one host read per chunk; raises NonFiniteError and clears the flag when it was set."""
    if int(flag.item()):
        flag.zero_()
        raise NonFiniteError(f"NaN or Inf appeared in the {where}; the chunk was not shown")
