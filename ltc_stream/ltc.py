"""LTC-Accel: replace some denoising steps by an estimate from the two previous states.

The method in one file (see README "LTC-Accel"). Conventions, k-diffusion style:
- `denoiser(x, sigma) -> predicted x0`, sigma a Python float; flow-matching noising
  `x_sigma = (1 - sigma) * x0 + sigma * noise`; `sigmas` decreasing, ending at 0.
- Step i maps sigma_i -> sigma_{i+1}; its transition operator is D_i = x_{i+1} - x_i.
- Euler in sigma: x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * (x_i - denoised_i) / sigma_i.

The estimate that replaces the model call of step i (paper, eq. "x_t*"):
    x_{i+1} = x_i + w_i * gamma_i * (x_i - x_{i-1}),  gamma_i = (sigma_i - sigma_{i+1}) / (sigma_{i-1} - sigma_i)
i.e. the previous transition, rescaled by the ratio of step sizes and by a fitted weight w_i.
w_i is the least-squares solution <D_i, D_{i-1}> / (gamma_i ||D_{i-1}||^2), computed in one
calibration run that follows the accelerated trajectory. A step may be skipped only where the
measured angle between D_i and D_{i-1} is below `tau`, never at step 0 and never right after
another skip (the estimate needs a real transition behind it).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import CalibrationMismatchError, ConfigError, NonFiniteError
from .kernels import angle_from_stats, extrapolate, lsq_weight_from_stats, pair_stats

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]

FORMAT = "ltc-weights/1"


# ---------------------------------------------------------------------------------------------
# Settings and the calibrated result
# ---------------------------------------------------------------------------------------------
@dataclass
class LTCConfig:
    """How LTC chooses and weights the steps it skips.

    tau:      largest angle (radians) between adjacent transition operators at which a step may be
              skipped (the paper observes < ~0.1 rad inside the coherent interval).
    period:   at least this many steps between two skips (2 = the paper's "every other step").
    interval: None = skip wherever the measured angle allows; (l, r) = the reference code's fixed
              interval: skip every `period`-th step with l <= i < r, angles ignored.
    bias:     added to every w_g; "auto" finds it by bisection on PSNR against the full-step output.
    max_skips: optional cap on the number of skipped steps (None = no cap). With a cap, the
        skipped steps are the smallest angles below tau measured on a full-step pass first
        (one extra sampling run during calibration), not the first ones met.
    """

    tau: float = 0.1
    period: int = 2
    interval: tuple[int, int] | None = None
    bias: float | str = 0.0
    max_skips: int | None = None

    def validate(self, steps: int | None = None) -> None:
        if not (0.0 < self.tau < math.pi):
            raise ConfigError(f"LTC tau must be an angle in (0, pi) radians, got {self.tau}")
        if int(self.period) != self.period or self.period < 2:
            raise ConfigError(f"LTC period must be an integer >= 2 (no two skips in a row), got {self.period}")
        if not (self.bias == "auto" or isinstance(self.bias, (int, float)) and math.isfinite(self.bias)):
            raise ConfigError(f"LTC bias must be a finite number or 'auto', got {self.bias!r}")
        if self.max_skips is not None and self.max_skips < 0:
            raise ConfigError(f"LTC max_skips must be >= 0, got {self.max_skips}")
        if self.interval is not None:
            lo, hi = self.interval
            if not (0 <= lo <= hi) or (steps is not None and hi > steps):
                raise ConfigError(f"LTC interval must satisfy 0 <= l <= r <= steps, got {self.interval}")


@dataclass
class LTCWeights:
    """Per-step calibration: which steps are estimated and with which weight, and why.

    Lists are indexed by step i (sigma_i -> sigma_{i+1}). `w_g[i]` is the fitted weight (1.0 where
    none could be fitted: step 0), `angles[i]` the measured angle between D_i and D_{i-1} in
    radians (None at step 0), `reasons[i]` a short word on the decision.
    """

    sigmas: list[float]
    skip: list[bool]
    w_g: list[float]
    gamma: list[float]
    angles: list[float | None]
    reasons: list[str]
    bias: float = 0.0
    key: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.skip)

    @property
    def skipped_steps(self) -> list[int]:
        return [i for i, s in enumerate(self.skip) if s]

    @property
    def model_calls(self) -> int:
        return self.steps - sum(self.skip)

    def coefficient(self, i: int) -> float:
        """c_i = (w_i + bias) * gamma_i: the estimate is extrapolate(x_i, x_{i-1}, c_i)."""
        return (self.w_g[i] + self.bias) * self.gamma[i]

    # --- persistence: small JSON, with a key that must match what is run -------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LTCWeights":
        if data.get("format") != FORMAT:
            raise CalibrationMismatchError(f"not an LTC weights file (format {data.get('format')!r}, expected {FORMAT!r})")
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        weights = cls(**fields)
        n = len(weights.sigmas) - 1
        if not all(len(x) == n for x in (weights.skip, weights.w_g, weights.gamma, weights.angles, weights.reasons)):
            raise CalibrationMismatchError("LTC weights file is inconsistent: per-step lists differ in length")
        return weights

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path, expect_key: dict[str, Any] | None = None) -> "LTCWeights":
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise CalibrationMismatchError(f"no LTC weights file at {path}") from None
        except json.JSONDecodeError as exc:
            raise CalibrationMismatchError(f"LTC weights file {path} is not valid JSON: {exc}") from None
        weights = cls.from_dict(data)
        if expect_key is not None:
            weights.check_key(expect_key)
        return weights

    def check_key(self, expect: dict[str, Any]) -> None:
        """Raise unless every entry of `expect` equals the calibration's (never reuse silently)."""
        stored = _jsonable(self.key)
        wanted = _jsonable(expect)
        diffs = [f"{k}: calibrated for {stored.get(k, '<missing>')!r}, running {v!r}" for k, v in wanted.items() if stored.get(k) != v]
        if diffs:
            raise CalibrationMismatchError("LTC weights do not match this run (recalibrate): " + "; ".join(diffs))

    def check_sigmas(self, sigmas: list[float]) -> None:
        if len(sigmas) != len(self.sigmas) or any(abs(a - b) > 1e-6 for a, b in zip(sigmas, self.sigmas)):
            raise CalibrationMismatchError(
                f"LTC weights were calibrated for a {self.steps}-step schedule {_short(self.sigmas)}, "
                f"this run uses {len(sigmas) - 1} steps {_short(sigmas)}"
            )


def make_key(**entries: Any) -> dict[str, Any]:
    """A calibration key: model id, sampler/scheduler and its config, steps, latent shape,
    guidance scale, ... (whatever changes the trajectory). Values are normalised to JSON."""
    return _jsonable(entries)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def _short(values: list[float]) -> str:
    text = ", ".join(f"{v:.3g}" for v in values[:6])
    return f"[{text}{', ...' if len(values) > 6 else ''}]"


# ---------------------------------------------------------------------------------------------
# The maths, as small named functions
# ---------------------------------------------------------------------------------------------
def step_ratio(sigmas: list[float], i: int) -> float:
    """gamma_i = (sigma_i - sigma_{i+1}) / (sigma_{i-1} - sigma_i): size of the skipped step over the
    size of the step before it (the reference code's sigma ratio, indexed at the step being skipped)."""
    if i < 1:
        raise ValueError("gamma is defined from step 1 on (step 0 has no previous transition)")
    return (sigmas[i] - sigmas[i + 1]) / (sigmas[i - 1] - sigmas[i])


def euler_step(x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """x + (sigma_next - sigma) * d with d = (x - denoised) / sigma."""
    return x + (sigma_next - sigma) * ((x - denoised) / sigma)


def ltc_estimate(x: torch.Tensor, x_prev: torch.Tensor, coefficient: float | torch.Tensor, out=None) -> torch.Tensor:
    """x_{i+1} = x_i + c * (x_i - x_{i-1}), c = w_g * gamma (through the fused kernel)."""
    return extrapolate(x, x_prev, coefficient, out=out)


def transition_stats(d_cur: torch.Tensor, d_prev: torch.Tensor, gamma: float) -> tuple[float, float]:
    """(angle between D_i and D_{i-1}, closed-form w_i); one fp32 reduction pass."""
    stats = pair_stats(d_cur, d_prev)
    return float(angle_from_stats(stats)), float(lsq_weight_from_stats(stats, gamma))


def psnr(x: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR in dB with the reference's value range as the peak (latents have no fixed range)."""
    ref = reference.float()
    mse = torch.mean((x.float() - ref) ** 2).item()
    peak = (ref.max() - ref.min()).item()
    if mse == 0:
        return float("inf")
    return 10.0 * math.log10(peak * peak / mse)


def check_sigmas(sigmas: torch.Tensor | list[float]) -> list[float]:
    """Validate a schedule and return it as Python floats (one host read, outside the loop)."""
    values = sigmas.detach().float().cpu().tolist() if torch.is_tensor(sigmas) else [float(s) for s in sigmas]
    if torch.is_tensor(sigmas) and sigmas.ndim != 1:
        raise ConfigError(f"sigmas must be a 1-D tensor, got shape {tuple(sigmas.shape)}")
    if len(values) < 2:
        raise ConfigError("sigmas must hold at least two values (one step)")
    if not all(math.isfinite(s) for s in values):
        raise ConfigError("sigmas contain NaN or Inf")
    if values[-1] != 0.0:
        raise ConfigError(f"sigmas must end at 0, got {values[-1]}")
    if any(b >= a for a, b in zip(values, values[1:])):
        raise ConfigError("sigmas must be strictly decreasing")
    return values


def _check_input(x: torch.Tensor) -> None:
    if not torch.isfinite(x).all():
        raise NonFiniteError("the initial latent x_T contains NaN or Inf")


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------
@dataclass
class SampleInfo:
    nfe: int  # denoiser calls made
    skipped: list[int]  # steps estimated by LTC
    trajectory: list[torch.Tensor] | None = None  # x_0 .. x_N when record=True

    @property
    def steps(self) -> int:
        return self.nfe + len(self.skipped)


def sample(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    sigmas: torch.Tensor | list[float],
    weights: LTCWeights | None = None,
    *,
    record: bool = False,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, SampleInfo]:
    """Euler sampling in sigma; with `weights`, the steps they mark are LTC estimates (no model call).

    `callback(i, x_next)` runs after each step; `record=True` keeps the trajectory x_0..x_N.
    """
    sig = check_sigmas(sigmas)
    if weights is not None:
        weights.check_sigmas(sig)
    _check_input(x_T)
    x, x_prev = x_T, None
    nfe, skipped = 0, []
    trajectory = [x] if record else None
    for i in range(len(sig) - 1):
        if weights is not None and weights.skip[i]:
            x_next = ltc_estimate(x, x_prev, weights.coefficient(i))
            skipped.append(i)
        else:
            x_next = euler_step(x, denoiser(x, sig[i]), sig[i], sig[i + 1])
            nfe += 1
        x_prev, x = x, x_next
        if trajectory is not None:
            trajectory.append(x)
        if callback is not None:
            callback(i, x)
    return x, SampleInfo(nfe=nfe, skipped=skipped, trajectory=trajectory)


# ---------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------
def _may_skip(i: int, cfg: LTCConfig, angle: float | None, last_skip: int, n_skips: int) -> tuple[bool, str]:
    """The skip rule, with the reason recorded for users."""
    if i == 0:
        return False, "first step: no previous transition"
    if i - last_skip < cfg.period:
        return False, f"within {cfg.period} steps of the previous skip"
    if cfg.max_skips is not None and n_skips >= cfg.max_skips:
        return False, "max_skips reached"
    if cfg.interval is not None:
        lo, hi = cfg.interval
        return (lo <= i < hi), ("inside fixed interval" if lo <= i < hi else "outside fixed interval")
    if angle is not None and angle < cfg.tau:
        return True, f"angle {angle:.3f} < tau {cfg.tau}"
    return False, f"angle {angle:.3f} >= tau {cfg.tau}"


def _plan_capped_skips(denoiser: Denoiser, x_T: torch.Tensor, sig: torch.Tensor, cfg: LTCConfig) -> dict[int, str]:
    """With `max_skips` set: which steps to skip, chosen on the full-step trajectory as the
    smallest adjacent-transition angles below tau (at most `max_skips`, `period` apart), rather
    than the first ones the accelerated pass meets. Returns {step: reason} for every step i >= 1."""
    _, info = sample(denoiser, x_T, sig, record=True)
    traj = info.trajectory
    n = len(sig) - 1
    full_angles = {i: transition_stats(traj[i + 1] - traj[i], traj[i] - traj[i - 1], step_ratio(sig, i))[0]
                   for i in range(1, n)}
    chosen: list[int] = []
    plan: dict[int, str] = {}
    for i in sorted(full_angles, key=full_angles.get):
        a = full_angles[i]
        if a >= cfg.tau:
            plan[i] = f"angle {a:.3f} >= tau {cfg.tau} (full-step pass)"
        elif len(chosen) >= cfg.max_skips:
            plan[i] = f"angle {a:.3f} < tau, but max_skips={cfg.max_skips} went to smaller angles"
        elif any(abs(i - j) < cfg.period for j in chosen):
            plan[i] = f"angle {a:.3f} < tau, but within {cfg.period} steps of a skip with a smaller angle"
        else:
            chosen.append(i)
            plan[i] = f"SKIP: angle {a:.3f} < tau {cfg.tau}, among the {cfg.max_skips} smallest (full-step pass)"
    return plan


def calibrate(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    sigmas: torch.Tensor | list[float],
    cfg: LTCConfig | None = None,
    *,
    key: dict[str, Any] | None = None,
) -> LTCWeights:
    """One run along the accelerated trajectory: at every step the model is called (to measure the
    true transition D_i), the angle to the previous actual transition and the closed-form w_i are
    recorded; where the rule allows a skip, the trajectory continues from the LTC estimate (as it
    will when sampling), otherwise from the true step. Reductions are fp32 over the whole batch
    (the least squares runs over every sample in x_T). With `cfg.bias == "auto"`, a global bias is
    then found by bisection on PSNR against the full-step output."""
    cfg = cfg or LTCConfig()
    sig = check_sigmas(sigmas)
    n = len(sig) - 1
    cfg.validate(n)
    _check_input(x_T)
    skip, w_g, gamma, angles, reasons = [False] * n, [1.0] * n, [1.0] * n, [None] * n, [""] * n
    x, x_prev = x_T, None
    last_skip, n_skips = -cfg.period, 0
    with torch.no_grad():
        plan = _plan_capped_skips(denoiser, x_T, sig, cfg) if cfg.max_skips and cfg.interval is None else None
        for i in range(n):
            x_true = euler_step(x, denoiser(x, sig[i]), sig[i], sig[i + 1])
            if i >= 1:
                gamma[i] = step_ratio(sig, i)
                angles[i], w_g[i] = transition_stats(x_true - x, x - x_prev, gamma[i])
                if not math.isfinite(w_g[i]):
                    raise NonFiniteError(f"LTC calibration produced a non-finite weight at step {i}")
            if plan is not None and i >= 1:
                skip[i], reasons[i] = plan[i].startswith("SKIP: "), plan[i].removeprefix("SKIP: ")
            else:
                skip[i], reasons[i] = _may_skip(i, cfg, angles[i], last_skip, n_skips)
            if skip[i]:
                last_skip, n_skips = i, n_skips + 1
                x_next = ltc_estimate(x, x_prev, w_g[i] * gamma[i])
            else:
                x_next = x_true
            x_prev, x = x, x_next
    weights = LTCWeights(
        sigmas=sig, skip=skip, w_g=w_g, gamma=gamma, angles=angles, reasons=reasons, bias=0.0,
        key=make_key(steps=n, latent_shape=list(x_T.shape), **(key or {})),
        config=_jsonable(asdict(cfg)),
    )
    if cfg.bias == "auto":
        weights.bias = fit_bias(denoiser, x_T, weights)
    else:
        weights.bias = float(cfg.bias)
    return weights


def fit_bias(denoiser: Denoiser, x_T: torch.Tensor, weights: LTCWeights, *, lo: float = -0.5, hi: float = 0.5,
             iters: int = 12, full: torch.Tensor | None = None) -> float:
    """Global bias b on all w_g maximising PSNR(LTC output, full-step output), by bisection on the
    sign of dPSNR/db (central differences). Returns 0 when no skip is scheduled."""
    if not weights.skipped_steps:
        return 0.0
    with torch.no_grad():
        if full is None:
            full, _ = sample(denoiser, x_T, weights.sigmas)
        saved = weights.bias

        def score(b: float) -> float:
            weights.bias = b
            out, _ = sample(denoiser, x_T, weights.sigmas, weights)
            return psnr(out, full)

        h = 1e-3
        try:
            for _ in range(iters):
                mid = 0.5 * (lo + hi)
                if score(mid + h) > score(mid - h):
                    lo = mid
                else:
                    hi = mid
            best = 0.5 * (lo + hi)
            # Keep the bias only if it helps: bisection assumes one peak.
            return best if score(best) >= score(0.0) else 0.0
        finally:
            weights.bias = saved


# ---------------------------------------------------------------------------------------------
# Online refresh for streams
# ---------------------------------------------------------------------------------------------
class OnlineLTC:
    """Keeps w_g fresh while a stream runs, without an offline recalibration.

    Every `every` chunks the caller runs one chunk with all steps (`should_run_full(chunk_index)`),
    recording its trajectory (`sample(..., record=True)`), and hands it to `update`: for each skipped
    step the closed-form w_i of that trajectory is blended into the current weight,
    w <- momentum * w + (1 - momentum) * w_new. `weights` is what the next accelerated chunk uses.
    """

    def __init__(self, weights: LTCWeights, every: int = 8, momentum: float = 0.7):
        if every < 1:
            raise ConfigError(f"online refresh period must be >= 1 chunk, got {every}")
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"online refresh momentum must be in [0, 1), got {momentum}")
        self.weights = LTCWeights.from_dict(weights.to_dict())  # own copy: refreshing must not leak
        self.every = every
        self.momentum = momentum
        self.updates = 0

    def should_run_full(self, chunk_index: int) -> bool:
        return chunk_index % self.every == 0

    def update(self, trajectory: list[torch.Tensor]) -> LTCWeights:
        if len(trajectory) != self.weights.steps + 1:
            raise ConfigError(f"refresh needs the full trajectory of {self.weights.steps + 1} states, got {len(trajectory)}")
        w = self.weights
        for i in w.skipped_steps:
            d_cur = trajectory[i + 1] - trajectory[i]
            d_prev = trajectory[i] - trajectory[i - 1]
            angle, w_new = transition_stats(d_cur, d_prev, w.gamma[i])
            if math.isfinite(w_new):
                w.w_g[i] = self.momentum * w.w_g[i] + (1.0 - self.momentum) * w_new
                w.angles[i] = angle
        self.updates += 1
        return w
