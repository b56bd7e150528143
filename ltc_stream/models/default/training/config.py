"""The training recipe's settings (`TrainConfig`, saved as ltc_model.json's `train`) and the small
helpers every training stage shares.

Devices: the data (rendered clips, caption token states) is made on the CPU and every random draw
comes from a CPU generator, so a seed draws the same batches on any device; the networks, the
latents and the token states live on the training device (`train(..., device=)`), and each draw
is moved there as it is used. Boolean masks that decide which rows run (`keep`) stay on the CPU:
indexing a device tensor with them is allowed, and testing them needs no device sync.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch


DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "weights" / "default"


@dataclass
class TrainConfig:
    seed: int = 0
    clips: int = 3000
    ae_steps: int = 1500
    ae_batch: int = 24
    teacher_steps: int = 5000
    teacher_batch: int = 16
    distil_trajectories: int = 768
    distil_substeps: int = 8
    distil_steps: int = 700
    distil_batch: int = 16
    student_steps: int = 4
    text_dropout: float = 0.1  # teacher: share of prompts replaced by the empty prompt (for guidance)
    # share of samples trained without the previous chunk's latents: a stream's first chunk has
    # none, and only these samples make the model draw the scene from the text alone (with
    # context it can copy the colours); 0.15 until the 2026-11-25 retrain, 0.5 since
    context_drop: float = 0.5
    # flow-matching loss weight on latent pixels the objects cover, over the background's 1 (objects
    # are ~8% of the picture: unweighted, the loss barely sees them); 0 until the 2026-11-25 retrain
    object_weight: float = 4.0
    # with NetConfig.attribute_classes: steps x batch of captions for the text adapter's auxiliary
    # classification (before the teacher; it is then frozen)
    attribute_steps: int = 1500
    attribute_batch: int = 64
    # teacher: share of samples whose token cross-attention sees the empty prompt, so the FiLM path
    # (pooled text, attributes) learns to carry the prompt too; 0 until the 2026-11-26 retrain
    cross_attn_drop: float = 0.0
    # teacher and distillation: share of samples with context whose context frames have their colours
    # shifted (one random RGB offset per clip, up to CONTEXT_SHIFT_LEVELS) while the chunk to draw keeps
    # the true ones. A stream's own context drifts (background error 20 -> 25 levels per channel over
    # four chunks, model card): the model should take the colours from the prompt, not copy the drift.
    # 0 (off) until a run shows it helps
    context_shift: float = 0.0
    # flowing noise (`noise.py`): the largest share `a` of a sample's noise that is one field moving
    # along the velocity its prompt names (each teacher sample and distillation trajectory draws its
    # own a, uniform in [0, noise_flow], so sampling can choose one); the noise then moves the way the
    # picture should. Needs NetConfig.text_velocity. 0 (off) by default; the packaged network's last
    # 2500 teacher steps used 1 (model card)
    noise_flow: float = 0.0
    guidance: float = 5.0  # distillation targets follow the teacher's classifier-free-guided ODE
    lr: float = 2e-3
    threads: int = 2

    @classmethod
    def quick(cls) -> "TrainConfig":
        return cls(clips=24, ae_steps=60, ae_batch=8, teacher_steps=30, teacher_batch=4,
                   distil_trajectories=8, distil_substeps=2, distil_steps=20, distil_batch=4, attribute_steps=20)


CONTEXT_SHIFT_LEVELS = 24.0  # largest colour offset per channel (0-255 levels) of a shifted context


def student_sigmas(steps: int) -> torch.Tensor:
    """The distilled model's own schedule: uniform in sigma from 1 to 0."""
    return torch.linspace(1.0, 0.0, steps + 1)


def progress(iterable, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, dynamic_ncols=True, mininterval=2.0)


def cosine_lr(opt, step: int, total: int, base: float, warmup: int = 50):
    warmup = max(1, min(warmup, total // 5))
    lr = base * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / total))
    for group in opt.param_groups:
        group["lr"] = lr


def scalar(t: torch.Tensor) -> float:
    """A logged loss as a float; NaN on PyTorch's 'meta' device, where the tests run the stages to
    check that every tensor is made on the model's device (a CPU one meeting a meta one raises)."""
    return float("nan") if t.device.type == "meta" else t.item()
