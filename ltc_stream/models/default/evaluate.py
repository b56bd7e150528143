"""`ltc-stream eval-default`: figures for the default model, as JSON.

- speed: generation FPS (denoise + decode) on this machine, LTC on and off, at the native 128x128
  and at larger sizes (the networks are convolutional; larger sizes measure throughput only);
- fidelity: held-out scenes (seeds and wordings never used in training); the generated video is
  checked from pixels alone: background colour (border pixels), object colour (pixels far from the
  background), direction of motion (the object's centroid track); and the object's size against
  the same scene's own render (`object_area`: a ratio above 1 means blobs larger than the objects);
- continuity: mean frame-to-frame change at chunk boundaries over that inside chunks; beside it
  the same with each chunk's colour offset taken out (how much of a seam is colour), the scenes'
  own change per frame (the scale of a seamless video), and the jump after a true context (the
  scene's own frames: does the model continue what it is given, or redraw it);
- LTC: model calls per chunk with and without LTC, PSNR of the LTC video against the same
  model and noise without LTC;
- prompt change: how often the stream follows a prompt changed mid-stream, for each way of
  taking it up (a scene cut or a blend with the context kept: `ltc_stream.stream.Steering`);
- text sensitivity: how much the denoiser's output moves when a prompt's direction word is
  reversed, against when its object colour is changed (a model that ignores motion words shows
  a ratio near 0 however it is sampled).
With `--calibrate`, LTC weights are measured first and saved beside the model weights.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import numpy as np
import torch

from ...errors import ConfigError
from ...ltc import LTCConfig, psnr, renoise, sample, sample_renoise
from ...stream import PROMPT_CHANGES, Steering
from ..base import parse_model_options, split_option
from .model import LTC_FILE, OPTIONS, load_default, sigma_schedule
from .networks import to_unit
from .training.config import progress
from .world import COLOURS, LINEAR_MOTIONS, caption, render, sample_scene

PALETTE = {name: np.array(rgb, np.float32) for name, (rgb, _) in COLOURS.items()}
STREAM_SEED = 1000  # held-out prompt k's stream (its noise) is seeded STREAM_SEED + k
HELD_OUT_SEED = 2_000_000_000  # training draws seeds below 2**31 from its own stream: collisions are negligible


def nearest_colour(rgb: np.ndarray) -> str:
    return min(PALETTE, key=lambda n: float(np.sum((PALETTE[n] - rgb) ** 2)))


def read_video(frames: np.ndarray) -> dict:
    """What the pixels say: background colour, object colour, direction of motion, and the object's
    size: pixels per frame that differ from the background (the mask the other checks read)."""
    f = frames.astype(np.float32)
    border = np.concatenate([f[:, :3].reshape(-1, 3), f[:, -3:].reshape(-1, 3), f[:, :, :3].reshape(-1, 3), f[:, :, -3:].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    dist = np.sqrt(((f - bg) ** 2).sum(-1))  # [T, H, W]
    mask = dist > 60.0
    obj_pixels = f[mask]
    obj_colour = nearest_colour(np.median(obj_pixels, axis=0)) if len(obj_pixels) > 20 else None
    ys, xs = np.mgrid[0:f.shape[1], 0:f.shape[2]]
    centroids = []
    for m in mask:
        if m.sum() > 10:
            centroids.append((xs[m].mean(), ys[m].mean()))
        else:
            centroids.append(None)
    steps = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(centroids, centroids[1:]) if a is not None and b is not None]
    steps = [s for s in steps if abs(s[0]) < 12 and abs(s[1]) < 12]  # drop wrap-around jumps
    direction = None
    if steps:
        dx, dy = np.median([s[0] for s in steps]), np.median([s[1] for s in steps])
        if max(abs(dx), abs(dy)) > 0.3:
            direction = ("right" if dx > 0 else "left") if abs(dx) >= abs(dy) else ("down" if dy > 0 else "up")
    return {"background": nearest_colour(bg), "object": obj_colour, "direction": direction,
            "object_pixels": round(float(mask.sum(axis=(1, 2)).mean()), 1)}


def frame_change(video: np.ndarray) -> np.ndarray:
    """Mean absolute change (0-255 levels) from each frame to the next: [T - 1]."""
    return np.abs(np.diff(video.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))


def seam_changes(video: np.ndarray, frames_per_chunk: int) -> dict:
    """The frame-to-frame change of a chunked video at the chunk boundaries and inside the chunks,
    and at the boundaries again once each chunk's colour offset is taken out (`colour_matched`: every
    chunk after the first shifted by the per-channel mean difference between its first frame and the
    frame before it, fading to nothing over the chunk), which says how much of a seam is colour."""
    f = video.astype(np.float32)
    t = frames_per_chunk
    changes = frame_change(f)
    at_seam = np.array([(i + 1) % t == 0 for i in range(len(changes))])
    matched = f.copy()
    fade = (1 - np.arange(t) / t)[:, None, None, None]
    for start in range(t, len(f), t):
        offset = matched[start - 1].mean(axis=(0, 1)) - matched[start].mean(axis=(0, 1))
        end = min(start + t, len(f))
        matched[start:end] += fade[: end - start] * offset
    return {"boundary": changes[at_seam].tolist(), "inside": changes[~at_seam].tolist(),
            "boundary_colour_matched": frame_change(matched)[at_seam].tolist()}


def encode_video(model, frames: np.ndarray) -> torch.Tensor:
    """uint8 frames [T, H, W, 3] -> the model's latents [1, C, T, h, w]."""
    return model.autoencoder.encode(to_unit(torch.from_numpy(frames)).to(model.device)).movedim(0, 1)[None]


