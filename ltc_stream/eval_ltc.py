"""`ltc-stream eval-ltc`: LTC-Accel against full-step sampling, plain reuse of the previous model
output at the same skipped steps, and a genuine shorter schedule with the same number of model calls.

Two models: the Gaussian-mixture oracle (its exact denoiser is known) and the built-in default
model's network (a trained four-step model: `--model default` or a default-format folder). Two
samplers: deterministic Euler (LTC on the states) and the published models' re-noise sampler (LTC
on the clean predictions, followed by the same fresh re-noise; `ltc.sample_renoise`).

`--sweep` measures the calls-versus-PSNR curve: LTC calibrated at a range of `tau` x `max_skips`
(and, for schedules of at most `FIXED_SKIP_STEPS` steps, every single-step skip and the reference
code's fixed interval), each distinct set of skipped steps once. `ltc_curve` computes such a curve
for any denoiser and schedule, `print_curve` prints it and `choose_config` picks the setting of its
best point at a number of calls; `ltc-stream calibrate` uses the same three.

Calibration and evaluation use different noise (calibrating on the evaluated samples would flatter
LTC). PSNR is against the full-step output of the same sampler from the same noise.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import torch

from .errors import ConfigError
from .ltc import (Denoiser, LTCConfig, LTCWeights, calibrate, calibrate_renoise, check_sigmas, psnr, sample,
                  sample_renoise)
from .oracle import GaussianMixtureOracle

SAMPLERS = ("euler", "renoise")
# "reuse the previous model output" at a skipped step, as a weight on the estimate: Euler reuses the
# previous velocity (w = 1 on the states), the re-noise sampler the previous prediction (w = 0)
REUSE_W = {"euler": 1.0, "renoise": 0.0}
SWEEP_TAUS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 3.1)
SWEEP_MAX_SKIPS = (None, 1, 2, 3)
# schedules this short also get every single-step skip and the fixed interval [steps/4, steps)
FIXED_SKIP_STEPS = 6


def linear_sigmas(steps: int) -> list[float]:
    return torch.linspace(1.0, 0.0, steps + 1).tolist()


# ---------------------------------------------------------------------------------------------
# One sampler call, either sampler
# ---------------------------------------------------------------------------------------------
def run_sampler(sampler: str, denoiser: Denoiser, x_T: torch.Tensor, sigmas, noises=None,
                weights: LTCWeights | None = None):
    if sampler == "euler":
        return sample(denoiser, x_T, sigmas, weights)
    return sample_renoise(denoiser, x_T, sigmas, noises, weights)


def calibrate_for(sampler: str, denoiser: Denoiser, x_T: torch.Tensor, sigmas, noises, cfg: LTCConfig,
                  key: dict | None = None) -> LTCWeights:
    if sampler == "euler":
        return calibrate(denoiser, x_T, sigmas, cfg, key=key)
    return calibrate_renoise(denoiser, x_T, sigmas, noises, cfg, key=key)


def reuse_weights(weights: LTCWeights) -> LTCWeights:
    """Same skipped steps, no fitted weight, no bias: 'reuse the previous model output' at equal calls."""
    plain = LTCWeights.from_dict(weights.to_dict())
    plain.w_g = [REUSE_W[weights.sampler]] * plain.steps
    plain.bias = 0.0
    return plain


class _Memo:
    """The denoiser with its answers kept: the runs of a sweep share long prefixes (every run is the
    full run up to its first skip), so most of their model calls are repeats. Keyed by sigma and the
    exact input."""

    def __init__(self, denoiser: Denoiser):
        self.denoiser, self.calls = denoiser, 0
        self.seen: dict[float, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        for x_seen, out in self.seen.get(float(sigma), ()):
            if x_seen.shape == x.shape and torch.equal(x_seen, x):
                return out
        out = self.denoiser(x, sigma)
        self.calls += 1
        self.seen.setdefault(float(sigma), []).append((x.clone(), out))
        return out


# ---------------------------------------------------------------------------------------------
# The curve
# ---------------------------------------------------------------------------------------------
def sweep_configs(steps: int, taus=SWEEP_TAUS, max_skips=SWEEP_MAX_SKIPS) -> list[LTCConfig]:
    configs = [LTCConfig(tau=t, max_skips=m) for t in taus for m in max_skips]
    if steps <= FIXED_SKIP_STEPS:
        configs += [LTCConfig(interval=(i, i + 1)) for i in range(1, steps)]
        configs.append(LTCConfig(interval=(steps // 4, steps)))
    return configs


def _setting(cfg: LTCConfig) -> str:
    if cfg.interval is not None:
        return f"interval {cfg.interval[0]}-{cfg.interval[1]}"
    return f"tau {cfg.tau:g}" + (f" max_skips {cfg.max_skips}" if cfg.max_skips is not None else "")


def ltc_curve(
    denoiser: Denoiser,
    sigmas,
    x_cal: torch.Tensor,
    x_eval: torch.Tensor,
    *,
    sampler: str = "euler",
    noises_cal=None,
    noises_eval=None,
    respace: Callable[[int], list[float]] | None = None,
    configs: list[LTCConfig] | None = None,
) -> dict:
    """Calls versus PSNR for LTC, plain reuse and a genuine shorter schedule, on any denoiser.

    `denoiser(x, sigma) -> x0`; `sigmas` the full schedule (N steps); `x_cal`/`x_eval` initial
    noise for calibration and for evaluation; under `sampler="renoise"`, `noises_cal`/`noises_eval`
    the N - 1 re-noise tensors of each. `respace(k)` gives the k-step schedule the model would run
    genuinely (default: linear in sigma). Each LTC setting of `configs` (default `sweep_configs`)
    is calibrated on `x_cal`; each distinct set of skipped steps is then evaluated on `x_eval`
    with the fitted weights and with reuse weights. PSNR is against the full N-step run of the same
    sampler with the same noise; the shorter schedules re-noise with the first of `noises_eval`."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    sig = check_sigmas(sigmas)
    n = len(sig) - 1
    if sampler == "renoise" and (noises_cal is None or noises_eval is None):
        raise ConfigError("the re-noise sampler's curve needs noises_cal and noises_eval (N - 1 tensors each)")
    respace = respace or (lambda k: torch.linspace(sig[0], 0.0, k + 1).tolist())
    configs = configs if configs is not None else sweep_configs(n)
    den = _Memo(denoiser)
    with torch.no_grad():
        full, _ = run_sampler(sampler, den, x_eval, sig, noises_eval)
        points: dict[tuple[int, ...], dict] = {}
        for cfg in configs:
            weights = calibrate_for(sampler, den, x_cal, sig, noises_cal, cfg)
            skipped = tuple(weights.skipped_steps)
            if not skipped:
                continue
            if skipped in points:
                points[skipped]["settings"].append(_setting(cfg))
                continue
            out, info = run_sampler(sampler, den, x_eval, sig, noises_eval, weights)
            reused, _ = run_sampler(sampler, den, x_eval, sig, noises_eval, reuse_weights(weights))
            points[skipped] = {
                "calls": info.nfe, "skipped": list(skipped), "settings": [_setting(cfg)],
                "config": {"tau": cfg.tau, "max_skips": cfg.max_skips,
                           "interval": list(cfg.interval) if cfg.interval else None},
                "w_g": [round(weights.w_g[i], 4) for i in skipped],
                "psnr_ltc": round(psnr(out, full), 2), "psnr_reuse": round(psnr(reused, full), 2),
            }
        respaced = []
        for k in range(1, n):
            sig_k = respace(k)
            out, _ = run_sampler(sampler, den, x_eval, sig_k, None if noises_eval is None else list(noises_eval)[: k - 1])
            respaced.append({"calls": k, "sigmas": [round(s, 4) for s in sig_k], "psnr": round(psnr(out, full), 2)})
    # the full run's angles, for the reader choosing tau
    angles = calibrate_for(sampler, den, x_cal, sig, noises_cal, LTCConfig(tau=1e-9)).angles
    return {
        "sampler": sampler, "steps": n, "sigmas": [round(s, 4) for s in sig],
        "calibration_samples": int(x_cal.shape[0]), "evaluation_samples": int(x_eval.shape[0]),
        "angles_full_run": [None if a is None else round(a, 4) for a in angles],
        "ltc": sorted(points.values(), key=lambda p: (-p["calls"], p["skipped"])),
        "respaced": respaced, "model_calls_made": den.calls,
    }


