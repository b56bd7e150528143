"""LTC-Accel in front of diffusers schedulers and pipelines, without forking them.

Scheduler bridge: for a scheduler whose step is affine in the model output m
(FlowMatchEulerDiscrete, DDIM, Euler, DPM-Solver++ 2M, UniPC: x_next = a + b * m elementwise,
with a and b depending on the sample and the solver's history), a skipped step feeds the scheduler
    m* = (x_target - a) / b,   x_target = the LTC estimate x_i + w_i gamma_i (x_i - x_{i-1}),
found by probing two copies of the scheduler with m = 0 and m = 1. The real scheduler then
steps with m*, so it lands exactly on the estimate and its multistep history (DPM-Solver++,
UniPC) holds the output that estimate implies, instead of the stale one the reference code
leaves behind when it only advances `_step_index`.

Hook: `apply_ltc_accel(pipe, weights)` registers `LTCAccelHook` in the denoiser's diffusers
`HookRegistry` (the `transformer` or `unet`, under the name "ltc_accel"), the way diffusers' own
caches (`apply_first_block_cache`) attach, so it composes with other hooks (offloading, caching) in
registration order and `hook.remove()` takes out only itself. On a skipped step the hook returns
m* for the whole batch without calling the layers below it (classifier-free guidance then combines
m* with itself, so the guided batch is skipped whole). Schedulers are not modules and have no hook
registry: the hook observes the samples through a thin wrapper on the scheduler instance's `step`
and `set_timesteps`, restored on removal (or turned into a pass-through if something wrapped the
scheduler after it). `apply_ltc_accel(pipe, calibrate=LTCConfig())` instead records one run:
every step calls the model, angles and closed-form w_g are measured along the accelerated
trajectory, and `hook.calibrated` holds the result.
Schedulers that add fresh noise inside `step` (ancestral, SDE variants) are not affine in m
alone and are refused.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import HookFunctionReference

from .errors import ConfigError
from .ltc import LTCConfig, LTCWeights, _may_skip, ltc_estimate, make_key, step_ratio, transition_stats

AFFINE_SCHEDULERS = (
    "FlowMatchEulerDiscreteScheduler", "DDIMScheduler", "EulerDiscreteScheduler",
    "DPMSolverMultistepScheduler", "UniPCMultistepScheduler",
)


def scheduler_sigmas(scheduler) -> list[float]:
    """The noise level of every step boundary (N + 1 values, ending at 0) in the scheduler's own
    parameterisation: its `sigmas` where it has them, else sqrt((1 - abar) / abar) at its timesteps."""
    n = len(scheduler.timesteps)
    sig = getattr(scheduler, "sigmas", None)
    if sig is not None and len(sig) >= n + 1:
        values = [float(s) for s in sig[: n + 1]]
    else:
        abar = scheduler.alphas_cumprod
        values = [math.sqrt((1 - float(abar[int(t)])) / float(abar[int(t)])) for t in scheduler.timesteps] + [0.0]
    values[-1] = 0.0  # a final sigma of 1e-3 or 0: the step still lands on the clean sample
    return values


_WRAPPED = ("step", "set_timesteps")


def _state_copy(scheduler):
    """A copy of the scheduler's state, without the hook's instance-level wrappers."""
    new = type(scheduler).__new__(type(scheduler))
    new.__dict__.update({k: copy.deepcopy(v) for k, v in scheduler.__dict__.items() if k not in _WRAPPED})
    return new


def _raw_step(scheduler, model_output, timestep, sample, **kwargs) -> torch.Tensor:
    """The scheduler class's own step (never an instance-level wrapper installed by the hook)."""
    return type(scheduler).step(scheduler, model_output, timestep, sample, return_dict=False, **kwargs)[0]


