"""LTC under the re-noise sampler (Self-Forcing's: predict x0, re-noise with fresh noise), and the
calls-versus-PSNR curve, against hand-derived answers and the Gaussian-mixture oracle."""
import io
import json
import subprocess
import sys

import pytest
import torch

from ltc_stream.errors import CalibrationMismatchError, ConfigError
from ltc_stream.eval_ltc import choose_config, linear_sigmas, ltc_curve, print_curve, reuse_weights
from ltc_stream.ltc import (LTCConfig, calibrate, calibrate_renoise, prediction_step_ratio, psnr, sample,
                            sample_renoise)
from ltc_stream.oracle import GaussianMixtureOracle

SHAPE = (2, 3, 4, 5)


def noises(n, seed=0, shape=SHAPE):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) for _ in range(n)]


@pytest.fixture(scope="module")
def oracle():
    return GaussianMixtureOracle(shape=(4, 8, 8, 8), components=6, seed=0)


def test_renoise_sampler_feeds_the_model_the_renoised_prediction_with_each_fresh_noise():
    """A model predicting x0 = 0 sees sigma_i * eps_i at step i >= 1 (the forward process of
    flow matching from x0 = 0), in the order the noises are given; the last step adds none."""
    sigmas = [1.0, 0.9375, 0.8333, 0.625, 0.0]
    x_T, eps = torch.randn(SHAPE), noises(3)
    seen = []

    def zero_model(x, sigma):
        seen.append((sigma, x.clone()))
        return torch.zeros_like(x)

    out, info = sample_renoise(zero_model, x_T, sigmas, eps)
    assert info.nfe == 4 and [s for s, _ in seen] == sigmas[:4]
    assert torch.equal(seen[0][1], x_T)
    for i in (1, 2, 3):
        torch.testing.assert_close(seen[i][1], sigmas[i] * eps[i - 1])
    assert torch.equal(out, torch.zeros(SHAPE))
    with pytest.raises(ConfigError, match="3 noise tensors"):
        sample_renoise(zero_model, x_T, sigmas, eps[:2])


def test_estimate_is_exact_when_predictions_move_linearly_in_sigma_with_uneven_steps():
    """x0(x, sigma) = a + sigma b: consecutive prediction changes are (sigma_i - sigma_{i-1}) b,
    exactly parallel, their ratio the sigma-gap ratio gamma_i, so the closed-form w is exactly 1
    (only with gamma indexed at the skipped prediction) and LTC reproduces every step."""
    a, b = torch.randn(SHAPE), torch.randn(SHAPE)
    sigmas = [1.0, 0.95, 0.85, 0.7, 0.45, 0.2, 0.0]

    def linear(x, sigma):
        return a + sigma * b

    weights = calibrate_renoise(linear, torch.randn(SHAPE), sigmas, noises(5, 1), LTCConfig(tau=0.05))
    assert weights.skipped_steps == [2, 4]  # never 0 or 1 (two earlier predictions needed), never adjacent
    for i in range(2, 6):
        assert weights.gamma[i] == pytest.approx((sigmas[i - 1] - sigmas[i]) / (sigmas[i - 2] - sigmas[i - 1]))
        assert weights.w_g[i] == pytest.approx(1.0, abs=1e-5)
        assert weights.angles[i] == pytest.approx(0.0, abs=2e-3)
    x_T, eps = torch.randn(SHAPE), noises(5, 2)
    full, _ = sample_renoise(linear, x_T, sigmas, eps)
    out, info = sample_renoise(linear, x_T, sigmas, eps, weights)
    assert info.nfe == 4 and info.skipped == [2, 4]
    torch.testing.assert_close(out, full, atol=1e-5, rtol=1e-5)


def test_skipped_step_is_the_extrapolated_prediction_renoised_with_the_same_noise(oracle):
    """Hand-written: with w at step 2, x0_2* = x0_1 + w gamma (x0_1 - x0_0), then x_3 =
    (1 - s_3) x0_2* + s_3 eps_3 with the same eps the full run uses."""
    sigmas = linear_sigmas(4)
    x_T, eps = oracle.noise(3, 4), noises(2 + 1, 5, (3, 4, 8, 8, 8))
    weights = calibrate_renoise(oracle, oracle.noise(3, 6), sigmas, noises(3, 7, (3, 4, 8, 8, 8)),
                                LTCConfig(interval=(2, 3)))
    assert weights.skipped_steps == [2]
    s = sigmas
    x0_0 = oracle(x_T, s[0])
    x0_1 = oracle((1 - s[1]) * x0_0 + s[1] * eps[0], s[1])
    x0_2 = x0_1 + weights.w_g[2] * weights.gamma[2] * (x0_1 - x0_0)
    expected = oracle((1 - s[3]) * x0_2 + s[3] * eps[2], s[3])
    out, info = sample_renoise(oracle, x_T, sigmas, eps, weights)
    assert info.nfe == 3
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_closed_form_weight_is_the_least_squares_minimiser_on_the_predictions(oracle):
    sigmas = linear_sigmas(6)
    x_T, eps = oracle.noise(4, 8), noises(5, 9, (4, 4, 8, 8, 8))
    weights = calibrate_renoise(oracle, x_T, sigmas, eps, LTCConfig(tau=1e-6))  # no skips: the full run
    assert weights.skipped_steps == []
    _, info = sample_renoise(oracle, x_T, sigmas, eps, record=True)
    p = info.trajectory
    grid = torch.linspace(-2.0, 2.0, 40001, dtype=torch.float64)
    for i in range(2, 6):
        d_cur, d_prev = (p[i] - p[i - 1]).double().flatten(), (p[i - 1] - p[i - 2]).double().flatten()
        g = prediction_step_ratio(sigmas, i)
        errs = (d_cur @ d_cur) - 2 * grid * g * (d_cur @ d_prev) + (grid * g) ** 2 * (d_prev @ d_prev)
        assert weights.w_g[i] == pytest.approx(float(grid[errs.argmin()]), abs=2e-4)


