"""LTC in front of diffusers schedulers and a stock pipeline built from tiny random components."""
import pytest
import torch
from diffusers import (
    AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel, DPMSolverMultistepScheduler,
    EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler,
)

from ltc_stream import LTCConfig, calibrate, psnr, sample
from diffusers.hooks import HookRegistry, ModelHook, apply_layerwise_casting

from ltc_stream.diffusers_bridge import apply_ltc_accel, model_output_for_target, remove_ltc_accel, scheduler_sigmas
from ltc_stream.errors import ConfigError
from ltc_stream.ltc import ltc_estimate
from ltc_stream.oracle import GaussianMixtureOracle

SCHEDULERS = [
    lambda: FlowMatchEulerDiscreteScheduler(shift=1.0),
    lambda: DDIMScheduler(clip_sample=False),
    lambda: EulerDiscreteScheduler(),
    lambda: DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2),
    lambda: UniPCMultistepScheduler(),
]


@pytest.mark.parametrize("make", SCHEDULERS)
def test_probed_model_output_lands_exactly_on_the_target(make):
    """The bridge's premise: the step is affine in the model output, so m* reproduces any target."""
    sched = make()
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g) * float(getattr(sched, "init_noise_sigma", 1.0))
    for i, t in enumerate(sched.timesteps[:6]):
        m = torch.randn(x.shape, generator=g)
        if i in (2, 4):
            target = x + 0.1 * torch.randn(x.shape, generator=g)
            m = model_output_for_target(sched, target, t, x)
            x_next = sched.step(m, t, x).prev_sample
            torch.testing.assert_close(x_next, target, atol=2e-4, rtol=1e-4)
        else:
            x_next = sched.step(m, t, x).prev_sample
        x = x_next


def velocity_model(oracle):
    """A 'transformer' returning the flow velocity v = (x - E[x0|x]) / sigma of the oracle."""
    class Velocity(torch.nn.Module):
        def forward(self, x, timestep=None, return_dict=True):
            sigma = float(timestep.reshape(-1)[0]) / 1000.0
            v = (x - oracle(x, sigma)) / sigma
            return (v,) if return_dict is False else type("Out", (), {"sample": v})()
    return Velocity()


def run_flow_loop(model, sched, x_T, steps):
    sched.set_timesteps(steps)
    x = x_T
    for t in sched.timesteps:
        v = model(x, timestep=t[None], return_dict=False)[0]
        x = sched.step(v, t, x).prev_sample
    return x


def test_bridge_on_flow_match_euler_matches_our_sampler():
    oracle = GaussianMixtureOracle(shape=(2, 4, 6, 6), components=4, seed=1)
    sched = FlowMatchEulerDiscreteScheduler(shift=1.0)
    sched.set_timesteps(12)
    sigmas = torch.tensor(scheduler_sigmas(sched))
    x_cal, x_eval = oracle.noise(4, 1), oracle.noise(4, 2)
    weights = calibrate(oracle, x_cal, sigmas, LTCConfig(tau=0.3))
    assert weights.skipped_steps
    ours, info = sample(oracle, x_eval, sigmas, weights)

    model = velocity_model(oracle)
    hook = apply_ltc_accel(model, weights, scheduler=sched)
    theirs = run_flow_loop(model, sched, x_eval, 12)
    assert hook.model_calls == info.nfe == 12 - len(weights.skipped_steps)
    torch.testing.assert_close(theirs, ours, atol=2e-4, rtol=1e-4)
    hook.remove()
    assert model._diffusers_hook.get_hook("ltc_accel") is None and "step" not in sched.__dict__
    torch.testing.assert_close(run_flow_loop(model, sched, x_eval, 12), sample(oracle, x_eval, sigmas)[0],
                               atol=2e-4, rtol=1e-4)


