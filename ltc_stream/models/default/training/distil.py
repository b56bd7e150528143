"""Trajectory distillation: the student, initialised from the teacher, learns in `student_steps`
Euler steps the teacher's classifier-free-guided fine-step ODE solution."""
from __future__ import annotations

import copy

import torch

from ..networks import Denoiser, NetConfig
from .config import TrainConfig, cosine_lr, progress, scalar, student_sigmas
from .data import augment_context, shift_contexts, split_clip
from .teacher import denoiser_velocity, ema_update, flow_loss, flowing_training_noise


@torch.no_grad()
def teacher_trajectories(teacher: Denoiser, latents, tokens, net: NetConfig, cfg: TrainConfig,
                         shifted: torch.Tensor | None = None):
    """States of the teacher's fine Euler ODE solution at the student's sigmas, from fresh noise.
    `shifted`: colour-shifted contexts (`cfg.context_shift`), so the student learns the teacher's
    answer to a drifted context too."""
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    sig = student_sigmas(cfg.student_steps)
    device = latents.device
    records = []
    n_batches = max(1, cfg.distil_trajectories // cfg.distil_batch)
    for _ in progress(range(n_batches), n_batches, "teacher trajectories"):
        idx = torch.randint(len(latents), (cfg.distil_batch,), generator=gen)
        context, x0 = split_clip(latents[idx], net)
        context = shift_contexts(context, shifted, idx, cfg.context_shift, gen)
        context, keep = augment_context(context, gen, cfg.context_drop)
        x = torch.randn(x0.shape, generator=gen).to(device)
        if cfg.noise_flow:
            x = flowing_training_noise(teacher, x, tokens[idx], cfg.noise_flow, gen)
        states = [x]
        for i in range(cfg.student_steps):
            fine = torch.linspace(float(sig[i]), float(sig[i + 1]), cfg.distil_substeps + 1).to(device)
            for j in range(cfg.distil_substeps):
                sigma = fine[j].expand(len(x))
                v = denoiser_velocity(teacher, x, sigma, tokens[idx], context, keep)
                if cfg.guidance != 1.0:  # guidance distilled into the student: no extra call at run time
                    v_u = denoiser_velocity(teacher, x, sigma, torch.zeros_like(tokens[idx]), context, keep)
                    v = v_u + cfg.guidance * (v - v_u)
                x = x + (fine[j + 1] - fine[j]) * v
            states.append(x)
        records.append((idx, context, keep, torch.stack(states, 1)))
    return records


def train_student(student: Denoiser, records, tokens, cfg: TrainConfig, log: list,
                  masks: torch.Tensor | None = None) -> Denoiser:
    """At student sigma s_i from the teacher state x_i, the target velocity is the chord
    (x_i - x_{i+1}) / (s_i - s_{i+1}): one student Euler step then lands on the teacher's x_{i+1}."""
    gen = torch.Generator().manual_seed(cfg.seed + 4)
    sig = student_sigmas(cfg.student_steps)
    device = tokens.device
    ema = copy.deepcopy(student).requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr * 0.25, weight_decay=0.0)
    for step in progress(range(cfg.distil_steps), cfg.distil_steps, f"distil to {cfg.student_steps} steps"):
        cosine_lr(opt, step, cfg.distil_steps, cfg.lr * 0.25)
        idx, context, keep, states = records[int(torch.randint(len(records), (1,), generator=gen))]
        i = torch.randint(cfg.student_steps, (len(idx),), generator=gen)
        rows = torch.arange(len(idx))
        x_i, x_next = states[rows, i], states[rows, i + 1]
        s_i, s_next = sig[i].to(device), sig[i + 1].to(device)
        target = (x_i - x_next) / (s_i - s_next).view(-1, 1, 1, 1, 1)
        v = denoiser_velocity(student, x_i, s_i, tokens[idx], context, keep)
        loss = flow_loss(v, target, masks[idx] if masks is not None else None, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        ema_update(ema, student, 0.0 if step < 50 else 0.99)
        log.append(("distil", step, scalar(loss)))
    return ema
