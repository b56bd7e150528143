"""`ltc-stream render`: generate a video file offline, prompts optionally changing over time.

    ltc-stream render --prompt "0:a red circle moving left on a blue background" \\
                      --prompt "4:a yellow star spinning on a black background" \\
                      --seconds 8 --output out.mp4 [--model default] [--no-ltc] [--seed N]
                      [--on-prompt-change auto|cut|blend]

A prompt "T:text" takes effect at the first chunk boundary at or after T seconds, taken up exactly
as in the live stream: a scene cut, or blended in over two chunks (`ltc_stream.stream.Steering`).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .stream import PROMPT_CHANGE_OPTIONS, Steering


def parse_timed_prompts(specs: list[str]) -> list[tuple[float, str]]:
    """["0:a red circle", "4:a blue square"] -> [(0.0, ...), (4.0, ...)], sorted; "text" means "0:text"."""
    out = []
    for spec in specs:
        head, sep, tail = spec.partition(":")
        if sep and _is_number(head):
            when, text = float(head), tail.strip()
        else:
            when, text = 0.0, spec.strip()
        if when < 0:
            raise ConfigError(f"prompt time must be >= 0 seconds: {spec!r}")
        if not text:
            raise ConfigError(f"empty prompt in {spec!r}")
        out.append((when, text))
    out.sort(key=lambda p: p[0])
    if not out or out[0][0] > 0:
        raise ConfigError("the first prompt must start at 0 seconds (e.g. --prompt '0:a red circle')")
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def render(model, prompts: list[tuple[float, str]], seconds: float, *, ltc: bool = True, seed: int = 0,
           progress: bool = True, prompt_change: str | None = None) -> tuple[np.ndarray, dict]:
    """Frames uint8 [N, H, W, 3] for `seconds` of video, and figures about the run."""
    total = int(round(seconds * model.fps))
    steering = Steering(model, model.encode_prompt(prompts[0][1]), seed=seed, mode=prompt_change)
    pending = list(prompts[1:])
    frames, calls, steps, t0 = [], 0, 0, time.perf_counter()
    from tqdm import tqdm

    bar = tqdm(total=total, desc="render", unit="frame", disable=not progress, file=sys.stderr)
    while sum(len(f) for f in frames) < total:
        now = sum(len(f) for f in frames) / model.fps
        while pending and pending[0][0] <= now + 1e-9:
            steering.set(model.encode_prompt(pending.pop(0)[1]))
        result = model.generate_chunk(*steering.next(), ltc=ltc)
        frames.append(result.frames)
        calls += result.model_calls
        steps += result.steps
        bar.update(len(result.frames))
    bar.close()
    video = np.concatenate(frames)[:total]
    elapsed = time.perf_counter() - t0
    return video, {"frames": len(video), "seconds_of_video": len(video) / model.fps, "wall_s": round(elapsed, 2),
                   "generation_fps": round(len(video) / elapsed, 1), "model_calls": calls, "steps": steps}


def write_video(path: Path, frames: np.ndarray, fps: float) -> None:
    """H.264 (yuv420p) through PyAV; odd sizes are padded by the encoder's requirements."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = frames.shape[2] - frames.shape[2] % 2, frames.shape[1] - frames.shape[1] % 2
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[: stream.height, : stream.width]), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", action="append", required=True,
                        help='"TEXT" or "SECONDS:TEXT"; repeat to change the prompt over time')
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--output", type=Path, required=True, help="the .mp4 to write")
    parser.add_argument("--model", default="default")
    parser.add_argument("--no-ltc", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--on-prompt-change", choices=PROMPT_CHANGE_OPTIONS, default="auto",
                        help="cut: a new prompt starts a fresh scene; blend: the scene morphs over two chunks; "
                             "auto: the model's choice (the default model cuts)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


def main(args: argparse.Namespace) -> int:
    if not 0 < args.seconds <= 3600:
        raise ConfigError(f"--seconds must be in (0, 3600], got {args.seconds}")
    if args.output.suffix.lower() not in (".mp4", ".mkv", ".mov"):
        raise ConfigError(f"--output must end in .mp4, .mkv or .mov, got {args.output.name!r}")
    prompts = parse_timed_prompts(args.prompt)
    from .models import load_model

    model = load_model(args.model, device=args.device)
    frames, info = render(model, prompts, args.seconds, ltc=not args.no_ltc, seed=args.seed,
                          prompt_change=args.on_prompt_change)
    write_video(args.output, frames, model.fps)
    # "ltc": whether LTC ran (saved a call), not whether it was asked for: a model without LTC weights
    # for these settings runs every step and says so once at load
    applied = not args.no_ltc and info["model_calls"] < info["steps"]
    if not args.no_ltc and not applied:
        print("ltc-stream render: LTC saved no model call (no LTC weights for this model and these settings, "
              "or weights that skip no step)", file=sys.stderr)
    print(json.dumps({"output": str(args.output), "ltc": applied, **info}))
    return 0