def tiny_dit_pipeline(scheduler):
    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
                                        num_layers=2, norm_num_groups=4, sample_size=8, patch_size=2,
                                        num_embeds_ada_norm=1000)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), block_out_channels=(8,), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, sample_size=8)
    pipe = DiTPipeline(transformer=transformer.eval(), vae=vae.eval(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_hook_on_a_stock_pipeline_calibrates_skips_and_keeps_dpm_history_consistent():
    pipe = tiny_dit_pipeline(DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2))
    steps, run = 12, lambda: pipe(class_labels=[3], guidance_scale=3.0, num_inference_steps=steps,
                                  generator=torch.Generator().manual_seed(7), output_type="np").images
    forwards = []
    # counted inside the model (its first block), so a call the hook answers without computing is not counted
    handle = pipe.transformer.transformer_blocks[0].register_forward_pre_hook(lambda *a: forwards.append(1))
    full = torch.from_numpy(run())
    assert len(forwards) == steps

    cal = apply_ltc_accel(pipe, calibrate=LTCConfig(tau=0.5))
    run()
    weights = cal.calibrated
    cal.remove()
    assert weights.steps == steps and len(weights.angles) == steps
    assert weights.skipped_steps, weights.reasons
    assert weights.key["sampler"] == "DPMSolverMultistepScheduler"

    # Record every (sample, output) the scheduler sees under the hook.
    seen = []
    orig = DPMSolverMultistepScheduler.step

    def spy(self, model_output, timestep, sample, *a, **k):
        out = orig(self, model_output, timestep, sample, *a, **k)
        if self is pipe.scheduler:  # not the bridge's probing copies
            seen.append((sample.clone(), out[0] if isinstance(out, tuple) else out.prev_sample, self.model_outputs[-1].clone()))
        return out

    DPMSolverMultistepScheduler.step = spy
    try:
        forwards.clear()
        hook = apply_ltc_accel(pipe, weights)
        fast = torch.from_numpy(run())
    finally:
        DPMSolverMultistepScheduler.step = orig
    # the pipeline ran the (guided) transformer only on steps that were not skipped
    assert len(forwards) == steps - len(weights.skipped_steps) == hook.model_calls
    for i in weights.skipped_steps:
        x_prev, x_i, x_next = seen[i - 1][0], seen[i][0], seen[i][1]
        expected = ltc_estimate(x_i, x_prev, weights.coefficient(i))
        torch.testing.assert_close(x_next, expected, atol=2e-4, rtol=1e-4)
        # DPM-Solver++ history: the stored data prediction is the x0 the estimate implies, the one a
        # first-order (DDIM) step from x_i to x_next would need: x0 = (x_next - (s_n/s_i)(a_i/a_n) ... )
        sched = pipe.scheduler
        if float(sched.sigmas[i + 1]) == 0.0:  # the final step is first order and lands on the data prediction
            torch.testing.assert_close(seen[i][2], x_next, atol=2e-4, rtol=1e-4)
            continue
        alpha_t, sigma_t = sched._sigma_to_alpha_sigma_t(sched.sigmas[i + 1])
        alpha_s, sigma_s = sched._sigma_to_alpha_sigma_t(sched.sigmas[i])
        lam_t, lam_s = torch.log(alpha_t) - torch.log(sigma_t), torch.log(alpha_s) - torch.log(sigma_s)
        h = lam_t - lam_s
        d = seen[i][2]
        if i >= 1:
            d0, d1 = seen[i][2], seen[i - 1][2]
            h0 = lam_s - (torch.log(sched._sigma_to_alpha_sigma_t(sched.sigmas[i - 1])[0]) - torch.log(sched._sigma_to_alpha_sigma_t(sched.sigmas[i - 1])[1]))
            r0 = h0 / h
            d = d0 + 0.5 * (d0 - d1) / r0
        implied = (sigma_t / sigma_s) * x_i - alpha_t * (torch.exp(-h) - 1.0) * d
        torch.testing.assert_close(implied, x_next, atol=2e-4, rtol=1e-4)
    hook.remove()
    handle.remove()
    assert psnr(fast, full) > 25.0


def test_hook_refuses_what_it_cannot_do():
    from diffusers import EulerAncestralDiscreteScheduler

    pipe = tiny_dit_pipeline(EulerAncestralDiscreteScheduler())
    with pytest.raises(ConfigError, match="supports"):
        apply_ltc_accel(pipe, calibrate=LTCConfig())
    pipe = tiny_dit_pipeline(DDIMScheduler())
    with pytest.raises(ConfigError, match="clip_sample=False"):
        apply_ltc_accel(pipe, calibrate=LTCConfig())
    pipe = tiny_dit_pipeline(DDIMScheduler(clip_sample=False))
    with pytest.raises(ConfigError, match="either weights"):
        apply_ltc_accel(pipe)


class CountingHook(ModelHook):
    """Another hook in the same registry: counts the calls that reach it."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def pre_forward(self, module, *args, **kwargs):
        self.calls += 1
        return args, kwargs


def _dit_run(pipe, steps=12):
    return torch.from_numpy(pipe(class_labels=[3], guidance_scale=3.0, num_inference_steps=steps,
                                 generator=torch.Generator().manual_seed(7), output_type="np").images)


def _calibrated(pipe, tau=0.5):
    cal = apply_ltc_accel(pipe, calibrate=LTCConfig(tau=tau))
    _dit_run(pipe)
    cal.remove()
    return cal.calibrated


@pytest.mark.parametrize("remove_first", ["ltc", "counter_below"])
def test_hook_composes_with_other_hooks_in_the_registry_and_removes_cleanly(remove_first):
    pipe = tiny_dit_pipeline(DDIMScheduler(clip_sample=False))
    steps = 12
    full = _dit_run(pipe, steps)
    weights = _calibrated(pipe)
    skipped = len(weights.skipped_steps)
    assert skipped

    registry = HookRegistry.check_if_exists_or_initialize(pipe.transformer)
    below, above = CountingHook(), CountingHook()
    registry.register_hook(below, "count_below")  # registered first: runs inside LTC
    hook = apply_ltc_accel(pipe, weights)
    registry.register_hook(above, "count_above")  # registered last: sees every call the pipeline makes
    fast = _dit_run(pipe, steps)
    assert above.calls == steps  # the pipeline still calls the model every step
    assert below.calls == hook.model_calls == steps - skipped  # but skipped steps stop at LTC
    assert psnr(fast, full) > 25.0

    if remove_first == "ltc":
        hook.remove()
        below.calls = above.calls = 0
        # exactly the pipeline without LTC, both other hooks still in place
        assert torch.equal(_dit_run(pipe, steps), full)
        assert below.calls == above.calls == steps
        assert "step" not in pipe.scheduler.__dict__
    else:
        # diffusers re-points the chain when a hook below LTC goes: LTC must stay in it, calling what is below
        registry.remove_hook("count_below")
        above.calls = 0
        again = _dit_run(pipe, steps)
        assert torch.equal(again, fast) and hook.model_calls == steps - skipped and above.calls == steps
        assert below.calls == steps - skipped  # the removed hook is no longer called
        hook.remove()
        assert torch.equal(_dit_run(pipe, steps), full)
    registry.remove_hook("count_above")
    remove_ltc_accel(pipe)  # a no-op once removed
    assert torch.equal(_dit_run(pipe, steps), full)


def test_hook_composes_with_diffusers_layerwise_casting():
    """diffusers' own hooks on the model's layers: a skipped step runs none of them, and taking LTC
    out leaves exactly the cast model's output."""
    pipe = tiny_dit_pipeline(DDIMScheduler(clip_sample=False))
    weights = _calibrated(pipe)
    apply_layerwise_casting(pipe.transformer, storage_dtype=torch.bfloat16, compute_dtype=torch.float32)
    cast = _dit_run(pipe)
    linear_calls = []
    handle = pipe.transformer.transformer_blocks[0].ff.net[2].register_forward_pre_hook(lambda *a: linear_calls.append(1))
    hook = apply_ltc_accel(pipe, weights)
    fast = _dit_run(pipe)
    assert len(linear_calls) == hook.model_calls == 12 - len(weights.skipped_steps)
    assert psnr(fast, cast) > 25.0
    with pytest.raises(ConfigError, match="already applied"):
        apply_ltc_accel(pipe, weights)
    hook.remove()
    handle.remove()
    assert torch.equal(_dit_run(pipe), cast)
