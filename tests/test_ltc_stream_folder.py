"""LTC on an imported streaming folder, under its authors' re-noise sampler: `calibrate_stream_folder`
prints the calls-versus-PSNR curve and stores the chosen skip; the folder then runs 3 of 4 model
calls per chunk, its sample is the hand-written re-noise loop with the LTC estimate on the clean
predictions, and a folder whose stored key is not what is run is refused with one clear error."""
from __future__ import annotations

import io
import json

import pytest
import torch

from ltc_stream.errors import CalibrationMismatchError
from ltc_stream.ltc import psnr, sample_renoise
from ltc_stream.models import load_model

from real_model_fixtures import diffusers_to_original, save_tiny_wan

pytest.importorskip("diffusers")

SIZE = dict(height=32, width=48)
PROMPTS = ["a red ball moves left", "a blue cat", "the green square moves right"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from diffusers import WanTransformer3DModel

    from ltc_stream.models.importers import import_checkpoint

    root = tmp_path_factory.mktemp("ltc-folder")
    base = save_tiny_wan(root / "base")
    state = WanTransformer3DModel.from_pretrained(base / "transformer").state_dict()
    torch.save({"generator_ema": {"model." + k: v for k, v in diffusers_to_original(state).items()}},
               root / "self_forcing_dmd.pt")
    import_checkpoint("self-forcing", root / "self_forcing_dmd.pt", base, root / "sf")
    return root / "sf"


def count_calls(model) -> dict:
    calls = {"n": 0}
    forward = model.transformer.forward

    def counted(*args, **kwargs):
        calls["n"] += 1
        return forward(*args, **kwargs)

    model.transformer.forward = counted
    return calls


@torch.no_grad()
def test_calibrated_folder_skips_a_step_under_the_renoise_sampler(folder):
    from ltc_stream.models.stream_folder import calibrate_stream_folder

    out = io.StringIO()
    result = calibrate_stream_folder(folder, PROMPTS, seeds=2, save=True, file=out, **SIZE)
    printed = out.getvalue()
    assert "renoise sampler, 4 steps" in printed and "genuine shorter schedule" in printed
    curve = result["curve"]
    # every single-step skip was measured (steps 2 and 3: the estimate needs two predictions)
    assert {tuple(p["skipped"]) for p in curve["ltc"] if p["calls"] == 3} == {(2,), (3,)}
    weights = result["weights"]
    assert weights.sampler == "renoise" and weights.model_calls == 3
    chosen = max((p for p in curve["ltc"] if p["calls"] == 3), key=lambda p: p["psnr_ltc"])
    assert weights.skipped_steps == chosen["skipped"]
    stored = json.loads((folder / "ltc_weights.json").read_text())
    assert stored["key"]["kind"] == "self-forcing" and stored["key"]["sampler"] == "renoise"
    assert stored["key"]["timesteps"] == pytest.approx([1000.0, 937.5, 833.3333, 625.0], abs=1e-3)
    assert stored["key"]["latent_shape"] == [1, 16, 3, 4, 6]

    model = load_model(str(folder), device="cpu", decoder="vae", **SIZE)
    assert model.ltc_weights is not None and model.ltc_weights.skipped_steps == weights.skipped_steps
    calls = count_calls(model)
    emb = model.encode_prompt(PROMPTS[0])
    gen = torch.Generator().manual_seed(123)
    draws = [torch.randn(model.latent_shape(), generator=gen) for _ in range(4)]  # initial + 3 re-noise

    def run(ltc: bool):
        fed = iter(draws)
        state = model.new_stream(0)
        state.noise = lambda shape: next(fed)
        seen = {}
        decode = model.decode
        model.decode = lambda latents, st: (seen.setdefault("x", latents.clone()), decode(latents, st))[1]
        try:
            result = model.generate_chunk(state, emb, ltc=ltc)
        finally:
            model.decode = decode
        return result, seen["x"]

    calls["n"] = 0
    on, x_ltc = run(True)
    assert on.model_calls == 3 and calls["n"] == 3 + 1  # + the clean cache write
    calls["n"] = 0
    off, x_full = run(False)
    assert off.model_calls == 4 and calls["n"] == 4 + 1

    # the sample, by hand: x0_i = x_i - s_i v(x_i, t_i); x_{i+1} = (1 - s_{i+1}) x0_i + s_{i+1} eps_{i+1};
    # at the skipped step k: x0_k = x0_{k-1} + w_k gamma_k (x0_{k-1} - x0_{k-2}),
    # gamma_k = (s_{k-1} - s_k) / (s_{k-2} - s_{k-1})
    model.ctx.cache = None
    den = model.denoiser_fn(emb)
    s = model.sigmas
    k = weights.skipped_steps[0]
    x, preds = draws[0], []
    for i in range(4):
        if i == k:
            gamma = (s[k - 1] - s[k]) / (s[k - 2] - s[k - 1])
            x0 = preds[-1] + weights.w_g[k] * gamma * (preds[-1] - preds[-2])
        else:
            x0 = den(x, s[i])
        preds.append(x0)
        x = (1 - s[i + 1]) * x0 + s[i + 1] * draws[i + 1] if i < 3 else x0
    torch.testing.assert_close(x_ltc, x, atol=1e-6, rtol=1e-5)
    # and the library's sampler on the same noise gives the same sample
    lib, info = sample_renoise(den, draws[0], s, draws[1:], model.ltc_weights)
    assert info.nfe == 3
    torch.testing.assert_close(x_ltc, lib, atol=1e-6, rtol=1e-5)
    # fidelity: within the range the curve measured on other noise (tiny random weights: tens of dB)
    measured = psnr(x_ltc, x_full)
    assert measured > chosen["psnr_ltc"] - 10.0, (measured, chosen["psnr_ltc"])
    assert measured < 80  # a real skip, not the full run


def test_a_stored_choice_for_other_settings_is_refused(folder):
    from ltc_stream.models.stream_folder import calibrate_stream_folder

    if not (folder / "ltc_weights.json").is_file():
        calibrate_stream_folder(folder, PROMPTS[:1], seeds=1, save=True, file=io.StringIO(), **SIZE)
    with pytest.raises(CalibrationMismatchError, match="sampler: calibrated for 'renoise', running 'euler'.*calibrate"):
        load_model(str(folder), device="cpu", decoder="vae", sampler="euler", **SIZE)
    with pytest.raises(CalibrationMismatchError, match="latent_shape"):
        load_model(str(folder), device="cpu", decoder="vae", height=48, width=48)
    # a new measurement for the other settings is not blocked by the stored choice
    again = calibrate_stream_folder(folder, PROMPTS[:1], seeds=1, file=io.StringIO(), height=48, width=48,
                                    context_blocks=0)
    assert again["weights"].key["latent_shape"] == [1, 16, 3, 6, 6]


def test_calibrate_command_on_an_imported_folder_prints_the_curve_and_stores_the_skip(folder, tmp_path):
    import shutil
    import subprocess
    import sys

    copy = tmp_path / "sf"
    shutil.copytree(folder, copy, symlinks=True)
    (copy / "ltc_weights.json").unlink(missing_ok=True)
    out = subprocess.run([sys.executable, "-m", "ltc_stream", "calibrate", "--model", str(copy), "--device", "cpu",
                          "--size", "48x32", "--prompts", "2", "--save"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["model_calls"] == 3 and report["saved"] is True
    assert "genuine shorter schedule" in out.stderr
    stored = json.loads((copy / "ltc_weights.json").read_text())
    assert stored["key"]["sampler"] == "renoise"
    model = load_model(str(copy), device="cpu", **SIZE)
    state = model.new_stream(0)
    assert model.generate_chunk(state, model.encode_prompt(PROMPTS[0]), ltc=True).model_calls == 3
    bad = subprocess.run([sys.executable, "-m", "ltc_stream", "calibrate", "--model", str(copy), "--steps", "3"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "authors' timesteps" in bad.stderr and "Traceback" not in bad.stderr
