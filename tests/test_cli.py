"""The CLI's contract: every listed command imports and has --help; user errors are one line."""
import json
import subprocess
import sys

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
    out = run_cli(name, "--help")
    assert out.returncode == 0, out.stderr
    assert "usage: ltc-stream " + name in out.stdout


def test_random_weight_models_refuse_to_run_without_the_flag():
    out = run_cli("bench", "--model", "wan-causal-1.3b", "--device", "cpu")
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
