"""`ltc-stream check-model DIR`: what a model folder is, whether it loads, one block generated from
a random prompt embedding, and whether it fits the GPU's memory (on a machine without a GPU: the
estimate from the weights' sizes and the KV cache, so an operator knows before renting a card)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from .errors import ModelNotFoundError

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def component_parameters(folder: Path) -> dict[str, int]:
    """Parameters per component, read from the safetensors headers (no weight is loaded)."""
    from safetensors import safe_open

    counts: dict[str, int] = {}
    for name in ("transformer", "unet", "motion_adapter", "text_encoder", "vae"):
        total = 0
        for file in sorted((folder / name).glob("*.safetensors")) if (folder / name).is_dir() else []:
            with safe_open(str(file), "pt") as f:
                for key in f.keys():
                    n = 1
                    for d in f.get_slice(key).get_shape():
                        n *= d
                    total += n
        if total:
            counts[name] = total
    taehv = folder / "taehv" / "taew2_1.pth"
    if taehv.is_file():
        from .models.taehv import TAEHVDecoder

        counts["taehv"] = sum(p.numel() for p in TAEHVDecoder().parameters())
    return counts


def memory_estimate(model, counts: dict[str, int], dtype_bytes: int) -> dict[str, float]:
    """GiB of the weights in the run's dtype and of the full KV cache at the model's resolution.
    Activations are not included (a GPU run reports the measured peak instead)."""
    gib = 2 ** 30
    out = {f"{name}_gib": n * dtype_bytes / gib for name, n in counts.items()}
    if hasattr(model, "tokens_per_frame"):
        cfg = model.transformer.config
        frames = model.sink_frames + model.window_frames
        width = cfg.num_attention_heads * cfg.attention_head_dim
        out["kv_cache_gib"] = 2 * cfg.num_layers * frames * model.tokens_per_frame() * width * dtype_bytes / gib
    out["total_gib"] = sum(out.values())
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model folder (from ltc-stream import, or any folder serve --model takes)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default=None, help="auto (bfloat16 on a GPU, float32 on CPU), bfloat16, float32")
    parser.add_argument("--height", type=int, default=None, help="frame height for the test block (default: the folder's)")
    parser.add_argument("--width", type=int, default=None, help="frame width for the test block (default: the folder's)")
    parser.add_argument("--seed", type=int, default=0)


def _print(label: str, value: Any) -> None:
    print(f"{label:<16} {value}", flush=True)


def main(args: argparse.Namespace) -> int:
    import torch

    from .models import load_model

    folder = Path(args.model).expanduser()
    if not folder.is_dir():
        raise ModelNotFoundError(f"{str(folder)!r} is not a folder")
    manifest = json.loads((folder / "stream.json").read_text()) if (folder / "stream.json").is_file() else None
    if manifest is not None:
        cache, sampling = manifest.get("cache", {}), manifest.get("sampling", {})
        _print("kind", f"{manifest.get('kind')} (imported from {manifest.get('source', {}).get('checkpoint')})")
        _print("parameters", f"{manifest.get('parameters', 0) / 1e9:.3f} B (transformer), stored as {manifest.get('dtype')}")
        _print("sampler", f"{sampling.get('sampler')}, timesteps {[round(t, 2) for t in sampling.get('timesteps', [])]}, "
                          f"shift {sampling.get('shift')}, guidance {sampling.get('guidance_scale')}")
        _print("window", f"attends {cache.get('attention_frames')} latent frames: sink {cache.get('sink_frames')} "
                         f"({cache.get('sink_update')}) + {cache.get('window_frames')} past + "
                         f"{manifest.get('frames_per_block')} per block")
        _print("decoder", manifest.get("decoder"))
        _print("text length", f"{manifest.get('text', {}).get('max_length')} tokens ({manifest.get('text', {}).get('encoder')})")
    options = {k: v for k, v in (("height", args.height), ("width", args.width), ("dtype", args.dtype)) if v is not None}
    t0 = time.perf_counter()
    model = load_model(str(folder), device=args.device, **options)
    _print("loaded", f"in {time.perf_counter() - t0:.1f} s on {model.device} as {getattr(model, 'dtype', '?')}")
    info = model.describe()
    _print("runs", ", ".join(f"{k}={info[k]}" for k in ("name", "sampler", "steps", "sink_frames", "window_frames",
                                                        "decoder", "height", "width") if k in info))
    cuda = model.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(model.device)
    emb = model.encode_prompt("a test prompt")
    gen = torch.Generator().manual_seed(args.seed)
    random_emb = torch.randn(emb.shape, generator=gen).to(emb.device, emb.dtype)
    state = model.new_stream(seed=args.seed)
    t0 = time.perf_counter()
    result = model.generate_chunk(state, random_emb, ltc=False)
    elapsed = time.perf_counter() - t0
    _print("one block", f"{result.frames.shape[0]} frames {result.frames.shape[2]}x{result.frames.shape[1]} in "
                        f"{elapsed:.2f} s ({result.model_calls} model calls; denoise {result.denoise_s:.2f} s, "
                        f"decode {result.decode_s:.2f} s)")
    dtype_name = str(getattr(model, "dtype", torch.float32)).replace("torch.", "")
    counts = component_parameters(folder)
    where = f"at {model.width}x{model.height}"
    if cuda:
        peak = torch.cuda.max_memory_allocated(model.device) / 2 ** 30
        total = torch.cuda.get_device_properties(model.device).total_memory / 2 ** 30
        verdict = "fits" if peak < 0.95 * total else "does NOT fit"
        _print("GPU memory", f"peak {peak:.2f} GiB of {total:.2f} GiB on {torch.cuda.get_device_name(model.device)} "
                             f"{where} in {dtype_name}: {verdict}")
    elif counts:  # what a card would need in bfloat16, the GPU default
        estimate = memory_estimate(model, counts, DTYPE_BYTES["bfloat16"])
        parts = ", ".join(f"{k[:-4]} {v:.2f}" for k, v in estimate.items() if k != "total_gib")
        _print("GPU memory", f"no GPU here; estimate {estimate['total_gib']:.2f} GiB in bfloat16 {where} "
                             f"({parts}; plus activations)")
    else:
        _print("GPU memory", "no GPU here; no safetensors weights to estimate from")
    return 0
