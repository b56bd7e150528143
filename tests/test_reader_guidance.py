"""Reader guidance: the colour reader's labels, the guidance step, and the folder stage that trains it."""
import dataclasses
import json
import re
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ltc_stream.errors import ConfigError
from ltc_stream.models import load_model
from ltc_stream.models.default.model import READER_GUIDANCE, READER_SEAM_ANCHOR, load_default, train_reader_command
from ltc_stream.models.default.networks import Denoiser, NetConfig
from ltc_stream.models.default.reader import IGNORE, ColourReader, cell_labels, guide_x0
from ltc_stream.models.default.train import train
from ltc_stream.models.default.training.config import TrainConfig
from ltc_stream.models.default.training.reader import train_reader_folder
from ltc_stream.models.default.world import ATTRIBUTES, COLOURS, Scene, SceneObject, object_coverage, sample_scene

PROMPT = "a red ball moving left on a blue background"


@pytest.fixture(scope="module")
def attribute_folder(tmp_path_factory):
    """A quick trained folder whose denoiser has the attribute pooling (random, as grown) in both its
    teacher and student files: what reader guidance needs to read the prompt's colours."""
    folder = tmp_path_factory.mktemp("reader-default")
    net = NetConfig(height=64, width=64, ae_widths=(8, 8, 16), width0=16, width1=16, blocks0=1, blocks1=1,
                    cond_dim=32, text_queries=2, frames_per_chunk=4, cross_attn=True)
    train(TrainConfig.quick(), net, folder)
    grown_net = dataclasses.replace(net, attribute_classes=tuple(len(c) for c in ATTRIBUTES.values()))
    for name in ("teacher.safetensors", "student.safetensors"):
        den = Denoiser(grown_net)
        den.load_state_dict(load_file(str(folder / name)), strict=False)
        save_file({k: v.contiguous() for k, v in den.state_dict().items()}, str(folder / name))
    meta = json.loads((folder / "ltc_model.json").read_text())
    meta["net"] = grown_net.to_dict()
    (folder / "ltc_model.json").write_text(json.dumps(meta))
    return folder


def test_cell_labels_mark_covered_cells_as_object_and_clear_cells_as_background():
    scene = Scene(objects=[SceneObject(shape="square", colour="red", motion="spinning", speed="normal", x0=0.5, y0=0.5,
                                       size=0.2, phase=0.0)], background="plain", bg_colours=("blue",))
    coverage = object_coverage(scene, 0, 3, 64, 64)
    colour, obj = cell_labels(coverage, scene)
    share = coverage.reshape(3, 8, 8, 8, 8).mean(axis=(2, 4))  # each 8x8 cell's covered share, by hand
    names = list(COLOURS)
    assert obj.shape == colour.shape == (3, 8, 8)
    assert ((share > 0.5) == (obj.numpy() == 1)).all()
    assert ((share > 0.15) & (share <= 0.5) == (obj.numpy() == -1)).all()
    assert (colour.numpy()[share > 0.5] == names.index("red")).all()
    assert (colour.numpy()[share < 0.02] == names.index("blue")).all()
    assert (colour.numpy()[(share >= 0.02) & (share <= 0.5)] == IGNORE).all()
    assert (share > 0.5).any() and (share < 0.02).any()

    striped = sample_scene(3)
    striped.background, striped.objects = "stripes", striped.objects[:1]
    coverage = object_coverage(striped, 0, 2, 64, 64)
    colour, _ = cell_labels(coverage, striped)
    uncovered = coverage.reshape(2, 8, 8, 8, 8).mean(axis=(2, 4)) < 0.02
    assert uncovered.any() and (colour.numpy()[uncovered] == IGNORE).all()  # a striped background is not one colour


def test_guide_x0_is_one_gradient_step_down_the_prompts_colour_cross_entropy():
    torch.manual_seed(0)
    reader = ColourReader(4, width=8).double().eval()
    x0 = torch.randn(2, 4, 3, 6, 6, dtype=torch.double)
    obj_p = torch.softmax(torch.randn(2, len(COLOURS), dtype=torch.double), -1)
    bg_p = torch.softmax(torch.randn(2, len(COLOURS), dtype=torch.double), -1)

    @torch.no_grad()
    def loss(x):  # written out again: object colour where the reader sees object, background colour elsewhere
        colour_logits, object_logit = reader(x)
        logp = torch.log_softmax(colour_logits, 1)
        total = 0.0
        for b in range(2):
            for t in range(3):
                for i in range(6):
                    for j in range(6):
                        p = obj_p[b] if object_logit[b, t, i, j] > 0 else bg_p[b]
                        total = total - float((p * logp[b, :, t, i, j]).sum())
        return total

    eta = 1e-3
    moved = guide_x0(reader, x0, obj_p, bg_p, eta)
    grad = (x0 - moved) / eta
    for seed in range(3):
        d = torch.randn(x0.shape, dtype=torch.double, generator=torch.Generator().manual_seed(seed))
        eps = 1e-5
        numeric = (loss(x0 + eps * d) - loss(x0 - eps * d)) / (2 * eps)
        assert abs(numeric - float((grad * d).sum())) < 1e-4 * max(1.0, abs(numeric))
    assert loss(moved) < loss(x0)
    assert torch.equal(guide_x0(reader, x0, obj_p, bg_p, 0.0), x0)


