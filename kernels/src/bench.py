"""`ltc-stream bench kernels`: each fused kernel against
eager PyTorch and torch.compile of its reference, side by side in one run, at chunk-sized latents
and at >= 64 MiB. Bytes are counted honestly: every input read once, every output written once.
The device's copy bandwidth is measured in the same run (a clone of the same number of bytes).

On a GPU the fused column is the Triton kernel; without one it is the PyTorch reference (labelled
so), which is what the CPU dispatch runs.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Callable

import torch

from . import extrapolate, guided_euler_step, pair_stats
from .extrapolate import extrapolate_ref
from .guided_euler import guided_euler_step_ref
from .pair_stats import pair_stats_ref

# name -> shape (elements); Wan-1.3B chunk latent (16 ch x 3 frames x 60 x 104) and the default
# model's chunk latent (8 ch x 8 frames x 16 x 16).
SIZES = {
    "default-chunk": (1, 8, 8, 16, 16),
    "wan-chunk": (1, 16, 3, 60, 104),
    "64MiB-fp32": (16 * 1024 * 1024,),
}


def _timer(device: torch.device) -> Callable[[Callable[[], object], int], float]:
    def measure(fn, iters: int) -> float:
        for _ in range(3):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1000 / iters
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) / iters

    return measure


def _cases(shape, dtype, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    c = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    nbytes = a.numel() * a.element_size()
    coeff = torch.tensor(0.93, device=device)
    return {
        # name: (fused, reference, bytes moved)
        "extrapolate": (lambda: extrapolate(a, b, coeff), lambda: extrapolate_ref(a, b, coeff), 3 * nbytes),
        "pair_stats": (lambda: pair_stats(a, b), lambda: pair_stats_ref(a, b), 2 * nbytes),
        "guided_euler_step": (lambda: guided_euler_step(a, b, c, 5.0, -0.25),
                              lambda: guided_euler_step_ref(a, b, c, 5.0, -0.25), 5 * nbytes),
    }, (lambda: a.clone()), 2 * nbytes


def run(device: torch.device, quick: bool, compile_ref: bool) -> dict:
    measure = _timer(device)
    fused_impl = "triton" if device.type == "cuda" else "torch-reference (no GPU: the CPU dispatch path)"
    entries = []
    sizes = dict(SIZES)
    if quick:
        sizes["64MiB-fp32"] = (4 * 1024 * 1024,)  # 16 MiB: keeps a CPU run short
    dtypes = [torch.float32, torch.bfloat16] if not quick else [torch.float32]
    for size_name, shape in sizes.items():
        for dtype in dtypes:
            cases, copy_fn, copy_bytes = _cases(shape, dtype, device)
            numel = 1
            for s in shape:
                numel *= s
            iters = 200 if numel < 1_000_000 else 20
            if device.type == "cpu":
                iters = max(3, iters // 10)
            copy_s = measure(copy_fn, iters)
            copy_gbps = copy_bytes / copy_s / 1e9
            for kernel, (fused, ref, nbytes) in cases.items():
                entry = {"kernel": kernel, "size": size_name, "shape": list(shape), "dtype": str(dtype).replace("torch.", ""),
                         "bytes": nbytes, "impl": fused_impl}
                t = measure(fused, iters)
                entry.update(time_us=round(t * 1e6, 2), gbps=round(nbytes / t / 1e9, 2),
                             fraction_of_copy_bw=round(nbytes / t / 1e9 / copy_gbps, 3))
                t_eager = measure(ref, iters)
                entry["eager"] = {"time_us": round(t_eager * 1e6, 2), "gbps": round(nbytes / t_eager / 1e9, 2)}
                if compile_ref:
                    entry["compiled"] = _compiled(ref, measure, iters, nbytes)
                entry["speedup_vs_eager"] = round(t_eager / t, 3)
                entry["copy_gbps"] = round(copy_gbps, 2)
                entries.append(entry)
                print(f"  {kernel:18s} {size_name:14s} {entry['dtype']:9s} {entry['time_us']:10.1f} us "
                      f"{entry['gbps']:8.1f} GB/s ({entry['fraction_of_copy_bw']:.0%} of copy)  eager {entry['eager']['gbps']:8.1f} GB/s",
                      file=sys.stderr)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "fused_impl": fused_impl,
        "results": entries,
    }


def _compiled(ref, measure, iters, nbytes) -> dict:
    try:
        fn = torch.compile(ref, dynamic=False)
        t = measure(fn, iters)
        return {"time_us": round(t * 1e6, 2), "gbps": round(nbytes / t / 1e9, 2)}
    except Exception as exc:  # a missing compiler toolchain is a figure to report, not a crash
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--quick", action="store_true", help="fewer sizes and dtypes (a CPU smoke run)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile of the references")
    parser.add_argument("--json", action="store_true", help="print the JSON object on stdout")
    parser.add_argument("--output", help="also write the JSON to this file")


def main(args: argparse.Namespace) -> int:
    from ltc_stream.device import resolve_device

    device = resolve_device(args.device)
    if device.type == "cpu" and not args.quick:
        print("bench kernels: no GPU; measuring the CPU reference path", file=sys.stderr)
    result = run(device, args.quick, not args.no_compile)
    result["command"] = getattr(args, "command_line", None)
    text = json.dumps(result, indent=1)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text + "\n")
    if args.json or not args.output:
        print(text)
    return 0

