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

Under the re-noise sampler of the published few-step video models (Self-Forcing, CausVid:
x0_i = D(x_i, sigma_i), then x_{i+1} = (1 - sigma_{i+1}) x0_i + sigma_{i+1} eps with fresh eps) the
states carry fresh noise and are not coherent; what the sampler consumes is the clean prediction,
so there the estimate is made on the predictions and then re-noised with the same fresh noise:
    x0_i* = x0_{i-1} + w_i gamma_i (x0_{i-1} - x0_{i-2}),  gamma_i = (sigma_{i-1} - sigma_i) / (sigma_{i-2} - sigma_{i-1})
(`sample_renoise`, `calibrate_renoise`); "reuse the previous prediction" is w = 0 there.
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

    The default tau 0.1 comes from the calls-versus-PSNR curves (`ltc-stream eval-ltc --sweep`,
    benchmarks/results/ltc-sweep-{oracle,default}.json): it is the largest tau of the sweep whose
    skips stay above 50 dB against the full run on both the oracle at 12 steps (9 calls, 51.5 dB;
    a genuine 9-step schedule 33.6 dB) and the built-in four-step model (3 calls, 52.7 dB; genuine
    3 steps 49.3 dB); tau 0.15 takes the oracle to 8 calls at 47.5 dB. Under the re-noise sampler
    the predictions' angles are 1-2 rad, so no tau rule applies there: choose the skip from the
    curve (`interval=(i, i + 1)` skips step i).
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


# where a model folder keeps its calibrated weights (every loader and `ltc-stream calibrate` use it)
LTC_FILE = "ltc_weights.json"


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
    # which sampler the estimates are for: "euler" (on the states x_i) or "renoise" (on the
    # predictions x0_i); weights for one are meaningless for the other
    sampler: str = "euler"

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

    def check_sampler(self, sampler: str) -> None:
        if self.sampler != sampler:
            raise CalibrationMismatchError(f"LTC weights were calibrated for the {self.sampler} sampler, this run uses "
                                           f"the {sampler} sampler (recalibrate)")

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
        weights.check_sampler("euler")
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


def _euler_full_step_angles(denoiser: Denoiser, x_T: torch.Tensor, sig: list[float]) -> dict[int, float]:
    """Adjacent-transition angle of every step i >= 1 on the full-step Euler trajectory."""
    _, info = sample(denoiser, x_T, sig, record=True)
    traj = info.trajectory
    return {i: transition_stats(traj[i + 1] - traj[i], traj[i] - traj[i - 1], step_ratio(sig, i))[0]
            for i in range(1, len(sig) - 1)}


def _plan_capped_skips(full_angles: dict[int, float], cfg: LTCConfig) -> dict[int, str]:
    """With `max_skips` set: which steps to skip, chosen on the full-step trajectory as the
    smallest adjacent-transition angles below tau (at most `max_skips`, `period` apart), rather
    than the first ones the accelerated pass meets. Returns {step: reason} for every step that
    has an angle."""
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
        plan = (_plan_capped_skips(_euler_full_step_angles(denoiser, x_T, sig), cfg)
                if cfg.max_skips and cfg.interval is None else None)
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
             iters: int = 12, full: torch.Tensor | None = None, run: Callable[[LTCWeights | None], torch.Tensor] | None = None) -> float:
    """Global bias b on all w_g maximising PSNR(LTC output, full-step output), by bisection on the
    sign of dPSNR/db (central differences). Returns 0 when no skip is scheduled. `run(weights)`
    samples x_T with those weights (None: every step); default the Euler sampler."""
    if not weights.skipped_steps:
        return 0.0
    if run is None:
        def run(w: LTCWeights | None) -> torch.Tensor:
            return sample(denoiser, x_T, weights.sigmas, w)[0]
    with torch.no_grad():
        if full is None:
            full = run(None)
        saved = weights.bias

        def score(b: float) -> float:
            weights.bias = b
            return psnr(run(weights), full)

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
# The re-noise sampler of the published few-step models, and LTC on its predictions
# ---------------------------------------------------------------------------------------------
def renoise(x0: torch.Tensor, sigma: float, noise: torch.Tensor) -> torch.Tensor:
    """Flow matching's forward process: x_sigma = (1 - sigma) x0 + sigma noise."""
    return (1 - sigma) * x0 + sigma * noise


def prediction_step_ratio(sigmas: list[float], i: int) -> float:
    """gamma_i for the predictions: x0_{i-1} -> x0_i spans sigma_{i-1} -> sigma_i, the change
    before it sigma_{i-2} -> sigma_{i-1}."""
    if i < 2:
        raise ValueError("the prediction estimate needs two earlier predictions (step 2 on)")
    return step_ratio(sigmas, i - 1)


def _noise_source(noises, x: torch.Tensor, steps: int) -> Callable[[int], torch.Tensor]:
    """The fresh noise re-noising after step i (i = 0 .. steps - 2): from a list, or drawn."""
    if isinstance(noises, torch.Generator):
        return lambda i: torch.randn(x.shape, generator=noises, device=x.device, dtype=x.dtype)
    noises = list(noises)
    if len(noises) != steps - 1 or any(n.shape != x.shape for n in noises):
        raise ConfigError(f"the re-noise sampler needs {steps - 1} noise tensors of shape {tuple(x.shape)} "
                          f"(one after every step but the last), got {[tuple(n.shape) for n in noises]}")
    return lambda i: noises[i]