@torch.no_grad()
def jump_from_true_context(model, scene, embedding: torch.Tensor, seed: int) -> dict:
    """One chunk generated after the scene's own first frames (rendered, encoded by the model's
    autoencoder) as its context: the change from the decoded context's last frame to the chunk's
    first (`jump`) and inside the chunk. A model that continues what it is given jumps about as much
    as it changes inside; one that redraws the scene jumps more, whatever its own chunks were like."""
    context = encode_video(model, render(scene, 0, model.net.context_frames, model.height, model.width))
    state = model.new_stream(seed)
    state.context = context
    chunk = model.generate_chunk(state, embedding, ltc=True).frames
    video = np.concatenate([model.decode(context)[-1:], chunk])
    changes = frame_change(video)
    return {"jump": float(changes[0]), "inside": float(changes[1:].mean())}


def seam_report(seams: list[dict]) -> dict:
    """`seam_changes` over the evaluated videos: the mean change at chunk boundaries and inside
    chunks, their ratio with a 95% interval from resampling prompts, and the boundary change with
    each chunk's colour offset taken out."""
    mean = lambda key: float(np.mean([v for s in seams for v in s[key]]))  # noqa: E731
    boundary, inside = mean("boundary"), mean("inside")
    # every video has as many boundaries (and inside changes) as the next, so the ratio of means is
    # the ratio of the per-video means' sums, resampled by prompt for its interval
    per_video = lambda key: np.array([np.mean(s[key]) for s in seams], np.float64)  # noqa: E731
    return {"boundary_change": round(boundary, 3), "inside_change": round(inside, 3),
            "ratio": round(boundary / max(1e-6, inside), 3),
            "ratio_ci95": _prompt_bootstrap(per_video("boundary"), per_video("inside"), 2000, 0),
            "boundary_change_colour_matched": round(mean("boundary_colour_matched"), 3),
            "ratio_colour_matched": round(mean("boundary_colour_matched") / max(1e-6, inside), 3)}


def continuity_report(seams: list[dict], truth: list[np.ndarray], from_truth: list[dict]) -> dict:
    """`seam_report`, with the scale a seamless model would show (the scenes' own renders' change
    per frame) and `jump_from_true_context` beside it."""
    jump = float(np.mean([j["jump"] for j in from_truth]))
    jump_inside = float(np.mean([j["inside"] for j in from_truth]))
    return {**seam_report(seams), "true_change": round(float(np.mean(np.concatenate(truth))), 3),
            "from_true_context": {"jump": round(jump, 3), "inside": round(jump_inside, 3),
                                  "ratio": round(jump / max(1e-6, jump_inside), 3)}}


def held_out_scenes(n: int, first: int = 0) -> list:
    """Single-object, plain-background scenes with held-out seeds and freshly drawn wording: the
    sequence's scenes `first` to `first + n - 1` (the sequence skips other backgrounds, so it is
    always drawn from its start)."""
    scenes, seed = [], HELD_OUT_SEED
    while len(scenes) < first + n:
        scene = sample_scene(seed, max_objects=1)
        seed += 1
        if scene.background != "plain":
            continue
        scene.caption = caption(scene, np.random.default_rng(seed + 7))
        scenes.append(scene)
    return scenes[first:]


