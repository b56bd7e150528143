"""A model folder as training writes and reads it: weights, ltc_model.json, the loss log and its
curves, and which finished stages a resumed run can reuse."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ....errors import ConfigError
from ..model import READER_FILE, SEAM_ANCHOR, train_reader_command
from ..networks import Autoencoder, Denoiser, NetConfig
from .config import TrainConfig, student_sigmas


# loss_log.npy's first column indexes this ("decoder": a removed stage's, kept so older logs read right)
LOG_STAGES = ("ae", "teacher", "distil", "attributes", "decoder", "reader")


def save_loss_curves(log: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [s for s in LOG_STAGES if any(r[0] == s for r in log)]
    fig, axes = plt.subplots(1, len(stages), figsize=(4.5 * len(stages), 3.2), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        steps = np.array([r[1] for r in log if r[0] == stage])
        losses = np.array([r[2] for r in log if r[0] == stage])
        ax.plot(steps, losses, alpha=0.3, lw=0.8)
        k = max(1, len(losses) // 50)
        if len(losses) >= k:
            smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1:], smooth, lw=1.5)
        ax.set_yscale("log")
        ax.set_title(stage)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    np.save(path.with_name("loss_log.npy"),
            np.array([(LOG_STAGES.index(s), st, l) for s, st, l in log], dtype=np.float64).reshape(-1, 3))


def load_loss_log(out: Path, stages: tuple[str, ...]) -> list:
    path = out / "loss_log.npy"
    if not path.is_file():
        return []
    return [(LOG_STAGES[int(s)], int(st), float(l)) for s, st, l in np.load(path) if LOG_STAGES[int(s)] in stages]


def save_folder(out: Path, net: NetConfig, ae: Autoencoder, teacher: Denoiser | None, student: Denoiser | None,
                cfg: TrainConfig, stage: str, extra: dict | None = None) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    def tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}

    save_file(tensors(ae), str(out / "autoencoder.safetensors"))
    if teacher is not None:
        save_file(tensors(teacher), str(out / "teacher.safetensors"))
    if student is not None:
        save_file(tensors(student), str(out / "student.safetensors"))
    meta = {
        "format": "ltc-stream-default/1",
        "stage": stage,
        "net": net.to_dict(),
        "fps": 16,
        "student_steps": cfg.student_steps,
        "student_sigmas": student_sigmas(cfg.student_steps).tolist(),
        "train": cfg.__dict__,
        # plain noise even for a folder trained with flowing noise: the networks measured sampled
        # best on plain noise (git tag lab-2026-11-27's model card, "Flowing noise")
        "sampling": {"sampler": "euler", "seam_anchor": SEAM_ANCHOR},  # the student is distilled onto Euler steps
        **(extra or {}),
    }
    (out / "ltc_model.json").write_text(json.dumps(meta, indent=2) + "\n")
    if stage == "distilled" and (out / READER_FILE).is_file():
        print(f"[train-default] {out / READER_FILE} was trained for the previous weights: reader guidance is off "
              f"until '{train_reader_command(out)}' trains it again")


FOLDER_STAGES = ("ae", "teacher", "distilled")


_AE_NET_KEYS = ("height", "width", "latent_channels", "ae_widths")


_TEACHER_LOSS_KEYS = ("text_dropout", "context_drop", "object_weight", "cross_attn_drop", "context_shift", "noise_flow")


# folders written before a key existed were trained with this value
_LOSS_KEYS_ADDED = {"cross_attn_drop": 0.0, "context_shift": 0.0, "noise_flow": 0.0}


def same_autoencoder(meta: dict, cfg: TrainConfig, net: NetConfig) -> bool:
    """Whether the autoencoder described by `meta` (a folder's ltc_model.json) was trained on the
    same data with the same settings as `cfg` and `net` would train it."""
    saved_net, saved_cfg = meta.get("net", {}), meta.get("train", {})
    current = json.loads(json.dumps(net.to_dict()))
    return (all(saved_net.get(k) == current[k] for k in _AE_NET_KEYS)
            and all(saved_cfg.get(k) == getattr(cfg, k) for k in ("seed", "clips", "ae_steps", "ae_batch", "lr")))


def resumable_stage(out: Path, cfg: TrainConfig, net: NetConfig) -> str | None:
    """The last finished stage in `out` that can be reused: the teacher (and, before it, the
    autoencoder) when everything up to it was trained with the same network and settings; the
    autoencoder alone when only the denoiser changed. None: everything is retrained."""
    meta_path = out / "ltc_model.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    saved_net, saved_cfg = meta.get("net", {}), meta.get("train", {})
    if not same_autoencoder(meta, cfg, net) or meta.get("stage") not in FOLDER_STAGES:
        return None
    same_net = NetConfig.from_dict(saved_net) == net and saved_cfg.get("teacher_batch") == cfg.teacher_batch
    saved_steps = saved_cfg.get("teacher_steps")
    if same_net and meta["stage"] != "ae" and isinstance(saved_steps, int) and saved_steps < cfg.teacher_steps:
        return "teacher-partial"  # a teacher trained for fewer steps: train it on
    # a finished teacher is reused only if its loss was the same; one trained for fewer steps is
    # trained on (above) with whatever the settings are now, which ltc_model.json then records
    same_loss = all(saved_cfg.get(k, _LOSS_KEYS_ADDED.get(k)) == getattr(cfg, k) for k in _TEACHER_LOSS_KEYS)
    same_teacher = same_net and saved_steps == cfg.teacher_steps and same_loss
    return meta["stage"] if same_teacher else "ae"


def saved_teacher_steps(out: Path) -> int:
    return int(json.loads((out / "ltc_model.json").read_text())["train"]["teacher_steps"])


def load_into(module: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    module.load_state_dict(load_file(str(path)))


def init_teacher_from(teacher: Denoiser, folder: Path) -> tuple[int, list[str]]:
    """Copy every tensor of `folder`'s teacher whose name and shape match (growing a network:
    new modules keep their initialisation, zero-initialised outputs make them start as the
    identity). Returns (tensors copied, names of the tensors left new)."""
    from safetensors.torch import load_file

    source = load_file(str(folder / "teacher.safetensors"))
    own = teacher.state_dict()
    copied = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    teacher.load_state_dict(copied, strict=False)
    return len(copied), [k for k in own if k not in copied]


def trained_folder(out: Path, option: str, threads: int) -> tuple[dict, NetConfig, "TrainConfig", Autoencoder]:
    """A trained folder's ltc_model.json, network and training settings, and its autoencoder, for the
    options that add to a trained model (`option` names it in the error)."""
    meta_path = out / "ltc_model.json"
    if not meta_path.is_file() or not (out / "autoencoder.safetensors").is_file():
        raise ConfigError(f"{option}: {out} is not a trained default-model folder (no ltc_model.json and autoencoder)")
    meta = json.loads(meta_path.read_text())
    torch.set_num_threads(threads)
    net = NetConfig.from_dict(meta["net"])
    cfg = TrainConfig(**{k: v for k, v in meta.get("train", {}).items() if k in TrainConfig.__dataclass_fields__})
    ae = Autoencoder(net)
    load_into(ae, out / "autoencoder.safetensors")
    return meta, net, cfg, ae


def finish_folder_stage(out: Path, meta: dict, stage: str, record: dict, log: list) -> dict:
    """Finish a stage run on a trained folder: adds the first and last 50 losses of `log` to `record`
    (the stage's entry in `meta`), writes `meta` as its ltc_model.json, and its loss log and curves
    with the stage's earlier entries replaced by `log`. Returns `record`."""
    losses = [r[2] for r in log]
    record.update(loss_first_50=float(np.mean(losses[:50])), loss_last_50=float(np.mean(losses[-50:])))
    (out / "ltc_model.json").write_text(json.dumps(meta, indent=2) + "\n")
    earlier = [r for r in load_loss_log(out, LOG_STAGES) if r[0] != stage]
    save_loss_curves(earlier + log, out / "loss_curves.png")
    return record