def model_output_for_target(scheduler, target: torch.Tensor, timestep, sample: torch.Tensor, **kwargs) -> torch.Tensor:
    """m* such that scheduler.step(m*, timestep, sample) == target, for an affine step."""
    check_scheduler(scheduler)
    zeros = torch.zeros_like(sample)
    a = _raw_step(_state_copy(scheduler), zeros, timestep, sample, **kwargs)
    b = _raw_step(_state_copy(scheduler), torch.ones_like(sample), timestep, sample, **kwargs) - a
    if not torch.all(b.abs() > 0):
        raise ConfigError(f"{type(scheduler).__name__}: its step does not depend on the model output here; cannot place the LTC estimate")
    return ((target.float() - a.float()) / b.float()).to(sample.dtype)


def check_scheduler(scheduler) -> None:
    name = type(scheduler).__name__
    if name not in AFFINE_SCHEDULERS:
        raise ConfigError(f"LTC's scheduler bridge supports {', '.join(AFFINE_SCHEDULERS)}; got {name}")
    config = scheduler.config
    if getattr(config, "algorithm_type", "") in ("sde-dpmsolver", "sde-dpmsolver++"):
        raise ConfigError(f"{name} with an SDE algorithm adds noise inside step(); use a deterministic one")
    if getattr(config, "clip_sample", False) or getattr(config, "thresholding", False):
        raise ConfigError(f"{name} clips or thresholds its x0 prediction, so its step is not affine in the model "
                          "output; set clip_sample=False and thresholding=False to use LTC")


@dataclass
class _Record:
    angle: float | None = None
    w: float = 1.0
    gamma: float = 1.0
    skip: bool = False
    reason: str = ""


HOOK_NAME = "ltc_accel"


class _SkippingHookRef(HookFunctionReference):
    """The hook chain's reference for a hook that may skip the call below it (has `new_forward`).

    When a hook registered before this one is removed, diffusers' `HookRegistry.remove_hook`
    (0.42.1) re-points the next hook's `forward`, which for a `new_forward` hook is that hook itself:
    LTC would silently drop out of the chain and keep calling the removed hook through
    `original_forward`. Here that assignment re-points the call below instead."""

    @property
    def forward(self):
        return self._own_forward

    @forward.setter
    def forward(self, below):
        self.original_forward = below


def _make_skipping_ref(ref: HookFunctionReference) -> None:
    own = ref.__dict__.pop("forward")
    ref.__class__ = _SkippingHookRef
    ref._own_forward = own


