"""The teacher: rectified-flow matching of the causal denoiser, object-weighted, on plain or flowing
noise (`noise.py`)."""
from __future__ import annotations

import copy

import torch
from torch.nn import functional as F

from ..networks import Denoiser, NetConfig
from ..noise import field_frames, mix, noise_field
from .config import TrainConfig, cosine_lr, progress, scalar
from .data import augment_context, shift_contexts, split_clip


def weighted_mse(v: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, object_weight: float) -> torch.Tensor:
    """Mean squared error over [B, C, T, h, w] with latent pixels weighted 1 + object_weight * mask
    ([B, T, h, w]), normalised by the mean weight so the loss keeps its scale."""
    if mask is None or object_weight == 0:
        return F.mse_loss(v, target)
    weight = 1.0 + object_weight * mask[:, None]
    return ((v - target).square() * weight).mean() / weight.mean()


def flow_loss(v, target, mask, cfg: "TrainConfig") -> torch.Tensor:
    """The teacher's and the student's loss: object-weighted MSE. mask [B, T, h, w]."""
    return weighted_mse(v, target, mask, cfg.object_weight)


def denoiser_velocity(model: Denoiser, x, sigma, tokens, context, keep, cross_keep=None) -> torch.Tensor:
    """Velocity with per-sample context dropping (a zero context plus a zero flag). The two groups
    run as two smaller batches (every layer is per-sample, so this equals running the whole batch
    both ways and selecting, at half the cost). `cross_keep`: see `Denoiser.forward`."""
    if keep.all():
        return model(x, sigma, tokens, context, cross_keep)
    if not keep.any():
        return model(x, sigma, tokens, None, cross_keep)
    sigma = sigma.expand(len(x)) if sigma.ndim == 0 else sigma
    part = (lambda rows: None) if cross_keep is None else (lambda rows: cross_keep[rows])
    out = torch.empty_like(x)
    out[keep] = model(x[keep], sigma[keep], tokens[keep], context[keep], part(keep)).to(out.dtype)
    out[~keep] = model(x[~keep], sigma[~keep], tokens[~keep], None, part(~keep)).to(out.dtype)
    return out


def train_teacher(model: Denoiser, latents, tokens, net: NetConfig, cfg: TrainConfig, log: list,
                  start: int = 0, warm: bool = False, masks: torch.Tensor | None = None,
                  shifted: torch.Tensor | None = None) -> Denoiser:
    """Rectified-flow matching: x_s = (1-s) x0 + s n, target velocity n - x0, s half logit-normal,
    half uniform. With `start` > 0 the model is a teacher already trained for `start` steps: it
    trains on for the remaining `cfg.teacher_steps - start` steps with a fresh warm-up and cosine at
    half the learning rate, its EMA starting from the loaded weights, new batches (the generator is
    seeded by `start`). `warm`: the model starts from trained weights (a grown network), so it also
    trains at half the learning rate. `shifted`: colour-shifted contexts (`cfg.context_shift`)."""
    gen = torch.Generator().manual_seed(cfg.seed + 2 + start)
    ema = copy.deepcopy(model).requires_grad_(False)
    total = cfg.teacher_steps - start
    base_lr = cfg.lr * 0.5 if (warm or start) else cfg.lr
    opt = torch.optim.AdamW(model.parameters(), lr=base_lr, weight_decay=0.01)
    desc = "teacher (flow matching)" if start == 0 else f"teacher (flow matching, steps {start}..{cfg.teacher_steps})"
    for local in progress(range(total), total, desc):
        step = start + local
        cosine_lr(opt, local, total, base_lr)
        idx = torch.randint(len(latents), (cfg.teacher_batch,), generator=gen)
        clean, x0 = split_clip(latents[idx], net)
        clean = shift_contexts(clean, shifted, idx, cfg.context_shift, gen)
        context, keep = augment_context(clean, gen, cfg.context_drop)
        # half logit-normal (detail), half uniform: the high-noise end, where the prompt decides the
        # layout and colours, gets its share of training
        logit_normal = torch.sigmoid(torch.randn(cfg.teacher_batch, generator=gen))
        uniform = torch.rand(cfg.teacher_batch, generator=gen)
        sigma = torch.where(torch.rand(cfg.teacher_batch, generator=gen) < 0.5, logit_normal, uniform).to(x0.device)
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        s = sigma.view(-1, 1, 1, 1, 1)
        x = (1 - s) * x0 + s * noise
        text = tokens[idx]
        drop = (torch.rand(len(idx), generator=gen) < cfg.text_dropout).to(text.device)
        text = torch.where(drop.view(-1, 1, 1), torch.zeros_like(text), text)  # the empty prompt
        cross_keep = None
        if cfg.cross_attn_drop:
            cross_keep = (torch.rand(len(idx), generator=gen) >= cfg.cross_attn_drop).to(x0.device)
        if cfg.noise_flow:  # drawn after everything above, so runs without it draw exactly as before
            noise = flowing_training_noise(model, noise, text, cfg.noise_flow, gen)
            x = (1 - s) * x0 + s * noise
        v = denoiser_velocity(model, x, sigma, text, context, keep, cross_keep)
        loss = flow_loss(v, noise - x0, masks[idx] if masks is not None else None, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema_update(ema, model, 0.0 if step < 100 else 0.995)
        log.append(("teacher", step, scalar(loss)))
    return ema


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - decay)


@torch.no_grad()
def flowing_training_noise(model: Denoiser, fresh: torch.Tensor, tokens: torch.Tensor, top: float,
                           gen: torch.Generator) -> torch.Tensor:
    """`fresh` noise [B, C, T, h, w] mixed with flowing noise (`noise.py`): a field moving along the
    velocity the network reads from each sample's prompt (what sampling will move it by), from a
    random starting position, with a share a drawn uniformly in [0, top] per sample."""
    b, c, t, h, w = fresh.shape
    field = noise_field(b, c, h, w, gen)
    offset = torch.rand(b, 2, generator=gen) * torch.tensor([field.shape[-1], field.shape[-2]], dtype=torch.float32)
    weight = torch.rand(b, generator=gen) * top
    return mix(fresh, field_frames(field, offset, model.grid_velocity(tokens, h, w), t), weight)
