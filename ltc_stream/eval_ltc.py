"""`ltc-stream eval-ltc`: LTC-Accel against full-step sampling, a re-spaced schedule with the same
number of model calls, and plain reuse of the previous output (w = 1), on a model whose exact
answer is known (the Gaussian-mixture oracle).

Calibration and evaluation use different noise (calibrating on the evaluated samples would flatter
LTC). PSNR is against the full-step output from the same noise.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from .errors import ConfigError
from .ltc import LTCConfig, LTCWeights, calibrate, psnr, sample
from .oracle import GaussianMixtureOracle


def linear_sigmas(steps: int) -> torch.Tensor:
    return torch.linspace(1.0, 0.0, steps + 1)


def _reuse(weights: LTCWeights) -> LTCWeights:
    """Same skipped steps, w = 1, no bias: 'reuse the previous model output' at equal calls."""
    plain = LTCWeights.from_dict(weights.to_dict())
    plain.w_g = [1.0] * plain.steps
    plain.bias = 0.0
    return plain


def evaluate(steps: int, tau: float = 0.1, bias: float | str = 0.0, interval=None, samples: int = 8, seed: int = 0) -> dict:
    oracle = GaussianMixtureOracle(seed=seed)
    sigmas = linear_sigmas(steps)
    x_cal, x_eval = oracle.noise(samples, seed + 1), oracle.noise(samples, seed + 2)
    cfg = LTCConfig(tau=tau, bias=bias, interval=interval)
    weights = calibrate(oracle, x_cal, sigmas, cfg, key={"model": "oracle", "sampler": "euler"})
    full, info_full = sample(oracle, x_eval, sigmas)
    out, info = sample(oracle, x_eval, sigmas, weights)
    respaced, _ = sample(oracle, x_eval, linear_sigmas(info.nfe))
    reused, _ = sample(oracle, x_eval, sigmas, _reuse(weights))
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
    parser.add_argument("--model", default="oracle", choices=["oracle"], help="the analytic Gaussian-mixture model")
    parser.add_argument("--steps", type=int, nargs="+", default=[12], help="Euler steps of the full schedule")
    parser.add_argument("--tau", type=float, default=LTCConfig.tau, help="largest angle (rad) at which a step may be skipped")
    parser.add_argument("--bias", default="0", help="global bias on w_g: a number or 'auto' (bisection on PSNR)")
    parser.add_argument("--fixed-interval", action="store_true", help="the reference code's interval [steps/4, steps) instead of measured angles")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print JSON only")


def main(args: argparse.Namespace) -> int:
    bias = args.bias if args.bias == "auto" else _number(args.bias)
    results = []
    for steps in args.steps:
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
