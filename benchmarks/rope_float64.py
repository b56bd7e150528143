"""Cost of rotating keys in float64 (as the Self-Forcing reference does) instead of float32, on the
shapes the 1.3B model rotates per layer and call at 832x480: one block's queries/keys (3 x 1560
tokens) and a full cache of 18 frames (Self-Forcing's window; rotated at read time by slot).

    python benchmarks/rope_float64.py [--threads 2] [--repeats 5]

Prints JSON: best-of-N milliseconds per rotation for each dtype.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from ltc_stream.models.causal_wan import _rotate


def rotate_float64(x, cos, sin):
    """The same interleaved rotation with the product in float64 (tables in float64)."""
    x1, x2 = x.double().unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    return torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], -1).flatten(-2).type_as(x)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = {"machine": f"CPU, {args.threads} threads", "heads": 12, "head_dim": 128, "ms": {}}
    for tokens in (3 * 1560, 18 * 1560):
        x = torch.randn(1, tokens, 12, 128)
        cos, sin = torch.randn(1, tokens, 1, 128), torch.randn(1, tokens, 1, 128)
        for name, fn, c, s in (("float32", _rotate, cos, sin), ("float64", rotate_float64, cos.double(), sin.double())):
            fn(x, c, s)
            best = float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fn(x, c, s)
                best = min(best, time.perf_counter() - t0)
            out["ms"][f"{tokens} tokens {name}"] = round(best * 1e3, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
