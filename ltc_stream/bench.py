"""`ltc-stream bench model`: a model's chunk generation, lever by lever, side by side in one run.

For each configuration (LTC off/on, full VAE or tiny decoder, eager or torch.compile / CUDA
graphs) it runs warm-up chunks, then measures steady-state chunks and reports:
denoise FPS (frames / sampling seconds), decode FPS, end-to-end FPS (frames / wall seconds of
generate_chunk), time to first frame of a fresh stream, peak GPU memory, model calls per chunk.
Each lever's share is the ratio of end-to-end FPS with and without it, measured in the same run.

Random-weight runs (`--random-weights`) are labelled: throughput does not depend on weight
values, quality does, so their frames mean nothing.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Any

import torch

from .cli import add_model_arguments, load_model_from_args
from .errors import ConfigError
from .ltc import LTCConfig
from .models.speed import compile_network, steady_state_chunks

RANDOM_NAMES = ("wan-causal-1.3b", "animatediff-lightning")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = add_model_arguments(parser, ltc=False)  # LTC is one of the levers
    model.add_argument("--random-weights", action="store_true",
                       help="wan-causal-1.3b, animatediff-lightning: full size, random weights")
    run = parser.add_argument_group("measurement")
    run.add_argument("--chunks", type=int, default=6, metavar="N", help="measured chunks per configuration (default 6)")
    run.add_argument("--warmup", type=int, default=2, metavar="N",
                     help="unmeasured chunks first, at least the model's steady state (Wan: a full KV cache)")
    run.add_argument("--levers", default="ltc,decoder,compile", metavar="LIST",
                     help="switched on in turn: ltc, decoder (tiny), compile, cudagraphs")
    run.add_argument("--tau", type=float, default=None, metavar="T",
                     help="LTC tau for calibrating a model without LTC weights")
    run.add_argument("--output", default=None, metavar="FILE", help="also write the JSON here")
    run.add_argument("--json", action="store_true", help="print JSON only")


def _configs(levers: set[str], cuda: bool, tiny_available: bool, decoder: str = "vae") -> list[dict[str, Any]]:
    """Levers switched on one after another; each entry names the lever it adds."""
    configs = [dict(lever="baseline", ltc=False, decoder=decoder, compile="none")]
    if "ltc" in levers:
        configs.append(dict(configs[-1], lever="ltc", ltc=True))
    if "decoder" in levers and tiny_available:
        configs.append(dict(configs[-1], lever="tiny_decoder", decoder="tiny"))
    base = configs[-1]
    if "compile" in levers:
        configs.append(dict(base, lever="compile", compile="compile"))
    if "cudagraphs" in levers and cuda:
        configs.append(dict(base, lever="cudagraphs", compile="cudagraphs"))
    return configs


def _load(args, decoder: str):
    if args.model in RANDOM_NAMES and not args.random_weights:
        raise ConfigError(f"{args.model!r} has no weights here (nothing is downloaded): pass a local diffusers "
                          "folder, or --random-weights to measure throughput at full size")
    from .models import model_family

    if model_family(args.model) == "default":
        return load_model_from_args(args)
    return load_model_from_args(args, decoder=decoder)


def _tiny_available(args) -> bool:
    from pathlib import Path

    if args.decoder is not None:  # the operator chose the decoder: it is not a lever
        return False
    if args.model in RANDOM_NAMES:
        return True
    folder = Path(args.model)  # TAESD (tiny_vae/) for AnimateDiff, TAEHV (taehv/taew2_1.pth) for Wan
    return args.model != "default" and ((folder / "tiny_vae" / "config.json").is_file()
                                         or (folder / "taehv" / "taew2_1.pth").is_file())


def _ensure_ltc(model, args) -> str:
    if getattr(model, "ltc_weights", None) is not None:
        return "calibrated weights"
    from .models.adapters import calibrate_model

    prompts = ["a red ball rolls to the left", "a blue square moves up over a green field"]
    if hasattr(model, "calibrate_ltc"):  # the default model calibrates itself
        model.ltc_weights = model.calibrate_ltc(prompts, LTCConfig(tau=args.tau or 0.1, max_skips=1))
        return "calibrated now (no ltc_weights.json beside the weights)"
    if args.random_weights:
        # Random weights: angles mean nothing, so skip one step per chunk as a calibrated 4-step
        # model would; the figure is about the cost of the step that is skipped.
        model.ltc_weights = calibrate_model(model, prompts, LTCConfig(tau=3.1, max_skips=1))
        return "one skip per chunk forced (random weights)"
    if getattr(model, "sampler", None) == "renoise":
        # the re-noise sampler's prediction angles are 1-2 rad: no tau rule applies; skip the step
        # of smallest angle (`ltc-stream calibrate DIR` chooses it from measured curves instead)
        model.ltc_weights = calibrate_model(model, prompts, LTCConfig(tau=3.1, max_skips=1))
        return "one skip per chunk, smallest angle (re-noise sampler; no ltc_weights.json in the folder)"
    model.ltc_weights = calibrate_model(model, prompts, LTCConfig(tau=args.tau or 0.1))
    return "calibrated now (no ltc_weights.json in the folder)"


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_config(args, cfg: dict[str, Any]) -> dict[str, Any]:
    model = _load(args, cfg["decoder"])
    ltc_source = _ensure_ltc(model, args) if cfg["ltc"] else None
    compiled = compile_network(model, cfg["compile"])

    def chunk(state, emb):
        return model.generate_chunk(state, emb, ltc=cfg["ltc"])

    device = model.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    emb = model.encode_prompt("a red ball rolls to the left over a blue sky")
    state = model.new_stream(seed=0)
    t0 = time.perf_counter()
    first = chunk(state, emb)  # includes compilation when compiling
    _sync(device)
    ttff_cold = time.perf_counter() - t0
    # warm up past the model's steady state (a causal model's KV cache fills over its first chunks)
    warmup = max(args.warmup, steady_state_chunks(model))
    for _ in range(warmup - 1):
        chunk(state, emb)
    frames = calls = 0
    denoise_s = decode_s = 0.0
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.chunks):
        r = chunk(state, emb)
        frames += len(r.frames)
        calls += r.model_calls
        denoise_s += r.denoise_s
        decode_s += r.decode_s
    _sync(device)
    wall = time.perf_counter() - t0
    # time to first frame of a fresh stream on the warm model (what a new viewer waits)
    state2 = model.new_stream(seed=1)
    t1 = time.perf_counter()
    chunk(state2, emb)
    _sync(device)
    ttff = time.perf_counter() - t1
    entry = dict(cfg, e2e_fps=round(frames / wall, 2), denoise_fps=round(frames / denoise_s, 2),
                 decode_fps=round(frames / decode_s, 2) if decode_s > 0 else None,
                 ttff_s=round(ttff, 3), ttff_cold_s=round(ttff_cold, 3),
                 peak_mem_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
                 calls_per_chunk=round(calls / args.chunks, 2), frames_per_chunk=frames / args.chunks,
                 first_chunk_frames=len(first.frames), ltc_weights=ltc_source, warmup_chunks=warmup,
                 compiled=compiled)
    extra = first.extra or {}
    if "kv_cache_bytes" in extra:
        entry["kv_cache_mb"] = round(r.extra["kv_cache_bytes"] / 2**20, 3)
        entry["cache_calls_per_chunk"] = r.extra.get("cache_calls")
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return entry


def _shares(entries: list[dict[str, Any]]) -> dict[str, float]:
    """Each lever's speed-up: end-to-end FPS with it over the configuration it was added to."""
    out = {}
    entries = [e for e in entries if "error" not in e]
    if len(entries) < 2:
        return out
    by_lever = {e["lever"]: e for e in entries}
    for i, e in enumerate(entries[1:], 1):
        before = entries[i - 1]
        if e["lever"] == "cudagraphs" and "compile" in by_lever:  # both are added to the same eager base
            before = entries[entries.index(by_lever["compile"]) - 1]
        out[e["lever"]] = round(e["e2e_fps"] / before["e2e_fps"], 3)
    best = max(entries, key=lambda e: e["e2e_fps"])
    out["best_over_baseline"] = round(best["e2e_fps"] / entries[0]["e2e_fps"], 3)
    return out