def test_train_reader_adds_a_reader_and_turns_guidance_on_leaving_the_model(attribute_folder, tmp_path, capsys):
    folder = tmp_path / "r"
    shutil.copytree(attribute_folder, folder)
    before = {p.name: p.read_bytes() for p in folder.glob("*.safetensors")}
    plain = load_model(str(folder), device="cpu")
    assert plain.reader_guidance == 0 and plain.reader is None
    with pytest.raises(ConfigError, match=re.escape(train_reader_command(folder))):  # a command to run as it stands
        load_default(folder, device="cpu", options={"reader_guidance": 0.5})

    stale = folder / "ltc_weights.json"
    stale.write_text("{}")  # stands for a calibration made before the reader existed
    capsys.readouterr()
    record = train_reader_folder(folder, 20)
    assert f"LTC stays off until 'ltc-stream eval-default --model {folder} --calibrate" in capsys.readouterr().out
    stale.unlink()
    assert {p.name: p.read_bytes() for p in folder.glob("*.safetensors") if p.name in before} == before
    meta = json.loads((folder / "ltc_model.json").read_text())
    assert meta["reader"]["steps"] == 20 == record["steps"]
    assert meta["sampling"]["reader_guidance"] == READER_GUIDANCE
    assert meta["sampling"]["seam_anchor"] == max(READER_SEAM_ANCHOR, plain.seam_anchor)
    assert set(record["held_out_accuracy"]["denoiser_estimates"]) == {"background_colour", "object_colour", "object"}

    guided = load_model(str(folder), device="cpu")
    off = load_default(folder, device="cpu", options={"reader_guidance": 0.0, "seam_anchor": plain.seam_anchor})
    assert guided.reader_guidance == READER_GUIDANCE
    assert off.reader is None
    assert guided.ltc_key() != off.ltc_key() == plain.ltc_key()
    emb = guided.encode_prompt(PROMPT)
    frames = {}
    for name, model in (("guided", guided), ("off", off), ("plain", plain)):
        state = model.new_stream(4)
        frames[name] = np.concatenate([model.generate_chunk(state, emb, ltc=False).frames for _ in range(2)])
    assert np.array_equal(frames["off"], frames["plain"])
    assert not np.array_equal(frames["guided"], frames["off"])
    for bad in (-0.1, 2.5, float("nan")):
        with pytest.raises(ConfigError, match="reader_guidance"):
            load_default(folder, device="cpu", options={"reader_guidance": bad})


def test_reader_guidance_needs_the_attribute_pooling_and_the_stage_a_trained_folder(attribute_folder, tmp_path):
    folder = tmp_path / "no-attributes"
    shutil.copytree(attribute_folder, folder)
    meta = json.loads((folder / "ltc_model.json").read_text())
    meta["net"]["attribute_classes"] = []
    (folder / "ltc_model.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="--text-attributes"):
        train_reader_folder(folder, 5)
    with pytest.raises(ConfigError, match="not a trained default-model folder"):
        train_reader_folder(tmp_path / "nothing", 5)


def test_retraining_a_folder_turns_off_the_guidance_its_old_reader_was_for(attribute_folder, tmp_path, capsys):
    folder = tmp_path / "again"
    shutil.copytree(attribute_folder, folder)
    train_reader_folder(folder, 5)
    assert load_model(str(folder), device="cpu").reader is not None
    net = NetConfig.from_dict(json.loads((folder / "ltc_model.json").read_text())["net"])
    train(dataclasses.replace(TrainConfig.quick(), teacher_steps=4, distil_steps=4), net, folder)
    assert "reader guidance is off until" in capsys.readouterr().out
    again = load_model(str(folder), device="cpu")
    assert again.reader is None



def test_one_training_run_with_reader_makes_a_folder_that_samples_with_guidance(tmp_path):
    """`train-default --with-reader STEPS`: the network, then its reader, in one command (the shipped
    design's retrain); the folder then loads with reader guidance on and names its sampler."""
    import subprocess
    import sys

    out = tmp_path / "m"
    run = subprocess.run([sys.executable, "-m", "ltc_stream", "train-default", "--quick", "--text-attributes",
                          "--with-reader", "3", "--output", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    meta = json.loads((out / "ltc_model.json").read_text())
    assert (out / "reader.safetensors").is_file()
    assert meta["sampling"]["sampler"] == "euler" and meta["sampling"]["reader_guidance"] > 0
    model = load_default(out, device="cpu")
    assert model.reader_guidance == meta["sampling"]["reader_guidance"]
    bad = subprocess.run([sys.executable, "-m", "ltc_stream", "train-default", "--quick", "--with-reader", "3",
                          "--output", str(tmp_path / "n")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--text-attributes" in bad.stderr and not (tmp_path / "n").exists()
