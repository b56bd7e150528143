"""LTC-Accel core against independent references: hand-derived formulas, a brute-force search,
a straight-line flow whose exact answer is known, and the Gaussian-mixture oracle."""
import math

import pytest
import torch

from ltc_stream import LTCConfig, LTCWeights, OnlineLTC, calibrate, psnr, sample
from ltc_stream.errors import CalibrationMismatchError, ConfigError, NonFiniteError
from ltc_stream.ltc import step_ratio
from ltc_stream.oracle import GaussianMixtureOracle


class CountingDenoiser:
    """Counts model calls itself, so the tests never trust the sampler's own count."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, sigma):
        self.calls += 1
        return self.fn(x, sigma)


@pytest.fixture(scope="module")
def oracle():
    return GaussianMixtureOracle(shape=(4, 8, 8, 8), components=6, seed=0)


def straight_line_denoiser(v):
    """d = (x - denoised) / sigma = v for every x and sigma: Euler paths are straight lines."""
    return lambda x, sigma: x - sigma * v


def test_gamma_is_the_skipped_step_over_the_previous_step():
    sigmas = [1.0, 0.9, 0.7, 0.4, 0.0]
    # By hand: step 2 goes 0.7 -> 0.4 (size 0.3); step 1 went 0.9 -> 0.7 (size 0.2).
    assert step_ratio(sigmas, 2) == pytest.approx(0.3 / 0.2)
    assert step_ratio(sigmas, 3) == pytest.approx(0.4 / 0.3)
    with pytest.raises(ValueError):
        step_ratio(sigmas, 0)


def test_estimate_is_exact_on_straight_paths_with_uneven_steps():
    """On a straight path, x_{i+1} = x_i + gamma_i (x_i - x_{i-1}) exactly, and only with gamma
    indexed at the skipped step: an off-by-one gamma is wrong when step sizes differ."""
    torch.manual_seed(0)
    v = torch.randn(2, 3, 4, 5)
    x_T = torch.randn(2, 3, 4, 5)
    sigmas = torch.tensor([1.0, 0.93, 0.8, 0.62, 0.4, 0.18, 0.0])
    den = straight_line_denoiser(v)
    weights = calibrate(den, x_T, sigmas, LTCConfig(tau=0.05))
    assert weights.skipped_steps == [1, 3, 5]
    for i in weights.skipped_steps:
        assert weights.angles[i] == pytest.approx(0.0, abs=2e-3)
        assert weights.w_g[i] == pytest.approx(1.0, abs=1e-5)
    full, _ = sample(den, x_T, sigmas)
    out, info = sample(den, x_T, sigmas, weights)
    assert info.nfe == 3
    torch.testing.assert_close(out, full, atol=1e-5, rtol=1e-5)
    # Off-by-one gamma (the previous step's ratio) breaks exactness on uneven steps.
    shifted = LTCWeights.from_dict(weights.to_dict())
    shifted.gamma = [1.0] + [step_ratio(weights.sigmas, i - 1) if i >= 2 else 1.0 for i in range(1, 6)]
    wrong, _ = sample(den, x_T, sigmas, shifted)
    assert (wrong - full).abs().max() > 1e-2


def test_closed_form_weight_equals_brute_force(oracle):
    sigmas = torch.linspace(1, 0, 13)
    _, info = sample(oracle, oracle.noise(4, 5), sigmas, record=True)
    traj = info.trajectory
    weights = calibrate(oracle, oracle.noise(4, 5), sigmas, LTCConfig(tau=1e-6))  # no skips: full path
    assert weights.skipped_steps == []
    grid = torch.linspace(0.0, 2.0, 20001, dtype=torch.float64)
    for i in range(1, 12):
        d_cur = (traj[i + 1] - traj[i]).double().flatten()
        d_prev = (traj[i] - traj[i - 1]).double().flatten()
        gamma = step_ratio(weights.sigmas, i)
        # ||d_cur - w gamma d_prev||^2 expanded, evaluated for every w of the grid
        errs = (d_cur @ d_cur) - 2 * grid * gamma * (d_cur @ d_prev) + (grid * gamma) ** 2 * (d_prev @ d_prev)
        w_brute = float(grid[errs.argmin()])
        assert weights.w_g[i] == pytest.approx(w_brute, abs=1e-3)


def test_twelve_steps_at_most_eight_calls_and_beats_reuse(oracle):
    sigmas = torch.linspace(1, 0, 13)
    cfg = LTCConfig(tau=0.3)
    weights = calibrate(oracle, oracle.noise(8, 1), sigmas, cfg)
    x_eval = oracle.noise(8, 2)
    full, _ = sample(oracle, x_eval, sigmas)
    counted = CountingDenoiser(oracle)
    out, _ = sample(counted, x_eval, sigmas, weights)
    assert counted.calls <= 8
    reuse = LTCWeights.from_dict(weights.to_dict())
    reuse.w_g = [1.0] * reuse.steps
    counted_reuse = CountingDenoiser(oracle)
    out_reuse, _ = sample(counted_reuse, x_eval, sigmas, reuse)
    assert counted_reuse.calls == counted.calls
    assert psnr(out, full) > psnr(out_reuse, full)
    assert psnr(out, full) >= 35.0


def test_never_step_zero_and_never_two_skips_in_a_row(oracle):
    weights = calibrate(oracle, oracle.noise(2, 3), torch.linspace(1, 0, 11), LTCConfig(tau=3.0))
    skipped = weights.skipped_steps
    assert skipped and 0 not in skipped
    assert all(b - a >= 2 for a, b in zip(skipped, skipped[1:]))
    assert "first step" in weights.reasons[0]


def test_capped_skips_go_to_the_smallest_full_step_angles(oracle):
    """With max_skips, the skipped steps are the smallest adjacent-transition angles of the
    full-step trajectory (computed here independently, in float64), not the first allowed ones."""
    sigmas = torch.linspace(1, 0, 9)
    x = oracle.noise(4, 5)
    traj = [x]
    for i in range(8):  # plain Euler written out here, not the library's sampler
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        traj.append(traj[-1] + (s_next - s) * (traj[-1] - oracle(traj[-1], s)) / s)
    d = [(b - a).double().flatten() for a, b in zip(traj, traj[1:])]
    angle = {i: math.acos(max(-1.0, min(1.0, float(d[i] @ d[i - 1] / (d[i].norm() * d[i - 1].norm())))))
             for i in range(1, 8)}
    order = sorted(angle, key=angle.get)
    one = calibrate(oracle, x, sigmas, LTCConfig(tau=3.0, max_skips=1))
    assert one.skipped_steps == [order[0]]
    assert order[0] != 1  # the first allowed step would have been 1: the choice is not the greedy one
    two = calibrate(oracle, x, sigmas, LTCConfig(tau=3.0, max_skips=2))
    expected = [order[0]] + [next(i for i in order[1:] if abs(i - order[0]) >= 2)]
    assert two.skipped_steps == sorted(expected)
    assert "max_skips" in " ".join(two.reasons)


def test_skipping_outside_the_coherent_interval_is_worse(oracle):
    """Same number of skips: where the angles allow (measured) vs forced into the early,
    incoherent steps (fixed interval at the start)."""
    sigmas = torch.linspace(1, 0, 13)
    x_cal, x_eval = oracle.noise(8, 1), oracle.noise(8, 2)
    measured = calibrate(oracle, x_cal, sigmas, LTCConfig(tau=0.1))
    n = len(measured.skipped_steps)
    assert n >= 2
    early = calibrate(oracle, x_cal, sigmas, LTCConfig(interval=(1, 1 + 2 * n)))
    assert len(early.skipped_steps) == n and early.skipped_steps != measured.skipped_steps
    assert max(measured.angles[i] for i in measured.skipped_steps) < 0.1
    full, _ = sample(oracle, x_eval, sigmas)
    good = psnr(sample(oracle, x_eval, sigmas, measured)[0], full)
    bad = psnr(sample(oracle, x_eval, sigmas, early)[0], full)
    assert good > bad + 3.0


def test_auto_bias_never_hurts(oracle):
    sigmas = torch.linspace(1, 0, 13)
    x_cal = oracle.noise(8, 1)
    plain = calibrate(oracle, x_cal, sigmas, LTCConfig(tau=0.3))
    tuned = calibrate(oracle, x_cal, sigmas, LTCConfig(tau=0.3, bias="auto"))
    full, _ = sample(oracle, x_cal, sigmas)
    assert psnr(sample(oracle, x_cal, sigmas, tuned)[0], full) >= psnr(sample(oracle, x_cal, sigmas, plain)[0], full) - 1e-6


def test_weights_round_trip_and_key_mismatch_is_an_error(tmp_path, oracle):
    sigmas = torch.linspace(1, 0, 9)
    weights = calibrate(oracle, oracle.noise(2, 1), sigmas, key={"model": "oracle", "guidance_scale": 5.0})
    path = tmp_path / "w.json"
    weights.save(path)
    loaded = LTCWeights.load(path, expect_key={"model": "oracle", "steps": 8, "guidance_scale": 5.0})
    assert loaded.w_g == weights.w_g and loaded.skip == weights.skip
    with pytest.raises(CalibrationMismatchError, match="guidance_scale"):
        LTCWeights.load(path, expect_key={"model": "oracle", "guidance_scale": 7.5})
    with pytest.raises(CalibrationMismatchError, match="8-step"):
        sample(oracle, oracle.noise(1, 0), torch.linspace(1, 0, 13), loaded)
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(CalibrationMismatchError, match="not valid JSON"):
        LTCWeights.load(tmp_path / "bad.json")


def test_online_refresh_converges_to_the_closed_form(oracle):
    sigmas = torch.linspace(1, 0, 13)
    weights = calibrate(oracle, oracle.noise(4, 1), sigmas, LTCConfig(tau=0.3))
    for i in weights.skipped_steps:
        weights.w_g[i] = 0.5  # start far from the answer
    online = OnlineLTC(weights, every=4, momentum=0.7)
    assert [online.should_run_full(k) for k in range(5)] == [True, False, False, False, True]
    _, info = sample(oracle, oracle.noise(4, 9), sigmas, record=True)
    traj = info.trajectory
    for _ in range(40):
        online.update(traj)
    for i in weights.skipped_steps:
        d_cur, d_prev = (traj[i + 1] - traj[i]).double(), (traj[i] - traj[i - 1]).double()
        expected = float((d_cur * d_prev).sum() / (weights.gamma[i] * (d_prev * d_prev).sum()))
        assert online.weights.w_g[i] == pytest.approx(expected, abs=1e-3)
    assert weights.w_g[weights.skipped_steps[0]] == 0.5  # the caller's weights are not mutated


def test_bad_inputs_are_clear_errors(oracle):
    x = oracle.noise(1, 0)
    with pytest.raises(ConfigError, match="end at 0"):
        sample(oracle, x, torch.linspace(1, 0.1, 5))
    with pytest.raises(ConfigError, match="decreasing"):
        sample(oracle, x, torch.tensor([1.0, 0.5, 0.7, 0.0]))
    with pytest.raises(ConfigError, match="tau"):
        calibrate(oracle, x, torch.linspace(1, 0, 5), LTCConfig(tau=-1))
    with pytest.raises(ConfigError, match="period"):
        calibrate(oracle, x, torch.linspace(1, 0, 5), LTCConfig(period=1))
    bad = x.clone()
    bad[0, 0, 0, 0, 0] = math.nan
    with pytest.raises(NonFiniteError):
        sample(oracle, bad, torch.linspace(1, 0, 5))
