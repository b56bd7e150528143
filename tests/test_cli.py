"""The CLI's contract: every listed command imports and has --help; user errors are one line."""
import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ltc_stream import cli
from ltc_stream.device import resolve_device
from ltc_stream.errors import ConfigError, ModelNotFoundError
from ltc_stream.models import load_model


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "ltc_stream", *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_command():
    out = run_cli("--help")
    assert out.returncode == 0
    for name in cli.COMMANDS:
        assert name in out.stdout
    for gone in ("bench-kernels", "bench-e2e"):  # one way to run each benchmark: bench SUBCOMMAND
        assert gone not in out.stdout


def test_bench_is_one_command_with_subcommands():
    out = run_cli("bench", "--help")
    assert out.returncode == 0
    for sub in ("model", "kernels", "e2e", "load"):
        assert f"bench {sub}" in out.stdout
    bad = run_cli("bench", "speed")
    assert bad.returncode == 2 and "unknown subcommand 'speed' (choose from model, kernels, e2e, load)" in bad.stderr
    assert run_cli("bench").returncode == 2  # a group alone is not a command
    old = run_cli("bench-kernels")
    assert old.returncode == 2 and "unknown command 'bench-kernels'" in old.stderr


def test_unknown_command_is_one_clear_line():
    out = run_cli("no-such-command")
    assert out.returncode == 2
    assert "unknown command 'no-such-command'" in out.stderr
    assert "Traceback" not in out.stderr


def test_unknown_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="neither a built-in name"):
        load_model(str(tmp_path / "missing"))
    with pytest.raises(ModelNotFoundError, match="neither ltc_model.json"):
        load_model(str(tmp_path))


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("tpu")


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_has_working_help(name):
    out = run_cli(*name.split(), "--help")
    assert out.returncode == 0, out.stderr
    assert "usage: ltc-stream " + name in out.stdout


RESEARCH_KNOBS = ("--seam-anchor", "--reader-guidance", "--noise-candidates", "--motion-guidance",
                  "--motion-projection", "--noise-flow")


@pytest.mark.parametrize("name", ["serve", "render", "bench model", "bench e2e", "calibrate"])
def test_commands_that_run_a_model_share_the_operator_options_and_no_research_knobs(name):
    out = subprocess.run([sys.executable, "-m", "ltc_stream", *name.split(), "--help"], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "COLUMNS": "100"})
    assert out.returncode == 0, out.stderr
    for option in ("--model ", "--size WxH", "--steps", "--dtype", "--decoder", "--device", "--model-option KEY=VALUE"):
        assert option in out.stdout, option
    for knob in RESEARCH_KNOBS:
        assert knob not in out.stdout


def test_serve_help_fits_one_screen_in_groups():
    out = subprocess.run([sys.executable, "-m", "ltc_stream", "serve", "--help"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "COLUMNS": "100"})
    lines = out.stdout.splitlines()
    assert out.returncode == 0 and len(lines) <= 40, out.stdout
    assert max(len(line) for line in lines) <= 100
    for group in ("model:", "LTC:", "network and security:", "sessions:"):
        assert group in lines
    assert "--no-ltc" in out.stdout and "--fps" in out.stdout and "--port" in out.stdout


