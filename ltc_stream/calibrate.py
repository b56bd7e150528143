"""`ltc-stream calibrate`: LTC-Accel's weights for a model folder, and the curve to choose them from.

For each tau (the largest angle between adjacent transitions at which LTC may skip a step), the
model's own calibration (`ltc.calibrate` on its first chunk) runs on one set of prompts and noise;
then streams on other prompts and noise are generated with those weights and with every step, and
the curve is model calls per chunk against the PSNR of the LTC frames against the full-step frames
(the pixels a viewer sees, peak 255). With one `--tau` and `--save`, its weights go into the
folder as `ltc_weights.json`, which serve, render and bench load with the model.

A folder made by `ltc-stream import` samples with its authors' re-noise sampler, where the angle
rule does not apply (adjacent predictions are far apart): for it the curve is
`stream_folder.calibrate_stream_folder`'s sweep (LTC, plain reuse and a shorter schedule at each
number of calls, in latent PSNR against the full run), and `--save` stores the best skip at one
call fewer.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from .cli import add_model_arguments, load_model_from_args
from .errors import ConfigError
from .ltc import LTC_FILE, LTCConfig, LTCWeights

TAUS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.8)
# calibration prompts for models that name none of their own (general scenes, not the evaluated ones)
GENERAL_PROMPTS = ("a red ball rolls to the left", "a blue square moves up over a green field",
                   "waves breaking on a beach at sunset", "a city street at night with passing cars",
                   "a cat walking through tall grass", "clouds drifting over snowy mountains",
                   "a candle flame flickering in a dark room", "a bird flying over a lake")
EVAL_PROMPTS = ("a yellow star spinning on a purple background", "a forest in autumn, leaves falling",
                "a white square moving up on a green background", "a sailing boat on a calm sea")


def calibration_prompts(model, n: int) -> list[str]:
    """The default model calibrates on captions of its training world (as its packaged weights
    were); other models on general scenes."""
    if hasattr(model, "calibrate_ltc"):
        from .models.default.world import sample_scene

        return [sample_scene(s).caption for s in range(n)]
    return [GENERAL_PROMPTS[i % len(GENERAL_PROMPTS)] for i in range(n)]


def calibrate_weights(model, prompts: list[str], cfg: LTCConfig, seed: int = 0) -> LTCWeights:
    """The model's LTC weights for `cfg`, keyed to its current settings (not installed, not saved)."""
    if hasattr(model, "calibrate_ltc"):  # the default model calibrates itself
        return model.calibrate_ltc(prompts, cfg, seed=seed)
    from .models.adapters import calibrate_model

    return calibrate_model(model, prompts, cfg, seed=seed)