def check_fidelity(frames: np.ndarray, scene) -> dict:
    """The checks, what the pixels say, and the object's size in the scene's own render at the same
    size and length read the same way (`true_object_pixels`): a model that paints objects as
    blobs larger than they are shows it there, even where its colours pass."""
    seen = read_video(frames)
    obj = scene.main
    checks = {"background": seen["background"] == scene.bg_colours[0], "object": seen["object"] == obj.colour}
    if obj.motion in LINEAR_MOTIONS:
        checks["direction"] = seen["direction"] == obj.motion
    truth = read_video(render(scene, 0, len(frames), frames.shape[1], frames.shape[2]))
    return {"caption": scene.caption, "seen": seen, "checks": checks, "true_object_pixels": truth["object_pixels"]}


def object_area(rows: list[dict]) -> dict:
    """Mean object pixels per frame, generated and true, over `check_fidelity` rows, and their ratio."""
    seen = float(np.mean([r["seen"]["object_pixels"] for r in rows]))
    true = float(np.mean([r["true_object_pixels"] for r in rows]))
    return {"generated_px": round(seen, 1), "true_px": round(true, 1), "ratio": round(seen / max(true, 1e-6), 3)}


@torch.no_grad()
def generation_speed(model, ltc: bool, chunks: int, size: int | None = None) -> float:
    """Frames per second of generate_chunk (denoise + decode), after one warm-up chunk."""
    old = (model.height, model.width, model.net.height, model.net.width)
    if size:
        model.net.height = model.net.width = model.height = model.width = size
    try:
        state = model.new_stream(0)
        emb = model.encode_prompt("a red ball moving left on a blue background")
        weights = model.ltc_weights
        if size and size != old[2]:
            model.ltc_weights = _reshaped(weights, model)
        model.generate_chunk(state, emb, ltc=ltc)
        t0 = time.perf_counter()
        frames = sum(len(model.generate_chunk(state, emb, ltc=ltc).frames) for _ in range(chunks))
        return frames / (time.perf_counter() - t0)
    finally:
        model.height, model.width, model.net.height, model.net.width = old
        model.ltc_weights = weights


def _reshaped(weights, model):
    """The same skip pattern for another latent size (speed only: calibration is per shape)."""
    if weights is None:
        return None
    from ...ltc import LTCWeights

    w = LTCWeights.from_dict(weights.to_dict())
    w.key = model.ltc_key()
    return w