def choose_config(curve: dict, calls: int | None = None) -> LTCConfig:
    """The LTCConfig of the curve's best point (highest LTC PSNR) at `calls` model calls (default:
    one step skipped), for a model folder to store as its choice."""
    calls = curve["steps"] - 1 if calls is None else calls
    points = [p for p in curve["ltc"] if p["calls"] == calls]
    if not points:
        raise ConfigError(f"the curve has no LTC point at {calls} calls (it has "
                          f"{sorted({p['calls'] for p in curve['ltc']})})")
    best = max(points, key=lambda p: p["psnr_ltc"])["config"]
    return LTCConfig(tau=best["tau"], max_skips=best["max_skips"],
                     interval=tuple(best["interval"]) if best["interval"] else None)


def print_curve(curve: dict, file=None) -> None:
    """The curve as a table: one row per distinct set of skipped steps, then the genuine shorter
    schedules, so an operator can pick the skip (and the LTCConfig that gives it) from data."""
    file = file or sys.stdout
    n = curve["steps"]
    print(f"{curve['sampler']} sampler, {n} steps {curve['sigmas']}; PSNR (dB) against the full {n}-step run "
          f"({curve['evaluation_samples']} samples; calibrated on {curve['calibration_samples']} others)", file=file)
    angles = ", ".join("-" if a is None else f"{a:.3f}" for a in curve["angles_full_run"])
    print(f"  adjacent-transition angles (rad) per step, full run: {angles}", file=file)
    print(f"  {'calls':>5}  {'skipped':<10} {'LTC':>7} {'reuse':>7}  {'w_g':<16} settings", file=file)
    for p in curve["ltc"]:
        w = " ".join(f"{v:.3f}" for v in p["w_g"])
        settings = "; ".join(p["settings"][:3]) + ("; ..." if len(p["settings"]) > 3 else "")
        print(f"  {p['calls']:>5}  {','.join(map(str, p['skipped'])):<10} {p['psnr_ltc']:>7.2f} {p['psnr_reuse']:>7.2f}  "
              f"{w:<16} {settings}", file=file)
    print("  genuine shorter schedule with the same calls: "
          + ", ".join(f"{r['calls']} calls {r['psnr']:.2f}" for r in reversed(curve["respaced"])), file=file)