def sample_renoise(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    sigmas: torch.Tensor | list[float],
    noises,
    weights: LTCWeights | None = None,
    *,
    record: bool = False,
) -> tuple[torch.Tensor, SampleInfo]:
    """Self-Forcing's few-step sampler: x0_i = denoiser(x_i, sigma_i), x_{i+1} = renoise(x0_i,
    sigma_{i+1}, eps_{i+1}) with fresh noise, the last step's x0 is the sample. `noises`: the N - 1
    re-noise tensors in order, or a torch.Generator to draw them. With `weights` (from
    `calibrate_renoise`), a step they mark takes the estimate x0_{i-1} + c_i (x0_{i-1} - x0_{i-2})
    instead of a model call, re-noised with the same fresh noise. `record=True` keeps the
    predictions x0_0 .. x0_{N-1} (what LTC extrapolates) as the trajectory."""
    sig = check_sigmas(sigmas)
    n = len(sig) - 1
    if weights is not None:
        weights.check_sampler("renoise")
        weights.check_sigmas(sig)
    _check_input(x_T)
    noise = _noise_source(noises, x_T, n)
    x, preds, skipped = x_T, [], []
    for i in range(n):
        if weights is not None and weights.skip[i]:
            x0 = ltc_estimate(preds[-1], preds[-2], weights.coefficient(i))
            skipped.append(i)
        else:
            x0 = denoiser(x, sig[i])
        preds.append(x0)
        if not record:  # the estimate needs only the last two
            del preds[:-2]
        x = renoise(x0, sig[i + 1], noise(i)) if i < n - 1 else x0
    return x, SampleInfo(nfe=n - len(skipped), skipped=skipped, trajectory=preds if record else None)


def calibrate_renoise(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    sigmas: torch.Tensor | list[float],
    noises,
    cfg: LTCConfig | None = None,
    *,
    key: dict[str, Any] | None = None,
) -> LTCWeights:
    """`calibrate` for the re-noise sampler: one run along the accelerated trajectory with the given
    re-noise tensors (calibrate on other noise than you evaluate on); at every step i >= 2 the
    model is called, the angle between D_i = x0_i - x0_{i-1} and D_{i-1} and the closed-form
    w_i = <D_i, D_{i-1}> / (gamma_i ||D_{i-1}||^2) are recorded, and where the rule allows a skip
    the run continues from the estimate, re-noised with the same noise."""
    cfg = cfg or LTCConfig()
    sig = check_sigmas(sigmas)
    n = len(sig) - 1
    cfg.validate(n)
    _check_input(x_T)
    if isinstance(noises, torch.Generator):  # the capped plan and the bias search rerun the same noise
        noises = [torch.randn(x_T.shape, generator=noises, device=x_T.device, dtype=x_T.dtype) for _ in range(n - 1)]
    noise = _noise_source(noises, x_T, n)
    skip, w_g, gamma, angles, reasons = [False] * n, [1.0] * n, [1.0] * n, [None] * n, [""] * n
    x, preds = x_T, []
    last_skip, n_skips = -cfg.period, 0
    with torch.no_grad():
        plan = None
        if cfg.max_skips and cfg.interval is None:
            _, info = sample_renoise(denoiser, x_T, sig, noises, record=True)
            p = info.trajectory
            plan = _plan_capped_skips({i: transition_stats(p[i] - p[i - 1], p[i - 1] - p[i - 2],
                                                           prediction_step_ratio(sig, i))[0] for i in range(2, n)}, cfg)
        for i in range(n):
            x0 = denoiser(x, sig[i])
            if i < 2:
                reasons[i] = "needs two earlier predictions"
            else:
                gamma[i] = prediction_step_ratio(sig, i)
                angles[i], w_g[i] = transition_stats(x0 - preds[-1], preds[-1] - preds[-2], gamma[i])
                if not math.isfinite(w_g[i]):
                    raise NonFiniteError(f"LTC calibration produced a non-finite weight at step {i}")
                if plan is not None:
                    skip[i], reasons[i] = plan[i].startswith("SKIP: "), plan[i].removeprefix("SKIP: ")
                else:
                    skip[i], reasons[i] = _may_skip(i, cfg, angles[i], last_skip, n_skips)
            if skip[i]:
                last_skip, n_skips = i, n_skips + 1
                x0 = ltc_estimate(preds[-1], preds[-2], w_g[i] * gamma[i])
            preds = (preds + [x0])[-2:]
            x = renoise(x0, sig[i + 1], noise(i)) if i < n - 1 else x0
    weights = LTCWeights(
        sigmas=sig, skip=skip, w_g=w_g, gamma=gamma, angles=angles, reasons=reasons, bias=0.0,
        key=make_key(**{"steps": n, "latent_shape": list(x_T.shape), "sampler": "renoise", **(key or {})}),
        config=_jsonable(asdict(cfg)), sampler="renoise",
    )
    if cfg.bias == "auto":
        weights.bias = fit_bias(denoiser, x_T, weights,
                                run=lambda w: sample_renoise(denoiser, x_T, sig, noises, w)[0])
    else:
        weights.bias = float(cfg.bias)
    return weights


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
