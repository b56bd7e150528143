"""Run-time speed levers shared by `serve` and `bench`: torch.compile of a model's network, and
warming a model up before anyone waits on it.

Measured on an H200 (`benchmarks/results/*-h200.json`): compiling gave Wan2.1-1.3B causal 1.21x
and AnimateDiff-Lightning 1.51x end to end. The first chunks after compiling pay for it (Wan's
regional compile ~8 s, AnimateDiff's whole UNet ~100 s), so `serve --compile` warms up before it
takes viewers.
"""
from __future__ import annotations

import time

import torch

COMPILE_MODES = ("none", "compile", "cudagraphs")
BACKEND = "inductor"  # the tests trace with "eager" (dynamo's guards and graphs without code generation)
NETWORK_ATTRS = ("transformer", "unet", "denoiser")  # where each model keeps its denoising network


def network(model) -> torch.nn.Module | None:
    """The model's denoising network (Wan's transformer, AnimateDiff's UNet, the default denoiser)."""
    for attr in NETWORK_ATTRS:
        net = getattr(model, attr, None)
        if isinstance(net, torch.nn.Module):
            return net
    return None


def compile_network(model, mode: str = "compile") -> str | None:
    """Compile the model's network in place; returns what was compiled (None for mode 'none').
    Networks that name their repeated blocks (diffusers' `_repeated_blocks`, e.g. Wan's 30
    transformer blocks) are compiled regionally: one compiled block serves them all, so compiling
    takes seconds, not minutes. 'cudagraphs' adds CUDA graphs (torch.compile's reduce-overhead
    mode) and marks a new graph generation before every chunk."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {COMPILE_MODES}, got {mode!r}")
    net = network(model)
    if net is None or mode == "none":
        return None
    torch._dynamo.reset()  # code compiled before (another model, other settings) is not reused
    kwargs = {"backend": BACKEND}
    if mode == "cudagraphs":
        kwargs["mode"] = "reduce-overhead"
    if getattr(net, "_repeated_blocks", None) and hasattr(net, "compile_repeated_blocks"):
        net.compile_repeated_blocks(**kwargs)
        what = "repeated blocks (" + ", ".join(net._repeated_blocks) + ")"
    else:
        compiled = torch.compile(net, dynamic=False, **kwargs)
        for attr in NETWORK_ATTRS:
            if getattr(model, attr, None) is net:
                setattr(model, attr, compiled)
        what = "whole network"
    if mode == "cudagraphs":
        inner = model.generate_chunk

        def generate_chunk(*args, **kw):
            torch.compiler.cudagraph_mark_step_begin()  # the graphs' earlier outputs may be reused now
            return inner(*args, **kw)

        model.generate_chunk = generate_chunk
    return what


def steady_state_chunks(model) -> int:
    """Chunks until a model's cost per chunk stops changing (a causal model's KV cache fills)."""
    return max(2, getattr(model, "steady_state_chunks", lambda: 2)())


@torch.no_grad()
def warm_up(model, ltc: bool = True, prompt: str | None = None) -> float:
    """Generate chunks on a throwaway stream until the model's steady state (compiling happens on
    the first ones); returns the seconds it took."""
    t0 = time.perf_counter()
    emb = model.encode_prompt(prompt or getattr(model, "example_prompts", ("a red ball rolls to the left",))[0])
    state = model.new_stream(seed=0)
    for _ in range(steady_state_chunks(model)):
        model.generate_chunk(state, emb, ltc=ltc)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0