def main(args: argparse.Namespace) -> int:
    if args.chunks < 1 or args.warmup < 1:
        raise ConfigError("--chunks and --warmup must be at least 1")
    levers = {s.strip() for s in args.levers.split(",") if s.strip()}
    unknown = levers - {"ltc", "decoder", "compile", "cudagraphs"}
    if unknown:
        raise ConfigError(f"unknown lever(s): {', '.join(sorted(unknown))}")
    from .device import resolve_device

    device = resolve_device(args.device)
    entries: list[dict[str, Any]] = []
    for cfg in _configs(levers, device.type == "cuda", _tiny_available(args), args.decoder or "vae"):
        if not args.json:
            print(f"[bench] {cfg} ...", file=sys.stderr, flush=True)
        try:
            entry = run_config(args, cfg)
        except ConfigError:
            raise
        except Exception as exc:  # one lever failing (a compiler error, out of memory) is a result too
            entry = dict(cfg, error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500])
            print(f"[bench]   failed: {entry['error']}", file=sys.stderr, flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        entries.append(entry)
        if not args.json and "error" not in entry:
            print(f"[bench]   e2e {entry['e2e_fps']} FPS, denoise {entry['denoise_fps']}, decode "
                  f"{entry['decode_fps']}, calls/chunk {entry['calls_per_chunk']}, TTFF {entry['ttff_s']} s",
                  file=sys.stderr, flush=True)
        if args.output:  # partial results survive a run cut short
            _write(args.output, _result(args, device, entries))
    result = _result(args, device, entries)
    text = json.dumps(result, indent=None if args.json else 2)
    print(text)
    if args.output:
        _write(args.output, result)
    if all("error" in e for e in entries):
        raise ConfigError("every configuration failed: " + entries[0]["error"])
    return 0


def _write(path: str, result: dict[str, Any]) -> None:
    with open(path, "w") as fh:
        fh.write(json.dumps(result, indent=2) + "\n")


def _result(args, device, entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "model": args.model,
        "random_weights": bool(args.random_weights),
        "note": "random weights: throughput only, frames are noise" if args.random_weights else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "size": "x".join(map(str, args.size)) if args.size else None, "steps": args.steps,
        "chunks": args.chunks, "warmup": args.warmup,
        "command": getattr(args, "command_line", None),
        "runs": entries,
        "lever_speedups": _shares(entries) if len(entries) > 1 else {},
    }