@pytest.mark.parametrize("args, message", [
    (("--model-option", "no_such_key=1"), "unknown model option(s) for the default model: no_such_key (declared: "),
    (("--model-option", "novalue"), "--model-option wants KEY=VALUE, got 'novalue'"),
    (("--size", "64x64"), "the default model draws at the size its weights were trained at"),
    (("--dtype", "float16"), "the default model runs in float32 only, not float16"),
    (("--decoder", "tiny"), "the default model has one decoder"),
    (("--steps", "0"), "steps must be at least 1, got 0"),
    (("--size", "64"), "argument --size: wants WIDTHxHEIGHT in pixels (e.g. 832x480), got '64'"),
    (("--dtype", "fp8"), "argument --dtype: invalid choice: 'fp8'"),
    (("--seam-anchor", "0.5"), "unrecognized arguments: --seam-anchor 0.5"),
])
def test_render_refuses_bad_model_options_in_one_line(tmp_path, args, message):
    out = subprocess.run([sys.executable, "-m", "ltc_stream", "render", "--prompt", "a red ball", "--seconds", "1",
                          "--output", "x.mp4", "--device", "cpu", *args],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len([line for line in out.stderr.splitlines() if "error" in line]) == 1
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize("args, message", [
    (("--model-option", "no_such_key=1"), "unknown model option(s) for the default model: no_such_key"),
    (("--size", "64x64"), "the default model draws at the size its weights were trained at"),
])
def test_serve_refuses_bad_model_options_before_serving(args, message):
    out = run_cli("serve", "--port", "0", "--device", "cpu", *args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr and "serving" not in out.stdout


def test_size_is_width_by_height():
    parser = argparse.ArgumentParser()
    cli.add_model_arguments(parser)
    args = parser.parse_args(["--size", "832x480", "--model-option", "shift=3", "--model-option", "sampler=euler",
                              "--dtype", "bfloat16"])
    settings = cli.model_settings(args)
    assert (settings["width"], settings["height"]) == (832, 480)
    assert settings["options"] == {"shift": "3", "sampler": "euler"} and settings["dtype"] == "bfloat16"
    assert cli.model_settings(parser.parse_args([]))["dtype"] is None  # auto: the loader's choice per device


def _pipeline_folder(path, cls):
    path.mkdir()
    (path / "model_index.json").write_text(json.dumps({"_class_name": cls}))
    return path


def test_model_options_are_checked_against_the_family_before_loading(tmp_path, monkeypatch):
    """Wan and AnimateDiff folders: an unknown key names the family's declared keys, a bad value is
    refused, and valid options reach the family's loader typed, beside --size, --dtype and --decoder."""
    wan = _pipeline_folder(tmp_path / "wan", "WanPipeline")
    with pytest.raises(ConfigError, match=r"unknown model option\(s\) for causal Wan: colour \(declared: .*window_frames"):
        load_model(str(wan), options={"colour": "red"})
    with pytest.raises(ConfigError, match="window_frames=0 is below its minimum 1"):
        load_model(str(wan), options={"window_frames": "0"})
    with pytest.raises(ConfigError, match=r"for AnimateDiff: window_frames \(declared: .*overlap"):
        load_model(str(_pipeline_folder(tmp_path / "ad", "AnimateDiffPipeline")), options={"window_frames": "3"})

    seen = {}
    from ltc_stream.models import adapters

    monkeypatch.setattr(adapters, "load_diffusers_folder", lambda path, meta, device, **kw: seen.update(kw) or "model")
    assert load_model(str(wan), device="cpu", height=480, width=832, dtype="bfloat16", decoder="tiny",
                      options={"window_frames": "6", "recache": "off", "shift": "3.5"}) == "model"
    assert seen == {"height": 480, "width": 832, "dtype": "bfloat16", "decoder": "tiny", "window_frames": 6,
                    "recache": False, "shift": 3.5}


def test_default_model_options_reach_load_default_typed(monkeypatch):
    """The contract with the default model: the options its module declares (OPTIONS) are checked
    and handed to load_default as `options`, typed."""
    from ltc_stream.models import default
    from ltc_stream.models.base import ModelOption

    monkeypatch.setattr(default, "OPTIONS", {"seam_anchor": ModelOption(float, 0.4, "seam", minimum=0, maximum=1)},
                        raising=False)
    seen = {}
    monkeypatch.setattr(default, "load_default", lambda path=None, device="auto", **kw: seen.update(kw) or "model")
    assert load_model("default", steps=3, options={"seam_anchor": "0.25"}) == "model"
    assert seen == {"steps": 3, "options": {"seam_anchor": 0.25}}
    with pytest.raises(ConfigError, match="seam_anchor=1.5 is above its maximum 1"):
        load_model("default", options={"seam_anchor": "1.5"})


def test_frame_psnr_is_the_analytic_value():
    from ltc_stream.calibrate import frame_psnr

    a = np.full((2, 4, 4, 3), 100, np.uint8)
    assert frame_psnr(a + 1, a) == pytest.approx(20 * np.log10(255))  # MSE 1
    assert frame_psnr(a, a) == float("inf")


def test_calibrate_prints_the_curve_and_saves_the_chosen_tau(tmp_path):
    """On a copy of the packaged default model: tau 0.3 skips one of its 4 steps (the packaged
    weights, calibrated at tau 0.3, skip step 2 at an angle of 0.097 rad), at a PSNR well above
    noise; with --save, the weights go into the folder, which then loads them with the model."""
    from ltc_stream.models.default import PACKAGED

    folder = tmp_path / "model"
    folder.mkdir()
    for f in PACKAGED.iterdir():
        if f.suffix in (".json", ".safetensors") and f.name != "ltc_weights.json":
            shutil.copy(f, folder / f.name)
    assert load_model(str(folder), device="cpu").ltc_weights is None
    common = ["--model", str(folder), "--device", "cpu", "--prompts", "4", "--streams", "1", "--chunks", "1", "--json"]
    out = run_cli("calibrate", *common, "--tau", "0.01", "0.3", timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    none, one = report["curve"]
    assert none["skipped_steps"] == [] and none["model_calls"] == 4 and none["psnr_db"] is None  # identical
    assert one["skipped_steps"] == [2] and one["model_calls"] == 3 and 25 < one["psnr_db"] < 80
    assert not (folder / "ltc_weights.json").exists()  # the curve alone changes nothing
    again = run_cli("calibrate", *common, "--tau", "0.3", "--save", timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout.strip().splitlines()[-1])["curve"] == [one]  # deterministic
    saved = json.loads((folder / "ltc_weights.json").read_text())
    assert [i for i, s in enumerate(saved["skip"]) if s] == [2]
    assert load_model(str(folder), device="cpu").ltc_weights.skipped_steps == [2]  # its key matches the model


def test_calibrate_save_refuses_a_built_in_name_and_several_taus():
    out = run_cli("calibrate", "--model", "default", "--tau", "0.3", "--save")
    assert out.returncode == 2 and "--save writes ltc_weights.json into a model folder" in out.stderr
    out = run_cli("calibrate", "--model", "default", "--tau", "0.1", "0.3", "--save")
    assert out.returncode == 2 and "give one --tau (the curve's choice), got 2" in out.stderr


def test_random_weight_models_refuse_to_run_without_the_flag():
    out = run_cli("bench", "model", "--model", "wan-causal-1.3b", "--device", "cpu")
    assert out.returncode != 0
    assert "--random-weights" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("args, message", [
    (("--guidance", "0.5"), "--guidance must be between 1 and 20"),
    (("--teacher-steps", "0"), "--teacher-steps must be at least 1"),
    (("--distil-trajectories", "0"), "--distil-trajectories must be at least 1"),
    (("--size", "100"), "--size must be a multiple of 8"),
    (("--context-drop", "1.5"), "--context-drop must be between 0 and 1"),
    (("--object-weight", "-1"), "--object-weight must be between 0 and 100"),
    (("--text-velocity",), "--text-velocity reads the prompt through the attribute pooling: add --text-attributes"),
    (("--train-reader", "0"), "--train-reader must be at least 1"),
    (("--train-reader", "5"), "is not a trained default-model folder"),
])
def test_train_default_refuses_bad_settings_in_one_line(tmp_path, args, message):
    out = run_cli("train-default", "--quick", "--output", str(tmp_path / "m"), *args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "m").exists()  # refused before any work


def test_train_default_resume_keeps_the_folders_own_settings(tmp_path):
    """A plain --resume on a folder trained with more teacher steps and other loss settings than
    the defaults reuses its teacher instead of retraining it with the defaults."""
    out = tmp_path / "m"
    first = run_cli("train-default", "--quick", "--output", str(out), "--teacher-steps", "40",
                    "--object-weight", "2", "--context-drop", "0.3", "--cross-attn-drop", "0.2",
                    "--distil-trajectories", "12", "--motion-conv", timeout=300)
    assert first.returncode == 0, first.stderr
    teacher = (out / "teacher.safetensors").read_bytes()
    again = run_cli("train-default", "--quick", "--resume", "--output", str(out), timeout=300)
    assert again.returncode == 0, again.stderr
    assert "resuming after stage 'distilled'" in again.stdout
    assert (out / "teacher.safetensors").read_bytes() == teacher
    saved = json.loads((out / "ltc_model.json").read_text())["train"]
    assert (saved["teacher_steps"], saved["object_weight"], saved["context_drop"], saved["cross_attn_drop"],
            saved["distil_trajectories"]) == (40, 2.0, 0.3, 0.2, 12)
    assert json.loads((out / "ltc_model.json").read_text())["net"]["motion_conv"] is True


@pytest.mark.parametrize("option, message", [("seam_anchor=1.5", "model option seam_anchor=1.5 is above its maximum 1.0"),
                                             ("noise_flow=1", "unknown model option(s) for default: noise_flow")])
def test_eval_default_refuses_a_bad_model_option_in_one_line(tmp_path, option, message):
    out = subprocess.run([sys.executable, "-m", "ltc_stream", "eval-default", "--prompts", "1", "--model-option", option],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("args, message", [
    (("--no-ltc",), "--no-ltc goes with --fidelity-only"),
])
def test_eval_default_refuses_bad_settings_in_one_line(args, message):
    out = run_cli("eval-default", "--prompts", "1", *args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr


def test_model_options_are_validated_against_the_declared_ones():
    from ltc_stream.models.base import ModelOption, parse_model_options, split_option

    declared = {"guidance": ModelOption(float, 0.2, "step size", minimum=0.0, maximum=2.0),
                "sampler": ModelOption(str, "renoise", "sampler", choices=("renoise", "euler")),
                "ema_sink": ModelOption(bool, True, "sink by EMA")}
    assert parse_model_options(declared, {"guidance": "0.5", "ema_sink": "off"}, "m") == {"guidance": 0.5,
                                                                                         "ema_sink": False}
    for given, message in [({"nope": "1"}, "unknown model option.*nope.*declared: ema_sink, guidance, sampler"),
                           ({"guidance": "x"}, "is not a float"), ({"guidance": "3"}, "above its maximum"),
                           ({"guidance": "nan"}, "NaN"), ({"sampler": "ddim"}, "choose from renoise, euler"),
                           ({"ema_sink": "maybe"}, "is not a bool")]:
        with pytest.raises(ConfigError, match=message):
            parse_model_options(declared, given, "m")
    assert split_option("a = b=c") == ("a", "b=c")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        split_option("novalue")