class LTCAccelHook(ModelHook):
    """Registered by `apply_ltc_accel` in the denoiser's `HookRegistry`; counts the model calls it
    let through per run in `model_calls`."""

    _is_stateful = True

    def __init__(self, scheduler, weights: LTCWeights | None = None, calibrate: LTCConfig | None = None):
        super().__init__()
        if (weights is None) == (calibrate is None):
            raise ConfigError("apply_ltc_accel needs either weights (to accelerate) or calibrate=LTCConfig() (to measure)")
        check_scheduler(scheduler)
        if calibrate is not None:
            calibrate.validate()
        self.scheduler = scheduler
        self.weights = weights
        self.cfg = calibrate
        self.module: torch.nn.Module | None = None
        self._scheduler_wrappers: dict[str, tuple] = {}
        self._reset()

    # --- attaching and detaching ---------------------------------------------------------------
    def attach(self, module: torch.nn.Module) -> "LTCAccelHook":
        registry = HookRegistry.check_if_exists_or_initialize(module)
        if registry.get_hook(HOOK_NAME) is not None:
            raise ConfigError("LTC-Accel is already applied to this model: remove the first hook before applying another")
        registry.register_hook(self, HOOK_NAME)
        _make_skipping_ref(self.fn_ref)
        self.module = module
        for name, wrapper in (("step", self._step), ("set_timesteps", self._set_timesteps)):
            previous = self.scheduler.__dict__.get(name)  # another wrapper on the instance, or None
            self._scheduler_wrappers[name] = (wrapper, previous, getattr(self.scheduler, name))
            setattr(self.scheduler, name, wrapper)
        return self

    def remove(self) -> None:
        """Take LTC out: the model's other hooks stay as they are; the scheduler gets back what it had."""
        if self.module is not None:
            HookRegistry.check_if_exists_or_initialize(self.module).remove_hook(HOOK_NAME, recurse=False)
            self.module = None
        for name, (wrapper, previous, _) in self._scheduler_wrappers.items():
            if self.scheduler.__dict__.get(name) is wrapper:
                if previous is None:
                    delattr(self.scheduler, name)
                else:
                    setattr(self.scheduler, name, previous)
            # else something wrapped the scheduler after us: our wrapper stays, as a pass-through
        self.weights = self.cfg = None

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self._reset()
        return module

    # --- bookkeeping per run -----------------------------------------------------------------
    def _reset(self) -> None:
        self.index = 0
        self.prev_sample: torch.Tensor | None = None
        self.cur_sample: torch.Tensor | None = None
        self.records: list[_Record] = []
        self._last_skip = -10**9
        self._n_skips = 0
        self._pending: torch.Tensor | None = None
        self.model_calls = 0

    def _inner(self, name: str):
        """The scheduler's method as it was before this hook wrapped it."""
        return self._scheduler_wrappers[name][2]

    def _set_timesteps(self, *args, **kwargs):
        result = self._inner("set_timesteps")(*args, **kwargs)
        self._reset()
        self.sigmas = scheduler_sigmas(self.scheduler)
        if self.weights is not None:
            self.weights.check_sigmas(self.sigmas)
        return result

    # --- the model call ------------------------------------------------------------------------
    def _skipping_now(self) -> bool:
        return self.weights is not None and self.index < self.weights.steps and self.weights.skip[self.index]

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        if not self._skipping_now():
            self.model_calls += 1
            return self.fn_ref.original_forward(*args, **kwargs)
        hidden = kwargs.get("hidden_states", kwargs.get("sample", args[0] if args else None))
        out = _match_batch(self._model_output_for_estimate(), hidden, getattr(getattr(module, "config", None), "out_channels", None))
        if kwargs.get("return_dict", True) is False:
            return (out,)
        return SimpleNamespace(sample=out)

    def _model_output_for_estimate(self) -> torch.Tensor:
        """m* for the current skipped step, computed once per step (a guided pipeline may call twice)."""
        if self._pending is None:
            target = ltc_estimate(self.cur_sample, self.prev_sample, self.weights.coefficient(self.index))
            timestep = self.scheduler.timesteps[self.index]
            self._pending = model_output_for_target(self.scheduler, target, timestep, self.cur_sample)
        return self._pending

    # --- the scheduler step --------------------------------------------------------------------
    def _step(self, model_output, timestep, sample, *args, **kwargs):
        if self.weights is None and self.cfg is None:  # removed while wrapped by someone else
            return self._inner("step")(model_output, timestep, sample, *args, **kwargs)
        if self.cur_sample is None:
            self.cur_sample = sample
        if self.cfg is not None:
            return self._calibration_step(model_output, timestep, sample, *args, **kwargs)
        if self._skipping_now():
            model_output = self._model_output_for_estimate()  # exactly m*, whatever the pipeline did with the batch copy
            self._pending = None
        out = self._inner("step")(model_output, timestep, sample, *args, **kwargs)
        self._advance(sample, _prev_sample(out))
        return out

    def _calibration_step(self, model_output, timestep, sample, *args, **kwargs):
        i = self.index
        before = _state_copy(self.scheduler)
        out = self._inner("step")(model_output, timestep, sample, *args, **kwargs)
        rec = _Record()
        if i >= 1:
            rec.gamma = step_ratio(self.sigmas, i)
            rec.angle, rec.w = transition_stats(_prev_sample(out) - sample, sample - self.prev_sample, rec.gamma)
        rec.skip, rec.reason = _may_skip(i, self.cfg, rec.angle, self._last_skip, self._n_skips)
        if rec.skip:
            # follow the accelerated trajectory: redo this step from the estimate
            self._last_skip, self._n_skips = i, self._n_skips + 1
            target = ltc_estimate(sample, self.prev_sample, rec.w * rec.gamma)
            m_star = model_output_for_target(before, target, timestep, sample)
            self.scheduler.__dict__.update(before.__dict__)
            out = self._inner("step")(m_star, timestep, sample, *args, **kwargs)
        self.records.append(rec)
        self._advance(sample, _prev_sample(out))
        if self.index == len(self.sigmas) - 1:
            self.weights_calibrated = self._weights_from_records()
        return out

    def _advance(self, sample: torch.Tensor, new_sample: torch.Tensor) -> None:
        self.prev_sample, self.cur_sample = sample, new_sample
        self.index += 1

    def _weights_from_records(self) -> LTCWeights:
        recs = self.records
        return LTCWeights(
            sigmas=self.sigmas, skip=[r.skip for r in recs], w_g=[r.w for r in recs], gamma=[r.gamma for r in recs],
            angles=[r.angle for r in recs], reasons=[r.reason for r in recs], bias=0.0,
            key=make_key(steps=len(recs), sampler=type(self.scheduler).__name__,
                         scheduler_config=dict(self.scheduler.config), latent_shape=list(self.cur_sample.shape)),
            config=dict(self.cfg.__dict__),
        )

    @property
    def calibrated(self) -> LTCWeights:
        """The weights measured by a calibration run (after the pipeline has run once)."""
        weights = getattr(self, "weights_calibrated", None)
        if weights is None:
            raise ConfigError("no calibration run has completed yet: call the pipeline once with the hook installed")
        return weights