def frame_psnr(frames: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB of uint8 frames against the reference (peak 255); inf where identical."""
    mse = float(np.mean((frames.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def _streams(model, embeddings, seeds, chunks: int, ltc: bool) -> tuple[list[np.ndarray], float]:
    """Frames of each (prompt, seed) stream's first `chunks` chunks, and model calls per chunk."""
    videos, calls, count = [], 0, 0
    for emb in embeddings:
        for seed in seeds:
            state, frames = model.new_stream(seed), []
            for _ in range(chunks):
                result = model.generate_chunk(state, emb, ltc=ltc)
                frames.append(result.frames)
                calls += result.model_calls
                count += 1
            videos.append(np.concatenate(frames))
    return videos, calls / count


def curve(model, taus, *, max_skips: int | None = None, prompts: int = 16, streams: int = 8, chunks: int = 2,
          progress: bool = True) -> tuple[list[dict], list[LTCWeights]]:
    """One row per tau: its skipped steps, model calls per chunk and PSNR (mean and worst stream)
    against every step, measured on streams whose prompts and noise the calibration did not see;
    and each tau's weights."""
    cal_prompts = calibration_prompts(model, prompts)
    texts = list(getattr(model, "example_prompts", ()) or EVAL_PROMPTS)
    per_prompt = max(1, math.ceil(streams / len(texts)))
    texts = texts[: math.ceil(streams / per_prompt)]
    embeddings = [model.encode_prompt(t) for t in texts]
    seeds = [1000 + k for k in range(per_prompt)]  # calibration draws from seed 0
    folder_weights = model.ltc_weights
    full, steps_calls = _streams(model, embeddings, seeds, chunks, ltc=False)
    rows, calibrated = [], []
    try:
        for tau in taus:
            weights = calibrate_weights(model, cal_prompts, LTCConfig(tau=tau, max_skips=max_skips))
            calibrated.append(weights)
            model.ltc_weights = weights
            videos, calls = _streams(model, embeddings, seeds, chunks, ltc=True)
            scores = [frame_psnr(v, f) for v, f in zip(videos, full)]
            row = {"tau": tau, "skipped_steps": weights.skipped_steps, "model_calls": round(calls, 2),
                   "steps": model.steps, "psnr_db": _db(float(np.mean(scores))), "worst_psnr_db": _db(min(scores))}
            rows.append(row)
            if progress:
                print(f"[calibrate] tau {tau:<5g} {row['model_calls']:5g} of {model.steps} calls  "
                      f"PSNR {_show(row['psnr_db'])} dB (worst {_show(row['worst_psnr_db'])})", file=sys.stderr)
    finally:
        model.ltc_weights = folder_weights
    return rows, calibrated


def _db(value: float) -> float | None:
    return None if math.isinf(value) else round(value, 2)  # None: identical to every step (no skip)


def _show(value: float | None) -> str:
    return "  same" if value is None else f"{value:6.2f}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = "ltc-stream calibrate --model DIR [--tau T ...] [--save] [options]"
    add_model_arguments(parser, ltc=False)
    group = parser.add_argument_group("calibration")
    group.add_argument("--tau", type=float, nargs="+", default=list(TAUS), metavar="T",
                       help=f"angles (radians) to measure (default: {' '.join(map(str, TAUS))})")
    group.add_argument("--max-skips", type=int, default=None, metavar="N",
                       help="skip at most N steps per chunk, those with the smallest angles (default: no cap)")
    group.add_argument("--prompts", type=int, default=16, metavar="N", help="calibration prompts (default 16)")
    group.add_argument("--streams", type=int, default=8, metavar="N", help="evaluated streams (default 8)")
    group.add_argument("--chunks", type=int, default=2, metavar="N", help="chunks per evaluated stream (default 2)")
    group.add_argument("--save", action="store_true",
                       help=f"with one --tau: write its weights into the model folder ({LTC_FILE})")
    group.add_argument("--json", action="store_true", help="print JSON only")


def main(args: argparse.Namespace) -> int:
    for name in ("prompts", "streams", "chunks"):
        if not 1 <= getattr(args, name) <= 1000:
            raise ConfigError(f"--{name} must be between 1 and 1000, got {getattr(args, name)}")
    for tau in args.tau:
        LTCConfig(tau=tau, max_skips=args.max_skips).validate()
    folder = Path(args.model).expanduser()
    from .models import model_family

    if model_family(args.model) == "stream":  # its own sweep; --tau does not apply
        return _calibrate_imported(args, folder)
    if args.save and len(args.tau) != 1:
        raise ConfigError(f"--save writes one calibration: give one --tau (the curve's choice), got {len(args.tau)}")
    if args.save and not folder.is_dir():
        raise ConfigError(f"--save writes {LTC_FILE} into a model folder; {args.model!r} is a built-in name (for the "
                          "packaged default model, copy its folder and calibrate the copy)")
    model = load_model_from_args(args)
    current = model.ltc_weights  # what the folder holds now, for comparison with the curve
    rows, calibrated = curve(model, args.tau, max_skips=args.max_skips, prompts=args.prompts, streams=args.streams,
                             chunks=args.chunks, progress=not args.json)
    report = {"model": model.name, "steps": model.steps, "max_skips": args.max_skips, "curve": rows,
              "folder_weights": None if current is None else {"tau": current.config.get("tau"),
                                                              "max_skips": current.config.get("max_skips"),
                                                              "skipped_steps": current.skipped_steps},
              "command": getattr(args, "command_line", None)}
    if args.save:
        calibrated[0].save(folder / LTC_FILE)
        report["saved"] = str(folder / LTC_FILE)
        if not args.json:
            print(f"[calibrate] saved tau {args.tau[0]:g} (skips steps {calibrated[0].skipped_steps}) to "
                  f"{folder / LTC_FILE}", file=sys.stderr)
    print(json.dumps(report))
    return 0


def _calibrate_imported(args: argparse.Namespace, folder: Path) -> int:
    from .cli import model_settings
    from .models.stream_folder import calibrate_stream_folder

    settings = model_settings(args)
    if settings.pop("steps") is not None:
        raise ConfigError("an imported model samples at its authors' timesteps; --steps does not apply to it")
    if settings.pop("decoder") not in (None, "auto"):
        raise ConfigError("calibrate measures latents; --decoder does not apply to it")
    options = settings.pop("options")
    prompts = [GENERAL_PROMPTS[i % len(GENERAL_PROMPTS)] for i in range(min(args.prompts, len(GENERAL_PROMPTS)))]
    result = calibrate_stream_folder(folder, prompts, save=args.save, command=getattr(args, "command_line", None),
                                     file=sys.stderr, **settings, **options)
    print(json.dumps({"model": str(folder), "curve": result["curve"], "config": str(result["config"]),
                      "model_calls": result["model_calls"], "saved": args.save,
                      "command": getattr(args, "command_line", None)}, default=str))
    return 0