@torch.no_grad()
def evaluate(model, n_prompts: int = 20, chunks: int = 3, speed_chunks: int = 12, sizes=(128, 192, 256),
             first: int = 0) -> dict:
    """`first`: start at that held-out prompt (its stream seeded STREAM_SEED + its index, as from 0),
    so settings are chosen on one stretch of the sequence and reported on another."""
    report: dict = {"model": model.describe()}
    # LTC: calls and PSNR against the same noise without LTC
    scenes = held_out_scenes(n_prompts, first)
    rows, psnrs, psnrs_fewer, calls_ltc, calls_full, seams, truth, from_truth = [], [], [], [], [], [], [], []
    rows_full = []
    full_sigmas, full_steps = model.sigmas, model.steps
    for k, scene in enumerate(progress(scenes, n_prompts, "held-out prompts")):
        emb, seed = model.encode_prompt(scene.caption), STREAM_SEED + first + k
        videos = {}
        for mode in ("ltc", "full", "fewer"):
            # "fewer": the model at one step fewer of its own schedule, no LTC: the paper's fair
            # comparison for distilled models (4 -> 3 steps) at the same number of model calls
            if mode == "fewer":
                model.sigmas, model.steps = sigma_schedule(full_steps - 1), full_steps - 1
            state = model.new_stream(seed)
            parts = []
            for _ in range(chunks):
                r = model.generate_chunk(state, emb, ltc=mode == "ltc")
                parts.append(r.frames)
                if mode != "fewer":
                    (calls_ltc if mode == "ltc" else calls_full).append(r.model_calls)
            model.sigmas, model.steps = full_sigmas, full_steps
            videos[mode] = np.concatenate(parts)
        video, reference = videos["ltc"], torch.from_numpy(videos["full"]).float()
        psnrs.append(psnr(torch.from_numpy(video).float(), reference))
        psnrs_fewer.append(psnr(torch.from_numpy(videos["fewer"]).float(), reference))
        rows.append(check_fidelity(video[model.frames_per_chunk:], scene))  # judge after the first chunk settles
        rows_full.append(check_fidelity(videos["full"][model.frames_per_chunk:], scene))
        seams.append(seam_changes(video, model.frames_per_chunk))
        truth.append(frame_change(render(scene, 0, len(video), video.shape[1], video.shape[2])))
        from_truth.append(jump_from_true_context(model, scene, emb, seed=seed))
    report["fidelity"] = fidelity_summary(rows, first)
    # the same checks on the streams sampled without LTC (same noise): what LTC costs in fidelity
    full_checks = [v for r in rows_full for v in r["checks"].values()]
    report["fidelity_without_ltc"] = {"accuracy": round(float(np.mean(full_checks)), 3), "ci95": bootstrap_interval(rows_full),
                                      "by_kind": by_kind(rows_full), "object_area": object_area(rows_full),
                                      "ltc_minus_without": paired_difference(rows_full, rows)}
    report["continuity"] = continuity_report(seams, truth, from_truth)
    report["ltc"] = {"calibrated": model.ltc_weights is not None, "steps": model.steps,
                     "calls_per_chunk_ltc": float(np.mean(calls_ltc)), "calls_per_chunk_full": float(np.mean(calls_full)),
                     "speedup_calls": round(float(np.mean(calls_full) / np.mean(calls_ltc)), 3),
                     "psnr_vs_full_db": round(float(np.mean(psnrs)), 2),
                     "psnr_fewer_steps_vs_full_db": round(float(np.mean(psnrs_fewer)), 2),
                     "fewer_steps": full_steps - 1,
                     "angles_by_sampler": sampler_angles(model, [s.caption for s in scenes[:8]]),
                     "skipped_steps": model.ltc_weights.skipped_steps if model.ltc_weights else [],
                     "w_g": [round(w, 4) for w in model.ltc_weights.w_g] if model.ltc_weights else [],
                     "angles": [None if a is None else round(a, 4) for a in model.ltc_weights.angles] if model.ltc_weights else []}
    report["prompt_change"] = prompt_change(model)
    report["text_sensitivity"] = text_sensitivity(model)
    speed = []
    for size in sizes:
        entry = {"size": size, "trained_size": size == model.net.height}
        for ltc in (True, False):
            entry["fps_ltc" if ltc else "fps_full"] = round(generation_speed(model, ltc, speed_chunks, size), 1)
        speed.append(entry)
        print(f"  {size}x{size}: {entry['fps_ltc']} FPS with LTC, {entry['fps_full']} without", file=sys.stderr)
    report["speed"] = {"threads": torch.get_num_threads(), "by_size": speed,
                       "largest_size_streaming_16fps": max([e["size"] for e in speed if e["fps_ltc"] >= 16], default=None)}
    return report


def fidelity_summary(rows: list[dict], first: int) -> dict:
    """A report's `fidelity` entry from `check_fidelity` rows of held-out prompts `first` onwards."""
    checks = [v for r in rows for v in r["checks"].values()]
    return {"accuracy": round(float(np.mean(checks)), 3), "checks": len(checks),
            "ci95": bootstrap_interval(rows), "by_kind": by_kind(rows), "prompts": len(rows),
            "first_prompt": first, "object_area": object_area(rows), "examples": rows[:6],
            "per_prompt": [{"caption": r["caption"], "checks": r["checks"], "seen": r["seen"]} for r in rows]}


@torch.no_grad()
def evaluate_fidelity(model, n_prompts: int, chunks: int = 3, first: int = 0, ltc: bool = True) -> dict:
    """`evaluate`'s fidelity and continuity of the served streams alone (with LTC, as `serve`
    samples them; the same streams, checks and seeds), without the streams sampled without LTC
    or with one step fewer, the jump after a true context, the prompt changes, the text
    sensitivity or the speed: about a quarter of the full report's time per prompt, so the
    fidelity can be measured on enough prompts to tell a point apart (200 prompts give an
    interval of about +-3.5 points). `ltc=False`: the same streams sampled without LTC (its
    `fidelity_without_ltc`), so a paired comparison with the served ones says what LTC costs."""
    rows, seams = [], []
    for k, scene in enumerate(progress(held_out_scenes(n_prompts, first), n_prompts, "held-out prompts")):
        state = model.new_stream(STREAM_SEED + first + k)
        emb = model.encode_prompt(scene.caption)
        video = np.concatenate([model.generate_chunk(state, emb, ltc=ltc).frames for _ in range(chunks)])
        rows.append(check_fidelity(video[model.frames_per_chunk:], scene))  # judge after the first chunk settles
        seams.append(seam_changes(video, model.frames_per_chunk))
    used = ltc and model.ltc_weights is not None
    return {"model": model.describe(), "fidelity_only": True, "fidelity": fidelity_summary(rows, first),
            "continuity": seam_report(seams),
            "ltc": {"on": ltc, "calibrated": model.ltc_weights is not None,
                    "skipped_steps": model.ltc_weights.skipped_steps if used else []}}