def _prev_sample(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out.prev_sample


def _match_batch(m: torch.Tensor, hidden: torch.Tensor, out_channels: int | None) -> torch.Tensor:
    """m* for the model's input batch: repeat over a classifier-free-guidance batch (the guidance
    combine of m* with itself is m*), zero-pad learned-variance channels."""
    if hidden.shape[0] != m.shape[0]:
        m = m.repeat(hidden.shape[0] // m.shape[0], *[1] * (m.ndim - 1))
    if out_channels and m.ndim >= 2 and out_channels == 2 * m.shape[1]:
        m = torch.cat([m, torch.zeros_like(m)], dim=1)
    return m


def _denoiser_module(pipe_or_model):
    for name in ("transformer", "unet"):
        module = getattr(pipe_or_model, name, None)
        if module is not None:
            return module
    if isinstance(pipe_or_model, torch.nn.Module):
        return pipe_or_model
    raise ConfigError("apply_ltc_accel needs a pipeline with a transformer or unet, or the denoiser module itself")


def apply_ltc_accel(pipe_or_model, weights: LTCWeights | None = None, *, calibrate: LTCConfig | None = None,
                    scheduler=None) -> LTCAccelHook:
    """Turn LTC-Accel on for a stock diffusers pipeline (or a transformer/unet plus `scheduler=`).

    With `weights`, steps they mark are estimated, not computed. With `calibrate=LTCConfig(...)`,
    the next pipeline run measures the weights (`hook.calibrated`). Call `hook.remove()` (or
    `remove_ltc_accel(pipe)`) to undo."""
    model = _denoiser_module(pipe_or_model)
    scheduler = scheduler or getattr(pipe_or_model, "scheduler", None)
    if scheduler is None:
        raise ConfigError("apply_ltc_accel on a bare model needs scheduler=...: LTC steers the scheduler's inputs")
    return LTCAccelHook(scheduler, weights=weights, calibrate=calibrate).attach(model)


def remove_ltc_accel(pipe_or_model) -> None:
    """Remove the LTC hook from a pipeline's denoiser (or a model); a no-op where none is applied."""
    model = _denoiser_module(pipe_or_model)
    registry = getattr(model, "_diffusers_hook", None)
    hook = registry.get_hook(HOOK_NAME) if registry is not None else None
    if hook is not None:
        hook.remove()


__all__ = ["apply_ltc_accel", "remove_ltc_accel", "model_output_for_target", "scheduler_sigmas", "LTCAccelHook"]
