"""`ltc-stream train-default --average FIRST SECOND`: average two default-model folders' networks, parameter by parameter.

Two networks from one training path (a folder, and the same folder trained on) can sample better
averaged than either alone (weight averaging, as in stochastic weight averaging and model soups):
the packaged default model is such an average (its model card says how it was chosen). The folders
must differ in their denoisers only: the same network shape, the same autoencoder (the latents both
denoisers were trained on) and the same text parts. The output is a copy of the first folder (its
colour reader and sampling settings) with the student's and the teacher's weights averaged, and
without LTC's calibration, which was measured for the first folder's weights. The reader is kept, so
reader guidance stays on, but it was trained on the first folder's student: the command says how to
train one for the averaged student, which reads it better.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ....errors import ConfigError, ModelNotFoundError, NonFiniteError
from ..model import LTC_FILE, PACKAGED, _file_digest, read_folder_meta

DENOISER_FILES = ("student.safetensors", "teacher.safetensors")
SHARED_FILES = ("autoencoder.safetensors",)  # must be the same file in both folders


def _average_file(first: Path, second: Path, weight: float) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    a, b = load_file(str(first)), load_file(str(second))
    if a.keys() != b.keys():
        only = sorted(a.keys() ^ b.keys())
        raise ConfigError(f"{first} and {second} hold different networks (parameters in one only: {', '.join(only[:3])})")
    out = {}
    for key, x in a.items():
        y = b[key]
        if x.shape != y.shape or x.dtype != y.dtype:
            raise ConfigError(f"{key}: {tuple(x.shape)} {x.dtype} in {first}, {tuple(y.shape)} {y.dtype} in {second}")
        if not x.is_floating_point():
            if not torch.equal(x, y):
                raise ConfigError(f"{key} (not a float) differs between {first} and {second}: cannot be averaged")
            out[key] = x
            continue
        for path, t in ((first, x), (second, y)):
            if not torch.isfinite(t).all():
                raise NonFiniteError(f"{path}: {key} holds NaN or Inf")
        out[key] = ((1 - weight) * x.double() + weight * y.double()).to(x.dtype)
    return out


def average_folders(first: str | Path, second: str | Path, output: str | Path, weight: float = 0.5) -> dict:
    """Write `output`: `first`'s folder with each denoiser (1 - weight) * first's + weight * second's."""
    from safetensors.torch import save_file

    if not 0 < weight < 1:
        raise ConfigError(f"--average-weight must be between 0 and 1 (exclusive), got {weight}")
    first, second = (PACKAGED if str(f) == "default" else Path(f) for f in (first, second))
    output = Path(output)
    if output.resolve() in (first.resolve(), second.resolve()):
        raise ConfigError(f"--output {output} is one of the folders being averaged: write to a new folder")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(f"--output {output} exists and is not an empty folder")
    (meta, net), (meta2, net2) = read_folder_meta(first), read_folder_meta(second)
    metas, nets = [meta, meta2], [net.to_dict(), net2.to_dict()]  # a setting a file predates reads as its default
    if nets[0] != nets[1]:
        differ = sorted(k for k in nets[0] if nets[0][k] != nets[1].get(k))
        raise ConfigError(f"{first} and {second} are different networks (net settings differ: {', '.join(differ)})")
    for name in SHARED_FILES:
        for f in (first, second):
            if not (f / name).is_file():
                raise ModelNotFoundError(f"{f} lacks {name}")
        if _file_digest(first / name) != _file_digest(second / name):
            raise ConfigError(f"{first} and {second} have different {name}: their denoisers work on different "
                              "latents, so their average means nothing")
    files = [n for n in DENOISER_FILES if (first / n).is_file() and (second / n).is_file()]
    if "student.safetensors" not in files:
        raise ModelNotFoundError(f"both folders need a distilled student.safetensors ({first}, {second})")
    averaged = {n: _average_file(first / n, second / n, weight) for n in files}
    shutil.copytree(first, output, dirs_exist_ok=True)
    for name, state in averaged.items():
        save_file(state, str(output / name))
    for name in set(DENOISER_FILES) - set(files):  # a teacher only one folder has is not the average's
        (output / name).unlink(missing_ok=True)
    (output / LTC_FILE).unlink(missing_ok=True)
    meta["averaged"] = {"first": str(first), "second": str(second), "weight": weight, "files": files,
                        "digests": {str(f): {n: _file_digest(f / n) for n in files} for f in (first, second)},
                        # an average of averages keeps how each part was made
                        **{f"{k}_was": m["averaged"] for k, m in zip(("first", "second"), metas) if "averaged" in m}}
    (output / "ltc_model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta["averaged"]