def by_kind(rows: list[dict]) -> dict:
    """Share of each kind of check passed over `check_fidelity` rows."""
    return {k: round(_accuracy(rows, k), 3) for k in _kinds(rows)}


def _kinds(rows: list[dict]) -> list[str]:
    return [k for k in ("background", "object", "direction") if any(k in r["checks"] for r in rows)]


def _accuracy(rows: list[dict], kind: str | None = None) -> float:
    values = [v for r in rows for k, v in r["checks"].items() if kind in (None, k)]
    return float(np.mean(values)) if values else float("nan")


def _passed(rows: list[dict]) -> np.ndarray:
    return np.array([sum(r["checks"].values()) for r in rows], np.float64)


def _prompt_bootstrap(passed: np.ndarray, counted: np.ndarray, resamples: int, seed: int) -> list[float]:
    """95% interval of sum(passed) / sum(counted) (per prompt), resampling prompts (a prompt's checks
    move together: one bad sample fails two or three), with a fixed seed so a report reproduces."""
    idx = np.random.default_rng(seed).integers(0, len(passed), size=(resamples, len(passed)))
    shares = passed[idx].sum(1) / np.maximum(counted[idx].sum(1), 1e-12)
    return [round(float(q), 3) for q in np.percentile(shares, [2.5, 97.5])]


def bootstrap_interval(rows: list[dict], resamples: int = 2000, seed: int = 0) -> list[float]:
    """95% interval of the share of checks passed."""
    return _prompt_bootstrap(_passed(rows), np.array([len(r["checks"]) for r in rows], np.float64), resamples, seed)


def paired_difference(before: list[dict], after: list[dict], resamples: int = 2000, seed: int = 0) -> dict:
    """`after` minus `before` on the same prompts (rows with "caption" and "checks", as in a
    report's `fidelity.per_prompt`), with a 95% interval from resampling prompts in pairs: the
    two models' results on one prompt are correlated, so this is much tighter than comparing two
    unpaired intervals. Compares the prompts both have (held-out prompts are the same for any
    count, so a 60-prompt report compares with the first 60 of a 200-prompt one)."""
    n = min(len(before), len(after))
    if n == 0:
        raise ConfigError("nothing to compare: a report has no per-prompt results")
    for k in range(n):
        if before[k]["caption"] != after[k]["caption"] or set(before[k]["checks"]) != set(after[k]["checks"]):
            raise ConfigError(f"the reports were measured on different prompts (prompt {k}: "
                              f"{before[k]['caption']!r} / {after[k]['caption']!r})")
    a, b = before[:n], after[:n]
    counted = np.array([len(r["checks"]) for r in a], np.float64)
    pairs = [(ra["checks"][k], rb["checks"][k]) for ra, rb in zip(a, b) for k in ra["checks"]]
    return {"prompts": n, "checks": len(pairs),
            "before": round(_accuracy(a), 3), "after": round(_accuracy(b), 3),
            "difference": round(_accuracy(b) - _accuracy(a), 3),
            "ci95": _prompt_bootstrap(_passed(b) - _passed(a), counted, resamples, seed),
            "by_kind": {k: round(_accuracy(b, k) - _accuracy(a, k), 3) for k in _kinds(a)},
            "only_before": sum(1 for x, y in pairs if x and not y), "only_after": sum(1 for x, y in pairs if y and not x)}