# ---------------------------------------------------------------------------------------------
# The two models
# ---------------------------------------------------------------------------------------------
def renoise_tensors(shape, steps: int, seed: int) -> list[torch.Tensor]:
    """The steps - 1 fresh-noise tensors a re-noise curve feeds its runs (`ltc_curve`'s
    `noises_cal`/`noises_eval`), drawn reproducibly from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) for _ in range(steps - 1)]


def oracle_setup(steps: int, samples: int, seed: int) -> dict:
    oracle = GaussianMixtureOracle(seed=seed)
    x_cal, x_eval = oracle.noise(samples, seed + 1), oracle.noise(samples, seed + 2)
    return dict(denoiser=oracle, sigmas=linear_sigmas(steps), x_cal=x_cal, x_eval=x_eval, respace=linear_sigmas,
                noises_cal=renoise_tensors(x_cal.shape, steps, seed + 3),
                noises_eval=renoise_tensors(x_eval.shape, steps, seed + 4),
                model="oracle (Gaussian mixture, exact denoiser), linear sigmas")


def network_denoiser(model, tokens: torch.Tensor) -> Denoiser:
    """The default model's network alone as `denoiser(x, sigma) -> x0 = x - sigma v` for a batch of
    prompts (first chunks: no context; the folder's sampling options are not applied)."""
    net = model.denoiser

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        v = net(x, torch.full((x.shape[0],), float(sigma), device=x.device), tokens, None)
        return x - sigma * v

    return denoise


def default_model_setup(folder: str | None, prompts: int, seeds: int, seed: int, steps: int | None) -> dict:
    """Calibration on training-style captions (world seeds 0..15, one draw each); evaluation on
    `prompts` held-out captions (world seeds from 2e9, never drawn in training) x `seeds` draws."""
    from .models.default.model import load_default, sigma_schedule
    from .models.default.world import caption, sample_scene

    import numpy as np

    model = load_default(folder, device="cpu", steps=steps)
    cal_text = [sample_scene(s).caption for s in range(16)]
    eval_text = [caption(sample_scene(2_000_000_000 + k), np.random.default_rng(k)) for k in range(prompts)]
    encode = lambda texts: torch.stack([model.encode_prompt(t) for t in texts])  # noqa: E731
    cal_tokens, eval_tokens = encode(cal_text), encode(eval_text).repeat_interleave(seeds, 0)
    gen = torch.Generator().manual_seed(seed)
    x_cal = torch.randn(model.latent_shape(len(cal_text)), generator=gen)
    x_eval = torch.randn(model.latent_shape(len(eval_text) * seeds), generator=gen)
    n = model.steps
    den_cal, den_eval = network_denoiser(model, cal_tokens), network_denoiser(model, eval_tokens)

    def denoiser(x: torch.Tensor, sigma: float) -> torch.Tensor:  # one network, two prompt batches
        return (den_cal if x.shape[0] == len(cal_text) else den_eval)(x, sigma)

    return dict(denoiser=denoiser, sigmas=model.sigmas.tolist(), x_cal=x_cal, x_eval=x_eval,
                respace=lambda k: sigma_schedule(k).tolist(),
                noises_cal=renoise_tensors(x_cal.shape, n, seed + 3), noises_eval=renoise_tensors(x_eval.shape, n, seed + 4),
                model=f"{model.name} ({model.stage}, {n} steps, {folder or 'packaged'}), network only, first chunks; "
                      f"calibrated on 16 training-style captions, evaluated on {prompts} held-out captions x {seeds} draws")


# ---------------------------------------------------------------------------------------------
# One setting on the oracle (without --sweep)
# ---------------------------------------------------------------------------------------------
def evaluate(steps: int, tau: float = 0.1, bias: float | str = 0.0, interval=None, samples: int = 8, seed: int = 0) -> dict:
    oracle = GaussianMixtureOracle(seed=seed)
    sigmas = linear_sigmas(steps)
    x_cal, x_eval = oracle.noise(samples, seed + 1), oracle.noise(samples, seed + 2)
    cfg = LTCConfig(tau=tau, bias=bias, interval=interval)
    weights = calibrate(oracle, x_cal, sigmas, cfg, key={"model": "oracle", "sampler": "euler"})
    full, info_full = sample(oracle, x_eval, sigmas)
    out, info = sample(oracle, x_eval, sigmas, weights)
    respaced, _ = sample(oracle, x_eval, linear_sigmas(info.nfe))
    reused, _ = sample(oracle, x_eval, sigmas, reuse_weights(weights))
    return {
        "steps": steps,
        "tau": tau,
        "interval": list(interval) if interval else "measured",
        "nfe_full": info_full.nfe,
        "nfe_ltc": info.nfe,
        "speedup": round(info_full.nfe / info.nfe, 3),
        "psnr_ltc": round(psnr(out, full), 2),
        "psnr_respaced": round(psnr(respaced, full), 2),
        "psnr_reuse": round(psnr(reused, full), 2),
        "bias": round(weights.bias, 4),
        "skipped": weights.skipped_steps,
        "w_g": [round(w, 4) for w in weights.w_g],
        "angles": [None if a is None else round(a, 4) for a in weights.angles],
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="oracle",
                        help="'oracle' (the analytic Gaussian mixture), 'default' (the built-in model) or a default-format folder")
    parser.add_argument("--sweep", action="store_true",
                        help="the calls-versus-PSNR curve: LTC over a range of tau and max_skips, reuse, shorter schedules")
    parser.add_argument("--sampler", nargs="+", choices=SAMPLERS, default=["euler"],
                        help="with --sweep: euler (deterministic) and/or renoise (the published models' sampler)")
    parser.add_argument("--steps", type=int, nargs="+", default=None,
                        help="steps of the full schedule (oracle default 12; the default model's own steps)")
    parser.add_argument("--tau", type=float, default=LTCConfig.tau, help="largest angle (rad) at which a step may be skipped")
    parser.add_argument("--bias", default="0", help="global bias on w_g: a number or 'auto' (bisection on PSNR)")
    parser.add_argument("--fixed-interval", action="store_true", help="the reference code's interval [steps/4, steps) instead of measured angles")
    parser.add_argument("--samples", type=int, default=8, help="oracle: samples for calibration and for evaluation")
    parser.add_argument("--prompts", type=int, default=32, help="default model: held-out prompts evaluated")
    parser.add_argument("--seeds", type=int, default=4, help="default model: noise draws per held-out prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="with --sweep: also write the curves as JSON to this file")
    parser.add_argument("--json", action="store_true", help="print JSON only")


def _sweep(args: argparse.Namespace) -> int:
    for name in ("samples", "prompts", "seeds"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.steps and not all(2 <= s <= 100 for s in args.steps):
        raise ConfigError(f"--steps must be between 2 and 100 for a sweep, got {args.steps}")
    if args.model == "oracle":
        setups = [oracle_setup(s, args.samples, args.seed) for s in (args.steps or [12])]
    else:
        if args.steps and len(args.steps) > 1:
            raise ConfigError("--steps takes one value for the default model")
        folder = None if args.model == "default" else args.model
        setups = [default_model_setup(folder, args.prompts, args.seeds, args.seed, args.steps[0] if args.steps else None)]
    curves = []
    for setup in setups:
        for sampler in args.sampler:
            curve = ltc_curve(setup["denoiser"], setup["sigmas"], setup["x_cal"], setup["x_eval"], sampler=sampler,
                              noises_cal=setup["noises_cal"], noises_eval=setup["noises_eval"], respace=setup["respace"])
            curves.append(curve)
            if not args.json:
                print_curve(curve, sys.stderr)
    report = {"command": getattr(args, "command_line", None), "model": setups[0]["model"],
              "machine": "CPU, 2 cores shared", "curves": curves}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report))
    return 0


def main(args: argparse.Namespace) -> int:
    if args.sweep:
        return _sweep(args)
    if args.model != "oracle":
        raise ConfigError("without --sweep, eval-ltc measures one setting on the oracle (--model oracle)")
    bias = args.bias if args.bias == "auto" else _number(args.bias)
    results = []
    for steps in args.steps or [12]:
        if not 2 <= steps <= 1000:
            raise ConfigError(f"--steps must be between 2 and 1000, got {steps}")
        interval = (steps // 4, steps) if args.fixed_interval else None
        results.append(evaluate(steps, args.tau, bias, interval, args.samples, args.seed))
        if not args.json:
            r = results[-1]
            print(f"steps {steps:3d}: {r['nfe_ltc']:3d} calls ({r['speedup']}x)  PSNR ltc {r['psnr_ltc']:6.2f}  "
                  f"respaced {r['psnr_respaced']:6.2f}  reuse {r['psnr_reuse']:6.2f} dB", file=sys.stderr)
    print(json.dumps(results[0] if len(results) == 1 else results))
    return 0


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--bias must be a number or 'auto', got {text!r}") from None
