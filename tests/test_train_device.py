"""train-default's stages keep every tensor on the training device.

The data and the random draws are made on the CPU and moved to the networks' device as they are
used. A draw left on the CPU works on a CPU-only machine and fails on a GPU; PyTorch's 'meta'
device shows it here: a CPU tensor meeting a meta one raises, as it would meeting a CUDA one.
Each stage runs a couple of steps with the networks and the data on meta, with every option of the
packaged model's recipe that adds tensors of its own (attribute pooling, velocity head, motion
convolutions, output FiLM, colour-shifted contexts, cross-attention dropout, object weights).
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from ltc_stream.models.default.networks import Autoencoder, Denoiser, NetConfig
from ltc_stream.models.default.training.attributes import fit_velocity_head, freeze_attributes, train_attributes
from ltc_stream.models.default.training.autoencoder import fit_autoencoder
from ltc_stream.models.default.training.config import TrainConfig
from ltc_stream.models.default.training.data import encode_clips
from ltc_stream.models.default.training.distil import teacher_trajectories, train_student
from ltc_stream.models.default.training.teacher import train_teacher
from ltc_stream.models.default.world import ATTRIBUTES

META = torch.device("meta")


def _net() -> NetConfig:
    return NetConfig(height=32, width=32, ae_widths=(8, 8, 16), width0=16, width1=16, blocks0=1, blocks1=1, cond_dim=32,
                     text_queries=2, frames_per_chunk=4, cross_attn=True,
                     attribute_classes=tuple(len(c) for c in ATTRIBUTES.values()), text_velocity=True,
                     motion_conv=True, adaptive_output=True)


def _cfg() -> TrainConfig:
    return TrainConfig(clips=6, ae_steps=2, ae_batch=2, teacher_steps=2, teacher_batch=4, distil_trajectories=4,
                       distil_substeps=2, distil_steps=2, distil_batch=4, attribute_steps=2, attribute_batch=4,
                       cross_attn_drop=0.5, context_shift=0.5, object_weight=8.0)


def test_every_training_stage_keeps_its_tensors_on_the_training_device():
    net, cfg = _net(), _cfg()
    n, frames_total = cfg.clips, net.context_frames + net.frames_per_chunk
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(rng.integers(0, 256, (n, frames_total, net.height, net.width, 3), dtype=np.uint8))
    data = {"frames": frames}  # the rendered clips stay on the CPU, as in train()
    tokens = torch.zeros(n, net.max_tokens, 384, device=META)
    attributes = torch.zeros(n, len(ATTRIBUTES), dtype=torch.long, device=META)
    velocities = torch.zeros(n, 2, device=META)
    masks = torch.zeros(n, frames_total, net.height // 8, net.width // 8, device=META)
    log: list = []

    ae = Autoencoder(net).to(META)
    fit_autoencoder(ae, frames.flatten(0, 1), ae.parameters(), cfg.ae_steps, cfg.lr, cfg.ae_batch, 1, log, "ae", "ae")
    latents = encode_clips(ae.eval(), data)
    assert latents.device == META and ae.latent_scale.device == META

    teacher = Denoiser(net).to(META)
    train_attributes(teacher, tokens, attributes, cfg, log)
    fit_velocity_head(teacher, tokens, velocities, steps=2)
    shifted = torch.zeros(n, net.latent_channels, net.context_frames, net.height // 8, net.width // 8, device=META)
    chunk_masks = masks[:, net.context_frames:]
    teacher = train_teacher(freeze_attributes(teacher), latents, tokens, net, cfg, log, masks=chunk_masks,
                            shifted=shifted)
    records = teacher_trajectories(teacher, latents, tokens, net, cfg, shifted)
    assert records and all(states.device == META for *_, states in records)
    student = train_student(freeze_attributes(copy.deepcopy(teacher).requires_grad_(True)), records, tokens, cfg, log,
                            masks=chunk_masks)
    assert next(student.parameters()).device == META
    assert {r[0] for r in log} == {"ae", "attributes", "teacher", "distil"}


def test_flowing_noise_reaches_the_training_device(monkeypatch):
    """With --noise-flow, teacher samples and distillation trajectories mix in noise moved on the
    host (its rolls are whole pixels chosen there) and brought to the device. The velocity is read
    on the host here (a meta tensor has no values to copy); the rest runs on meta."""
    net, cfg = _net(), _cfg()
    cfg.noise_flow = 1.0
    n = cfg.clips
    tokens = torch.zeros(n, net.max_tokens, 384, device=META)
    latents = torch.zeros(n, net.latent_channels, net.context_frames + net.frames_per_chunk, net.height // 8,
                          net.width // 8, device=META)
    monkeypatch.setattr(Denoiser, "grid_velocity", lambda self, tok, h, w, features=None: torch.full((len(tok), 2), 0.1))
    log: list = []
    teacher = freeze_attributes(Denoiser(net).to(META))
    teacher = train_teacher(teacher, latents, tokens, net, cfg, log)
    records = teacher_trajectories(teacher, latents, tokens, net, cfg)
    assert records and all(states.device == META for *_, states in records)
    assert {r[0] for r in log} == {"teacher"}