def load_report_rows(path: str) -> list[dict]:
    """The per-prompt fidelity results of an `eval-default --output` report, or a clear error."""
    try:
        with open(path) as fh:
            report = json.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"--against: no such report: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"--against: {path} is not a JSON report ({err})") from None
    rows = report.get("fidelity", {}).get("per_prompt") if isinstance(report, dict) else None
    if not rows:
        raise ConfigError(f"--against: {path} has no per-prompt results (written by an older eval-default?); "
                          "measure that model again with --output")
    return rows


@torch.no_grad()
def prompt_change(model, pairs: int = 20, before: int = 2, after: int = 3) -> dict:
    """How often a stream follows a prompt changed mid-stream: `before` chunks of one held-out
    prompt, then `after` chunks of another, judged on the last `after - 1` (as a fresh stream is
    judged after its first chunk), for each way of taking up the change."""
    scenes = held_out_scenes(2 * pairs)
    out: dict = {"pairs": pairs, "chunks_before": before, "chunks_after": after}
    for mode in PROMPT_CHANGES:
        rows = []
        for k in range(pairs):
            old, new = scenes[2 * k], scenes[2 * k + 1]
            steering = Steering(model, model.encode_prompt(old.caption), seed=500 + k, mode=mode)
            for _ in range(before):
                model.generate_chunk(*steering.next(), ltc=True)
            steering.set(model.encode_prompt(new.caption))
            video = np.concatenate([model.generate_chunk(*steering.next(), ltc=True).frames for _ in range(after)])
            rows.append(check_fidelity(video[model.frames_per_chunk:], new))
        out[mode] = by_kind(rows)
    out["default"] = getattr(model, "prompt_change", "blend")
    return out


OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


@torch.no_grad()
def text_sensitivity(model, n_scenes: int = 16, sigma: float = 0.9, seed: int = 5_000_000) -> dict:
    """Mean squared change of the denoiser's velocity (first chunk, no context) on a true clip of
    the world at `sigma` when the caption's direction is reversed, and when its object colour is
    changed; colour is what the model follows best, so the ratio says how much the motion words
    count. High sigma: that is where the prompt decides the picture."""
    changes: dict[str, list[float]] = {"direction_reversed": [], "object_colour_changed": []}
    while len(changes["direction_reversed"]) < n_scenes:
        scene = sample_scene(seed, max_objects=1)
        seed += 1
        if scene.main.motion not in LINEAR_MOTIONS:
            continue
        reversed_, recoloured = copy.deepcopy(scene), copy.deepcopy(scene)
        reversed_.main.motion = OPPOSITE[scene.main.motion]
        recoloured.main.colour = next(c for c in COLOURS if c not in (scene.main.colour, *scene.bg_colours))
        frames = render(scene, 0, model.frames_per_chunk, model.height, model.width)
        x0 = encode_video(model, frames)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(model.device)
        x = (1 - sigma) * x0 + sigma * noise
        s = torch.full((1,), sigma, device=model.device)
        v = {name: model.denoiser(x, s, model.encode_prompt(caption(sc))[None], None)
             for name, sc in (("true", scene), ("direction_reversed", reversed_), ("object_colour_changed", recoloured))}
        for name in changes:
            changes[name].append(float((v[name] - v["true"]).square().mean()))
    out = {name: float(np.mean(values)) for name, values in changes.items()}
    out["ratio"] = round(out["direction_reversed"] / max(out["object_colour_changed"], 1e-12), 4)
    out.update(sigma=sigma, scenes=n_scenes)
    return out


@torch.no_grad()
def sampler_angles(model, prompts: list[str], seed: int = 7) -> dict:
    """Adjacent-transition angles (rad) of the deterministic Euler sampler and of Self-Forcing's
    re-noising sampler on the same model, prompts and initial noise: LTC's premise is small angles."""
    from ..causal_wan import transition_angles

    gen = torch.Generator().manual_seed(seed)
    tokens = torch.stack([model.encode_prompt(p) for p in prompts])
    x_T = torch.randn(model.latent_shape(len(prompts)), generator=gen)
    den = model.denoiser_fn(tokens, None)
    _, info = sample(den, x_T, model.sigmas, record=True)
    sig = list(model.sigmas.tolist() if torch.is_tensor(model.sigmas) else model.sigmas)
    noise_gen = torch.Generator().manual_seed(seed + 1)
    noises = [torch.randn(x_T.shape, generator=noise_gen) for _ in range(len(sig) - 2)]
    _, rinfo = sample_renoise(den, x_T, sig, noises, record=True)
    # the states the sampler passes through: x_T, each prediction re-noised to the next sigma, the sample
    preds = rinfo.trajectory
    renoised = [x_T] + [renoise(x0, sig[i + 1], noises[i]) for i, x0 in enumerate(preds[:-1])] + [preds[-1]]
    fmt = lambda a: [None if v is None else round(v, 4) for v in a]  # noqa: E731
    return {"euler": fmt(transition_angles(info.trajectory)), "renoise": fmt(transition_angles(renoised))}


