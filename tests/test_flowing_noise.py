"""Flowing noise (`ltc_stream.models.default.noise`, `train-default --noise-flow`, part of the packaged
model's training recipe): noise whose shared part moves along the prompt's motion, still standard normal.

The references are independent of the code under test: moments and correlations of the draws, and
`torch.roll` of the field summed down by hand for whole-pixel motion."""
from __future__ import annotations

import torch

from ltc_stream.models.default import model as model_module
from ltc_stream.models.default.noise import UPSCALE, field_frames, mix, noise_field


def _summed_down(field: torch.Tensor) -> torch.Tensor:
    b, c, hh, ww = field.shape
    u = UPSCALE
    return field.view(b, c, hh // u, u, ww // u, u).sum(dim=(3, 5)) / u


def test_flowing_noise_is_standard_normal_and_independent_across_pixels():
    gen = torch.Generator().manual_seed(0)
    field = noise_field(32, 8, 16, 16, gen)
    frames = field_frames(field, torch.rand(32, 2, generator=gen) * 64, torch.tensor([[0.031, -0.017]] * 32), 8)
    assert frames.shape == (32, 8, 8, 16, 16)
    assert abs(float(frames.mean())) < 0.01 and abs(float(frames.var()) - 1) < 0.02
    assert abs(float((frames[..., 1:] * frames[..., :-1]).mean())) < 0.01  # neighbouring columns
    assert abs(float((frames[..., 1:, :] * frames[..., :-1, :]).mean())) < 0.01  # neighbouring rows
    fresh = torch.randn(frames.shape, generator=gen)
    for a in (0.0, 0.5, 1.0):
        mixed = mix(fresh, frames, a)
        assert abs(float(mixed.var()) - 1) < 0.02
    assert torch.equal(mix(fresh, frames, 0.0), fresh) and torch.allclose(mix(fresh, frames, 1.0), frames)
    # a per-sample share: sample 0 plain, sample 1 all flowing
    both = mix(fresh[:2], frames[:2], torch.tensor([0.0, 1.0]))
    assert torch.equal(both[0], fresh[0]) and torch.allclose(both[1], frames[1])


def test_the_field_moves_by_the_velocity_in_quarter_pixels_and_stands_still_without_one():
    gen = torch.Generator().manual_seed(1)
    field = noise_field(2, 3, 8, 8, gen)
    still = field_frames(field, torch.zeros(2, 2), torch.zeros(2, 2), 4)
    assert all(torch.equal(still[:, :, t], still[:, :, 0]) for t in range(4))
    assert torch.allclose(still[:, :, 0], _summed_down(field), atol=1e-6)
    # one latent pixel right per frame (1/8 of the width), half a pixel up (1/16 of the height)
    velocity = torch.tensor([[1 / 8, -1 / 16]] * 2)
    moved = field_frames(field, torch.zeros(2, 2), velocity, 5)
    for t in range(5):
        shift = (round(-t * UPSCALE / 2), t * UPSCALE)  # field pixels: rows (up is negative), columns
        expect = _summed_down(torch.roll(field, shift, dims=(-2, -1)))
        assert torch.allclose(moved[:, :, t], expect, atol=1e-6), t
    # frame 2 has moved exactly one latent row up and two columns right
    assert torch.allclose(moved[:, :, 2], torch.roll(moved[:, :, 0], (-1, 2), dims=(-2, -1)), atol=1e-6)


def test_training_with_flowing_noise_writes_a_folder_that_samples_on_plain_noise(tmp_path, monkeypatch):
    """`train-default --noise-flow A` trains teacher and distillation on flowing noise (every
    teacher step and trajectory batch draws it); the folder records it and samples on plain noise."""
    import json

    from ltc_stream.cli import main
    from ltc_stream.models.default.training import distil, teacher
    from ltc_stream.models.default.training.config import TrainConfig

    calls = []
    real = teacher.flowing_training_noise

    def counting(model, fresh, tokens, top, gen):
        calls.append(top)
        return real(model, fresh, tokens, top, gen)

    for module in (teacher, distil):
        monkeypatch.setattr(module, "flowing_training_noise", counting)
    out = tmp_path / "flow"
    assert main(["train-default", "--quick", "--text-attributes", "--text-velocity", "--noise-flow", "0.7",
                 "--output", str(out)]) == 0
    meta = json.loads((out / "ltc_model.json").read_text())
    assert meta["train"]["noise_flow"] == 0.7 and "noise_flow" not in meta["sampling"]
    cfg = TrainConfig.quick()
    trajectory_batches = max(1, cfg.distil_trajectories // cfg.distil_batch)
    assert calls == [0.7] * (cfg.teacher_steps + trajectory_batches)  # every teacher step and trajectory batch
    model = model_module.load_default(out, device="cpu")
    chunk = model.generate_chunk(model.new_stream(0), model.encode_prompt("a red circle moving left on a blue background"),
                                 ltc=False)
    assert chunk.frames.shape[0] == model.frames_per_chunk
