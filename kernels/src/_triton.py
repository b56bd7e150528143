"""Shared Triton helpers: lazy import and the autotune configs (one config under the interpreter,
where every config would be run on the CPU and only correctness matters)."""
from __future__ import annotations

from .dispatch import interpreting


def block_configs(triton, key_blocks=(1024, 2048, 4096), warps=(4, 8)):
    if interpreting():
        return [triton.Config({"BLOCK": 256}, num_warps=1)]
    return [triton.Config({"BLOCK": b}, num_warps=w) for b in key_blocks for w in warps]