def calibrate_model(model, n_prompts: int = 16, tau: float = 0.1, max_skips: int | None = 1):
    """Measure the default model's LTC weights on training-style captions (not the held-out ones)."""
    prompts = [sample_scene(s).caption for s in range(n_prompts)]
    weights = model.calibrate_ltc(prompts, LTCConfig(tau=tau, max_skips=max_skips))
    weights.save(model.folder / LTC_FILE)
    model.ltc_weights = weights
    return weights


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help="default or a default-format model folder")
    parser.add_argument("--prompts", type=int, default=20, help="held-out prompts for the fidelity check")
    parser.add_argument("--first-prompt", type=int, default=0, metavar="K",
                        help="start at held-out prompt K (default 0): choose settings on one stretch of the "
                             "sequence and report on another (the model card's report: 0-199; its goal's test, "
                             "with --fidelity-only: 3600-4599)")
    parser.add_argument("--calibrate", action="store_true", help="measure LTC weights first and save them with the model")
    parser.add_argument("--tau", type=float, default=0.1, help="LTC angle threshold for --calibrate (radians)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 192, 256])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a sampling setting over the folder's own (repeatable): "
                             + "; ".join(f"{key} ({option.help})" for key, option in OPTIONS.items()))
    parser.add_argument("--fidelity-only", action="store_true",
                        help="only the served streams' fidelity (with LTC where the folder is calibrated for it) and "
                             "continuity, about a quarter of the full report's time per prompt: for measuring "
                             "fidelity on many prompts")
    parser.add_argument("--no-ltc", action="store_true",
                        help="with --fidelity-only: the same streams sampled without LTC (pair the report with "
                             "--against a run with LTC for what LTC costs in fidelity)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--output", help="also write the JSON here")
    parser.add_argument("--against", metavar="REPORT",
                        help="an earlier eval-default --output report (another model): add the paired "
                             "fidelity difference on the prompts both measured, with its 95%% interval")


def main(args: argparse.Namespace) -> int:
    if args.prompts < 1:
        raise ConfigError(f"--prompts must be >= 1, got {args.prompts}")
    if not 0 <= args.first_prompt <= 100_000:
        raise ConfigError(f"--first-prompt must be between 0 and 100000, got {args.first_prompt}")
    against = load_report_rows(args.against) if args.against else None  # fail before the long work
    torch.set_num_threads(args.threads)
    if args.no_ltc and not args.fidelity_only:
        raise ConfigError("--no-ltc goes with --fidelity-only (the full report measures the streams with and without LTC)")
    options = parse_model_options(OPTIONS, dict(split_option(text) for text in args.model_option), "default")
    model = load_default(None if args.model == "default" else args.model, device="cpu", options=options)
    if args.calibrate:
        w = calibrate_model(model, tau=args.tau)
        print(f"LTC calibrated: skip {w.skipped_steps}, angles {[None if a is None else round(a, 3) for a in w.angles]}",
              file=sys.stderr)
    if args.fidelity_only:
        report = evaluate_fidelity(model, args.prompts, first=args.first_prompt, ltc=not args.no_ltc)
    else:
        report = evaluate(model, n_prompts=args.prompts, sizes=tuple(args.sizes), first=args.first_prompt)
    rows = report["fidelity"]["per_prompt"]
    if against is not None:
        report["against"] = {"report": args.against, **paired_difference(against, rows)}
        d = report["against"]
        print(f"fidelity against {args.against}: {d['before']:.1%} -> {d['after']:.1%} on {d['prompts']} prompts, "
              f"difference {d['difference']:+.1%} (95% interval {d['ci95'][0]:+.1%} to {d['ci95'][1]:+.1%})",
              file=sys.stderr)
    report["command"] = getattr(args, "command_line", "ltc-stream eval-default " + " ".join(sys.argv[2:]))
    text = json.dumps(report)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(json.dumps(report, indent=1) + "\n")
    print(text if args.json else json.dumps(report, indent=1))
    return 0