def test_four_step_renoise_skip_beats_the_genuine_three_step_schedule(oracle):
    """The finding of issue 41 on the analytic model: a skipped step under the re-noise sampler
    stays closer to the full four-step run than a genuine three-step run, and the fitted weight
    is at least as good as reusing the previous prediction (w = 0) on held-out noise."""
    sigmas = linear_sigmas(4)
    shape = (32, 4, 8, 8, 8)
    weights = calibrate_renoise(oracle, oracle.noise(32, 11), sigmas, noises(3, 12, shape), LTCConfig(interval=(2, 3)))
    x_T, eps = oracle.noise(32, 13), noises(3, 14, shape)
    full, _ = sample_renoise(oracle, x_T, sigmas, eps)
    ltc, info = sample_renoise(oracle, x_T, sigmas, eps, weights)
    reused, _ = sample_renoise(oracle, x_T, sigmas, eps, reuse_weights(weights))
    shorter, _ = sample_renoise(oracle, x_T, linear_sigmas(3), eps[:2])
    assert info.nfe == 3
    assert psnr(ltc, full) > psnr(shorter, full) + 3.0
    assert psnr(ltc, full) >= psnr(reused, full) - 0.05


def test_weights_for_one_sampler_are_refused_by_the_other(oracle):
    sigmas = linear_sigmas(6)
    x = oracle.noise(2, 1)
    euler = calibrate(oracle, x, sigmas, LTCConfig(tau=0.5))
    renoise = calibrate_renoise(oracle, x, sigmas, noises(5, 1, x.shape), LTCConfig(tau=3.1))
    with pytest.raises(CalibrationMismatchError, match="euler sampler"):
        sample_renoise(oracle, x, sigmas, noises(5, 2, x.shape), euler)
    with pytest.raises(CalibrationMismatchError, match="renoise sampler"):
        sample(oracle, x, sigmas, renoise)
    assert renoise.key["sampler"] == "renoise"


# ---------------------------------------------------------------------------------------------
# The curve
# ---------------------------------------------------------------------------------------------
def test_curve_reuse_on_alternate_steps_is_the_half_length_schedule(oracle):
    """An identity the curve must show: with uniform sigmas, reusing the previous velocity on steps
    1 and 3 of 4 is exactly the genuine 2-step Euler run (each pair is one double-length step)."""
    curve = ltc_curve(oracle, linear_sigmas(4), oracle.noise(4, 1), oracle.noise(4, 2))
    points = {tuple(p["skipped"]): p for p in curve["ltc"]}
    assert set(points) == {(1,), (2,), (3,), (1, 3)}  # every single skip and the alternating pair
    assert all(p["calls"] == 4 - len(p["skipped"]) for p in points.values())
    respaced = {r["calls"]: r["psnr"] for r in curve["respaced"]}
    assert points[(1, 3)]["psnr_reuse"] == pytest.approx(respaced[2], abs=0.02)
    # the sweep shares prefixes: far fewer model calls than its runs would make one by one
    assert curve["model_calls_made"] < 40


def test_curve_points_equal_separate_runs_and_print(oracle):
    sigmas = linear_sigmas(12)
    x_cal, x_eval = oracle.noise(4, 1), oracle.noise(4, 2)
    curve = ltc_curve(oracle, sigmas, x_cal, x_eval, configs=[LTCConfig(tau=0.1), LTCConfig(tau=0.3)])
    weights = calibrate(oracle, x_cal, sigmas, LTCConfig(tau=0.1))
    full, _ = sample(oracle, x_eval, sigmas)
    out, info = sample(oracle, x_eval, sigmas, weights)
    point = next(p for p in curve["ltc"] if p["skipped"] == weights.skipped_steps)
    assert point["calls"] == info.nfe and point["psnr_ltc"] == pytest.approx(psnr(out, full), abs=0.01)
    text = io.StringIO()
    print_curve(curve, text)
    lines = text.getvalue().splitlines()
    assert len(lines) == 3 + len(curve["ltc"]) + 1
    assert f"{point['psnr_ltc']:.2f}" in text.getvalue()


def test_eval_ltc_sweep_command_records_itself():
    out = subprocess.run([sys.executable, "-m", "ltc_stream", "eval-ltc", "--sweep", "--steps", "4", "--samples", "2",
                          "--sampler", "euler", "renoise", "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["command"].startswith("ltc-stream eval-ltc --sweep")
    assert [c["sampler"] for c in report["curves"]] == ["euler", "renoise"]
    bad = subprocess.run([sys.executable, "-m", "ltc_stream", "eval-ltc", "--model", "oracle", "--steps", "1"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_choose_config_reproduces_the_best_point(oracle):
    sigmas = linear_sigmas(4)
    x_cal, x_eval = oracle.noise(8, 1), oracle.noise(8, 2)
    curve = ltc_curve(oracle, sigmas, x_cal, x_eval, sampler="renoise", noises_cal=noises(3, 3, x_cal.shape),
                      noises_eval=noises(3, 4, x_eval.shape))
    cfg = choose_config(curve)
    best = max(curve["ltc"], key=lambda p: p["psnr_ltc"] if p["calls"] == 3 else -1)
    assert calibrate_renoise(oracle, x_cal, sigmas, noises(3, 3, x_cal.shape), cfg).skipped_steps == best["skipped"]
    with pytest.raises(ConfigError, match="no LTC point at 1 calls"):
        choose_config(curve, calls=1)
