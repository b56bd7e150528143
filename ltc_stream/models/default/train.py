"""`ltc-stream train-default`: train and distil the built-in default model, reproducibly by seed.

Stages (each checkpointed into the output folder as it finishes):
1. data      render clips of the procedural world, caption them with paraphrases, embed captions
2. ae        per-frame 8x autoencoder (L1 + MSE on pixels)
3. teacher   flow-matching denoiser, causal on the previous chunk's last latent frames
4. distil    trajectory distillation to `--student-steps` Euler steps: the student, initialised from
             the teacher, learns at each of its own sigmas the x0 whose Euler step lands where the
             teacher's fine-step ODE solution lands (deterministic targets, no adversarial loss)
Then loss curves are written as PNG and `ltc_model.json` describes the folder.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ...errors import ConfigError
from .model import LTC_FILE, READER_FILE, SEAM_ANCHOR, calibrate_command, train_reader_command
from .networks import Autoencoder, Denoiser, NetConfig, context_baseline, from_unit
from .noise import field_frames, mix, noise_field
from .text import shared_text_encoder
from .world import ATTRIBUTES, BACKGROUND_KINDS, caption, linear_velocity, object_coverage, render, sample_scene, scene_attributes

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
    # distillation: share of samples whose input at the student's step i > 0 is the student's own
    # state there (i Euler steps of the current student from the trajectory's noise, no gradient)
    # instead of the teacher's; the target is the chord from that state to the teacher's next state,
    # so one step brings a drifted student back onto the teacher's path (backward distillation, as
    # in Imagine Flash: trained only on the teacher's states, the student never sees its own errors,
    # and at run time each step starts from the last one's). 0 (off) until a run shows it helps
    distil_rollout: float = 0.0
    # distillation: keep only the trajectories whose teacher output reads, to the fidelity check's
    # pixel reader (`evaluate.read_video`), like the clip's own frames do (background colour, object
    # colour, direction of motion where the clip's frames show one): the student learns the teacher's
    # successes, not its failures (filtered distillation; the reader is the evaluation's, so a gain
    # measured by it is checked against object_area and the pictures too). Off until a run shows it helps
    distil_filter: bool = False
    text_dropout: float = 0.1  # teacher: share of prompts replaced by the empty prompt (for guidance)
    # share of samples trained without the previous chunk's latents: a stream's first chunk has
    # none, and only these samples make the model draw the scene from the text alone (with
    # context it can copy the colours); 0.15 until the 2026-11-25 retrain, 0.5 since
    context_drop: float = 0.5
    # flow-matching loss weight on latent pixels the objects cover, over the background's 1 (objects
    # are ~8% of the picture: unweighted, the loss barely sees them); 0 until the 2026-11-25 retrain
    object_weight: float = 4.0
    # the object weighting only for samples at sigma <= this (1: every sigma). Where the noisy input
    # leaves open whether an object is at a pixel, the weighted loss's minimiser is the weighted mean,
    # which counts "object here" 1 + object_weight times: high-noise steps then paint object colour
    # wherever an object might be, and objects come out as blobs ~3x their size (model card, O0/O2).
    # At low noise the input shows where the objects are, and the weighted and plain minimisers agree.
    object_weight_sigma: float = 1.0
    # weight of the motion loss (`motion_mse`): errors that differ from frame to frame, i.e. motion
    # drawn wrong; off: at 10 it did not beat the shipped weights (model card, "Tried and not shipped")
    motion_weight: float = 0.0
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


def _cosine_lr(opt, step: int, total: int, base: float, warmup: int = 50):
    warmup = max(1, min(warmup, total // 5))
    lr = base * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / total))
    for group in opt.param_groups:
        group["lr"] = lr


def _scalar(t: torch.Tensor) -> float:
    """A logged loss as a float; NaN on PyTorch's 'meta' device, where the tests run the stages to
    check that every tensor is made on the model's device (a CPU one meeting a meta one raises)."""
    return float("nan") if t.device.type == "meta" else t.item()


# Devices: the data (rendered clips, caption token states) is made on the CPU and every random draw
# comes from a CPU generator, so a seed draws the same batches on any device; the networks, the
# latents and the token states live on the training device (`train(..., device=)`), and each draw
# is moved there as it is used. Boolean masks that decide which rows run (`keep`) stay on the CPU:
# indexing a device tensor with them is allowed, and testing them needs no device sync.


# ------------------------------------------------------------------------------------------------
def training_clips(cfg: TrainConfig):
    """The training clips' scenes and first frames, (scene, start) in order, drawn from `cfg.seed`
    (`progress` over `cfg.clips`)."""
    rng = np.random.default_rng(cfg.seed)
    for _ in progress(range(cfg.clips), cfg.clips, "render clips"):
        scene = sample_scene(int(rng.integers(2**31)))
        yield scene, int(rng.integers(0, 400))


def make_dataset(cfg: TrainConfig, net: NetConfig) -> dict[str, torch.Tensor]:
    """Clips of `context_frames + frames_per_chunk` frames, their captions' token states."""
    n_frames = net.context_frames + net.frames_per_chunk
    frames = np.empty((cfg.clips, n_frames, net.height, net.width, 3), np.uint8)
    masks = np.empty((cfg.clips, n_frames, net.height // 8, net.width // 8), np.float32)
    captions, attributes, velocities = [], [], []
    for i, (scene, start) in enumerate(training_clips(cfg)):
        frames[i] = render(scene, start, n_frames, net.height, net.width)
        masks[i] = latent_mask(object_coverage(scene, start, n_frames, net.height, net.width))
        captions.append(scene.caption)
        attributes.append(scene_attributes(scene))
        velocities.append(linear_velocity(scene.main))
    return {"frames": torch.from_numpy(frames), "tokens": embed_captions(captions, net), "captions": captions,
            "masks": torch.from_numpy(masks), "attributes": torch.tensor(attributes),
            "velocities": torch.tensor(velocities, dtype=torch.float32)}


def embed_captions(captions: list[str], net: NetConfig) -> torch.Tensor:
    encoder = shared_text_encoder(net.max_tokens)
    return torch.cat([encoder.encode_batch(captions[i:i + 256]) for i in range(0, len(captions), 256)])


ATTRIBUTE_CHECK_SEED = 1_500_000_000  # captions for the held-out check of the text adapter


def attribute_accuracy(model: Denoiser, tokens: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Per attribute, the share of captions the text adapter reads right."""
    with torch.no_grad():
        logits = model.attribute_logits(tokens)
    return {name: round(float((out.argmax(1) == labels[:, j]).float().mean()), 4)
            for j, (name, out) in enumerate(zip(ATTRIBUTES, logits))}


def held_out_caption_scenes(n: int) -> list:
    """`n` scenes with seeds and wording never drawn in training (their captions re-worded)."""
    scenes = [sample_scene(ATTRIBUTE_CHECK_SEED + i) for i in range(n)]
    for i, scene in enumerate(scenes):
        scene.caption = caption(scene, np.random.default_rng(ATTRIBUTE_CHECK_SEED - 1 - i))
    return scenes


def held_out_attributes(n: int, net: NetConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """`held_out_caption_scenes(n)`: token states and attributes."""
    scenes = held_out_caption_scenes(n)
    return embed_captions([s.caption for s in scenes], net), torch.tensor([scene_attributes(s) for s in scenes])


@torch.no_grad()
def palette_from_data(latents: torch.Tensor, attributes: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Each named colour's mean latent where the training clips show it as a plain background: over
    the latent pixels no object covers, away from the frame's edge (where the encoder's padding shows).
    latents [N, C, T, h, w], attributes [N, len(ATTRIBUTES)] (world.scene_attributes), masks [N, T, h, w]
    (object coverage) -> [colours, C]; a colour never seen as a plain background stays 0."""
    names = list(ATTRIBUTES)
    attributes = attributes.cpu()  # which rows to pool is decided on the host
    plain = attributes[:, names.index("background")] == BACKGROUND_KINDS.index("plain")
    colour = attributes[:, names.index("background_colour")]
    free = (masks < 0.01).float()[:, None, :, 1:-1, 1:-1]  # [N, 1, T, h - 2, w - 2]
    inner = latents[:, :, :, 1:-1, 1:-1]
    palette = latents.new_zeros(len(ATTRIBUTES["background_colour"]), latents.shape[1])
    for k in range(len(palette)):
        rows = plain & (colour == k)
        if rows.any():
            weight = free[rows]
            palette[k] = (inner[rows] * weight).sum((0, 2, 3, 4)) / weight.sum().clamp_min(1)
    return palette


def freeze_attributes(model: Denoiser) -> Denoiser:
    """The text adapter's attribute reading stays as its auxiliary loss trained it (and the velocity
    head as it was fitted)."""
    for module in (model.attr_text, model.attr_head, model.velocity_head):
        if module is not None:
            module.requires_grad_(False)
    return model


def train_attributes(model: Denoiser, tokens: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig, log: list) -> None:
    """Auxiliary loss for the text adapter: from a caption's token states, classify each of the
    scene's attributes (cross-entropy summed over attributes). The token states carry what the
    caption says (this pooling reads colours and motion from held-out captions at 99.7-100%); with
    it, the FiLM condition carries that reading explicitly from the first teacher step instead of
    leaving it to the flow loss. Trains only `attr_text` and `attr_head`."""
    gen = torch.Generator().manual_seed(cfg.seed + 5)
    params = list(model.attr_text.parameters()) + list(model.attr_head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    for step in progress(range(cfg.attribute_steps), cfg.attribute_steps, "text attributes"):
        _cosine_lr(opt, step, cfg.attribute_steps, cfg.lr)
        idx = torch.randint(len(tokens), (cfg.attribute_batch,), generator=gen)
        logits = model.attribute_logits(tokens[idx])
        loss = sum(F.cross_entropy(out, labels[idx, j]) for j, out in enumerate(logits))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.append(("attributes", step, _scalar(loss)))


def fit_velocity_head(model: Denoiser, tokens: torch.Tensor, velocities: torch.Tensor, steps: int = 600,
                      seed: int = 0) -> float:
    """Train `model.velocity_head` to map the captions `tokens` (through the frozen attribute
    classifier's probabilities) to their scenes' `velocities` [N, 2] (`world.linear_velocity`), full
    batch; the empty prompt (one row in ten, as often as training shows it) maps to no motion.
    Seconds on a CPU. Returns the root-mean-square error on the rows fitted (fractions of the frame
    per frame)."""
    head = model.velocity_head
    with torch.random.fork_rng():  # a fresh start drawn from `seed`, the caller's random state untouched
        torch.manual_seed(seed)
        for layer in head:
            if isinstance(layer, torch.nn.Linear):
                layer.reset_parameters()
    empty = torch.zeros_like(tokens[: max(1, len(tokens) // 10)])
    with torch.no_grad():
        probs = model.attribute_probabilities(model.attribute_features(torch.cat([tokens, empty])))
    target = torch.cat([velocities, velocities.new_zeros(len(empty), 2)])
    scale = target.abs().max().clamp_min(1e-6)  # fit in units of the fastest motion
    head.requires_grad_(True)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for step in range(steps):
        _cosine_lr(opt, step, steps, 1e-2)
        loss = (head(probs) / scale - target / scale).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    head.requires_grad_(False)
    with torch.no_grad():
        return _scalar((head(probs) - target).pow(2).mean().sqrt())


def latent_mask(coverage: np.ndarray) -> np.ndarray:
    """Pixel coverage [T, H, W] -> latent-resolution mask [T, H/8, W/8]: the share of each 8x8
    cell an object covers, grown by one latent pixel (the edges decide the shape too)."""
    t, h, w = coverage.shape
    cells = torch.from_numpy(coverage).view(t, 1, h, w)
    cells = F.avg_pool2d(cells, 8)
    return F.max_pool2d(cells, 3, stride=1, padding=1)[:, 0].numpy()


def weighted_mse(v: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, object_weight: float) -> torch.Tensor:
    """Mean squared error over [B, C, T, h, w] with latent pixels weighted 1 + object_weight * mask
    ([B, T, h, w]), normalised by the mean weight so the loss keeps its scale."""
    if mask is None or object_weight == 0:
        return F.mse_loss(v, target)
    weight = 1.0 + object_weight * mask[:, None]
    return ((v - target).square() * weight).mean() / weight.mean()


def motion_mse(v: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Mean squared frame-to-frame change of the x0 error. The x0 the velocity implies is
    x - sigma * v, so its error is sigma * (target - v), and its change between frames t and t+1 is
    what the plain loss barely sees: an object drawn moving the wrong way (or not moving) is a thin
    error along its edges, while a colour off by the same amount in every frame changes nothing here.
    v, target [B, C, T, h, w]; sigma [B]."""
    err = (v - target) * sigma.view(-1, 1, 1, 1, 1)
    return (err[:, :, 1:] - err[:, :, :-1]).square().mean()


def flow_loss(v, target, sigma, mask, cfg: "TrainConfig") -> torch.Tensor:
    """The teacher's and the student's loss: object-weighted MSE (the weighting only for samples at
    sigma <= `cfg.object_weight_sigma`) plus the weighted motion loss. sigma [B]; mask [B, T, h, w]."""
    if mask is not None and cfg.object_weight_sigma < 1:
        mask = mask * (sigma <= cfg.object_weight_sigma).to(mask.dtype).view(-1, 1, 1, 1)
    loss = weighted_mse(v, target, mask, cfg.object_weight)
    if cfg.motion_weight:
        loss = loss + cfg.motion_weight * motion_mse(v, target, sigma)
    return loss


def to_unit(frames_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float [..., 3, H, W] in [-1, 1]."""
    return frames_uint8.movedim(-1, -3).float() / 127.5 - 1.0


def fit_autoencoder(ae: Autoencoder, frames: torch.Tensor, params, steps: int, lr: float, batch: int, seed: int,
                    log: list, stage: str, label: str, weight: torch.Tensor | None = None) -> None:
    """`steps` AdamW steps (cosine schedule) on `params` of L1 + MSE between random frames (uint8
    [N, H, W, 3]) and their reconstructions; with `weight` [1, 1, H, W], both weighted per pixel
    (normalised by its mean). Losses logged as `stage`; `label` names the progress bar."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    device = ae.latent_scale.device  # the frames stay on the CPU; each batch moves to the network
    if weight is not None:
        weight = weight.to(device)
    for step in progress(range(steps), steps, label):
        _cosine_lr(opt, step, steps, lr)
        idx = torch.randint(len(frames), (batch,), generator=gen)
        x = to_unit(frames[idx].to(device))
        recon = ae.decoder(ae.encoder(x))
        if weight is None:
            loss = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        else:
            d = recon - x
            loss = (weight * (d.abs() + d * d)).mean() / weight.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.append((stage, step, _scalar(loss)))


def train_autoencoder(ae: Autoencoder, data, cfg: TrainConfig, log: list) -> None:
    fit_autoencoder(ae, data["frames"].flatten(0, 1), ae.parameters(), cfg.ae_steps, cfg.lr, cfg.ae_batch, cfg.seed + 1,
                    log, "ae", "autoencoder")


@torch.no_grad()
def _encode_frames(ae: Autoencoder, frames: torch.Tensor) -> torch.Tensor:
    """Pixel clips [N, T, H, W, 3] (0-255) -> unscaled latents [N, C, T, h, w]."""
    out = []
    for i in range(0, len(frames), 32):
        z = ae.encoder(to_unit(frames[i:i + 32].flatten(0, 1).to(ae.latent_scale.device)))
        out.append(z.reshape(-1, frames.shape[1], *z.shape[1:]).movedim(2, 1))
    return torch.cat(out)


@torch.no_grad()
def encode_clips(ae: Autoencoder, data) -> torch.Tensor:
    """All clips -> latents [N, C, T, h, w], and sets the autoencoder's latent scale to their std."""
    latents = _encode_frames(ae, data["frames"])
    ae.latent_scale.copy_(latents.std())
    return latents / ae.latent_scale


def shift_colours(frames: torch.Tensor, gen: torch.Generator, levels: float = CONTEXT_SHIFT_LEVELS) -> torch.Tensor:
    """uint8 clips [N, T, H, W, 3] -> the same clips with one random RGB offset per clip (uniform in
    +-levels per channel), rounded and clipped to 0-255."""
    offset = (torch.rand(len(frames), 1, 1, 1, 3, generator=gen) * 2 - 1) * levels
    return (frames.float() + offset).round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def shifted_context_latents(ae: Autoencoder, data, net: NetConfig, cfg: TrainConfig) -> torch.Tensor:
    """Every clip's context frames, colour-shifted (`shift_colours`), encoded at the autoencoder's
    latent scale: [N, C, Tc, h, w], rows indexed like the clips' latents."""
    gen = torch.Generator().manual_seed(cfg.seed + 5)
    shifted = shift_colours(data["frames"][:, : net.context_frames], gen, CONTEXT_SHIFT_LEVELS)
    return _encode_frames(ae, shifted) / ae.latent_scale


def shift_contexts(clean: torch.Tensor, shifted: torch.Tensor | None, idx: torch.Tensor, share: float,
                   gen: torch.Generator) -> torch.Tensor:
    """The batch's contexts (clips `idx`) with a `share` of rows replaced by their colour-shifted
    version from `shifted`. No random draw when off, so runs without the option are what they were."""
    if shifted is None or share <= 0:
        return clean
    pick = (torch.rand(len(clean), generator=gen) < share).to(clean.device)
    return torch.where(pick.view(-1, 1, 1, 1, 1), shifted[idx], clean)


def split_clip(latents: torch.Tensor, net: NetConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, C, Tc+T, h, w] -> context [B, C, Tc, h, w], chunk [B, C, T, h, w]."""
    return latents[:, :, : net.context_frames], latents[:, :, net.context_frames:]


def diffused_chunk(x0: torch.Tensor, clean_context: torch.Tensor, keep: torch.Tensor, net: NetConfig) -> torch.Tensor:
    """What the denoiser learns to generate: the chunk itself, or with `net.residual_context` its
    change from the clean context's last frame (clean: at run time the context is the model's own
    output, which the sampler adds back; samples trained without context stay themselves)."""
    if not net.residual_context:
        return x0
    return x0 - context_baseline(clean_context, x0.shape[2], keep)


def augment_context(context: torch.Tensor, gen: torch.Generator, drop_rate: float = 0.15):
    """Noise the context a little (the model must cope with its own imperfect chunks) and drop it
    for some samples (the first chunk of a stream has none). Returns (context or None, keep mask)."""
    b = context.shape[0]
    level = torch.rand(b, generator=gen) * 0.15
    noise = torch.randn(context.shape, generator=gen).to(context.device)
    level = level.view(b, 1, 1, 1, 1).to(context.device)
    noisy = (1 - level) * context + level * noise
    keep = torch.rand(b, generator=gen) >= drop_rate
    return noisy, keep


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
        _cosine_lr(opt, local, total, base_lr)
        idx = torch.randint(len(latents), (cfg.teacher_batch,), generator=gen)
        clean, x0 = split_clip(latents[idx], net)
        clean = shift_contexts(clean, shifted, idx, cfg.context_shift, gen)
        context, keep = augment_context(clean, gen, cfg.context_drop)
        x0 = diffused_chunk(x0, clean, keep, net)
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
        loss = flow_loss(v, noise - x0, sigma, masks[idx] if masks is not None else None, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        _ema_update(ema, model, 0.0 if step < 100 else 0.995)
        log.append(("teacher", step, _scalar(loss)))
    return ema


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
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


@torch.no_grad()
def student_rollout(student: Denoiser, noise: torch.Tensor, i: torch.Tensor, sig: torch.Tensor, tokens, context,
                    keep) -> torch.Tensor:
    """Row r's state after `i[r]` Euler steps of `student` on the schedule `sig` from `noise[r]`
    (the state it reaches at run time): [B, C, T, h, w]; rows with i = 0 are their noise."""
    x = noise.clone()
    for j in range(int(i.max())):
        rows = i > j  # only the rows that still have steps to go
        ctx = None if context is None else context[rows]
        v = denoiser_velocity(student, x[rows], sig[j].expand(int(rows.sum())).to(x.device), tokens[rows], ctx,
                              keep[rows])
        x[rows] = x[rows] + (sig[j + 1] - sig[j]) * v
    return x


@torch.no_grad()
def filter_trajectories(records, ae: Autoencoder, frames: torch.Tensor, net: NetConfig) -> tuple[list, dict]:
    """`records` without the rows whose teacher output (the last state, decoded) reads differently
    from the clip's own chunk frames (`frames` [N, Tc+T, H, W, 3] uint8): background colour, object
    colour, and direction of motion where the clip's frames show one. Returns (records, counts)."""
    from .evaluate import read_video  # evaluate imports this module

    kept, counts = [], {"trajectories": 0, "kept": 0, "background": 0, "object": 0, "direction": 0}
    for idx, context, keep, states in progress(records, len(records), "filter trajectories"):
        good = torch.ones(len(idx), dtype=torch.bool)
        for r in range(len(idx)):
            video = from_unit(ae.decode(states[r, -1].movedim(1, 0)))
            seen, truth = read_video(video), read_video(frames[int(idx[r]), net.context_frames:].numpy())
            for kind in ("background", "object", "direction"):
                if truth[kind] is not None and seen[kind] != truth[kind]:
                    counts[kind] += 1
                    good[r] = False
        counts["trajectories"] += len(idx)
        counts["kept"] += int(good.sum())
        if good.any():
            kept.append((idx[good], context[good], keep[good], states[good]))
    return kept, counts


def train_student(student: Denoiser, records, tokens, cfg: TrainConfig, log: list,
                  masks: torch.Tensor | None = None) -> Denoiser:
    """At student sigma s_i from the teacher state x_i, the target velocity is the chord
    (x_i - x_{i+1}) / (s_i - s_{i+1}): one student Euler step then lands on the teacher's x_{i+1}.
    With `cfg.distil_rollout`, a share of the samples at i > 0 use the student's own state instead
    of x_i (`student_rollout`), the target still the chord to the teacher's x_{i+1}."""
    gen = torch.Generator().manual_seed(cfg.seed + 4)
    sig = student_sigmas(cfg.student_steps)
    device = tokens.device
    ema = copy.deepcopy(student).requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr * 0.25, weight_decay=0.0)
    for step in progress(range(cfg.distil_steps), cfg.distil_steps, f"distil to {cfg.student_steps} steps"):
        _cosine_lr(opt, step, cfg.distil_steps, cfg.lr * 0.25)
        idx, context, keep, states = records[int(torch.randint(len(records), (1,), generator=gen))]
        i = torch.randint(cfg.student_steps, (len(idx),), generator=gen)
        rows = torch.arange(len(idx))
        x_i, x_next = states[rows, i], states[rows, i + 1]
        if cfg.distil_rollout > 0:
            own = (torch.rand(len(idx), generator=gen) < cfg.distil_rollout) & (i > 0)
            if own.any():
                rolled = student_rollout(student, states[:, 0], torch.where(own, i, 0), sig, tokens[idx], context, keep)
                x_i = torch.where(own.view(-1, 1, 1, 1, 1).to(device), rolled, x_i)
        s_i, s_next = sig[i].to(device), sig[i + 1].to(device)
        target = (x_i - x_next) / (s_i - s_next).view(-1, 1, 1, 1, 1)
        v = denoiser_velocity(student, x_i, s_i, tokens[idx], context, keep)
        loss = flow_loss(v, target, s_i, masks[idx] if masks is not None else None, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        _ema_update(ema, student, 0.0 if step < 50 else 0.99)
        log.append(("distil", step, _scalar(loss)))
    return ema


# ------------------------------------------------------------------------------------------------
LOG_STAGES = ("ae", "teacher", "distil", "attributes", "decoder", "reader")  # loss_log.npy's first column indexes this


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
        # plain noise even for a folder trained with flowing noise: the one such network measured
        # sampled best on plain noise (model card); `--noise-flow A` at sampling asks for it
        "sampling": {"seam_anchor": SEAM_ANCHOR},
        **(extra or {}),
    }
    (out / "ltc_model.json").write_text(json.dumps(meta, indent=2) + "\n")
    if stage == "distilled" and (out / READER_FILE).is_file():
        print(f"[train-default] {out / READER_FILE} was trained for the previous weights: reader guidance is off "
              f"until '{train_reader_command(out)}' trains it again")


_STAGES = ("ae", "teacher", "distilled")


_AE_NET_KEYS = ("height", "width", "latent_channels", "ae_widths")
_TEACHER_LOSS_KEYS = ("text_dropout", "context_drop", "object_weight", "object_weight_sigma", "motion_weight",
                      "cross_attn_drop", "context_shift", "noise_flow")
# folders written before a key existed were trained with this value
_LOSS_KEYS_ADDED = {"motion_weight": 0.0, "cross_attn_drop": 0.0, "context_shift": 0.0, "object_weight_sigma": 1.0,
                    "noise_flow": 0.0}


def _same_autoencoder(meta: dict, cfg: TrainConfig, net: NetConfig) -> bool:
    """Whether the autoencoder described by `meta` (a folder's ltc_model.json) was trained on the
    same data with the same settings as `cfg` and `net` would train it."""
    saved_net, saved_cfg = meta.get("net", {}), meta.get("train", {})
    current = json.loads(json.dumps(net.to_dict()))
    return (all(saved_net.get(k) == current[k] for k in _AE_NET_KEYS)
            and all(saved_cfg.get(k) == getattr(cfg, k) for k in ("seed", "clips", "ae_steps", "ae_batch", "lr")))


def _resumable_stage(out: Path, cfg: TrainConfig, net: NetConfig) -> str | None:
    """The last finished stage in `out` that can be reused: the teacher (and, before it, the
    autoencoder) when everything up to it was trained with the same network and settings; the
    autoencoder alone when only the denoiser changed. None: everything is retrained."""
    meta_path = out / "ltc_model.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    saved_net, saved_cfg = meta.get("net", {}), meta.get("train", {})
    if not _same_autoencoder(meta, cfg, net) or meta.get("stage") not in _STAGES:
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


def _saved_teacher_steps(out: Path) -> int:
    return int(json.loads((out / "ltc_model.json").read_text())["train"]["teacher_steps"])


def _load_into(module: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    module.load_state_dict(load_file(str(path)))


def _init_teacher_from(teacher: Denoiser, folder: Path) -> tuple[int, list[str]]:
    """Copy every tensor of `folder`'s teacher whose name and shape match (growing a network:
    new modules keep their initialisation, zero-initialised outputs make them start as the
    identity). Returns (tensors copied, names of the tensors left new)."""
    from safetensors.torch import load_file

    source = load_file(str(folder / "teacher.safetensors"))
    own = teacher.state_dict()
    copied = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    teacher.load_state_dict(copied, strict=False)
    return len(copied), [k for k in own if k not in copied]


def train(cfg: TrainConfig, net: NetConfig, out: Path, resume: bool = False, init_from: Path | None = None,
          device: str | torch.device = "cpu") -> dict:
    from ...device import resolve_device

    dev = resolve_device(device)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    log: list = []
    done = _resumable_stage(out, cfg, net) if resume else None
    ae_folder = out
    if init_from is not None and done is None:
        if not (init_from / "teacher.safetensors").is_file():
            raise ConfigError(f"--init-from {init_from}: no teacher.safetensors there")
        meta = json.loads((init_from / "ltc_model.json").read_text())
        if not _same_autoencoder(meta, cfg, net) or meta.get("stage") not in _STAGES:
            raise ConfigError(f"--init-from {init_from}: its autoencoder was trained with other data or settings")
        done, ae_folder = "ae", init_from
    print(f"[train-default] output {out}; seed {cfg.seed}; {cfg.clips} clips of {net.height}x{net.width}; on {dev}"
          + (f"; reusing the autoencoder of {init_from}" if ae_folder != out
             else f"; resuming after stage '{done}'" if done else ""))
    if resume and done is None:
        print("[train-default] nothing to resume (no folder, or it was trained with other settings): training from scratch")
    start = _saved_teacher_steps(out) if done == "teacher-partial" else 0
    if start:
        print(f"[train-default] the teacher in {out} has {start} steps: training it on to {cfg.teacher_steps}")
    if done is not None:
        log.extend(load_loss_log(ae_folder, ("ae", "teacher", "attributes") if done != "ae" else ("ae",)))
        if not log and (out / "loss_curves.png").is_file():  # folder from before the log was saved
            (out / "loss_curves.png").replace(out / "loss_curves_ae_teacher.png")
    data = make_dataset(cfg, net)
    for key in ("tokens", "attributes", "velocities", "masks"):  # the rendered frames stay on the CPU
        data[key] = data[key].to(dev)
    ae = Autoencoder(net).to(dev)
    if done is None:
        train_autoencoder(ae, data, cfg, log)
        latents = encode_clips(ae.eval(), data)
        save_folder(out, net, ae, None, None, cfg, "ae")
    else:
        _load_into(ae, ae_folder / "autoencoder.safetensors")
        scale = float(ae.latent_scale)
        latents = encode_clips(ae.eval(), data)  # deterministic: same data, same weights
        ae.latent_scale.fill_(scale)
    print(f"[train-default] autoencoder done at {time.time() - t0:.0f} s; latent scale {float(ae.latent_scale):.3f}")

    shifted = shifted_context_latents(ae.eval(), data, net, cfg) if cfg.context_shift else None
    chunk_masks = data["masks"][:, net.context_frames:]  # the chunk frames' object masks [N, T, h, w], indexed like latents
    teacher = Denoiser(net).to(dev)
    if done in ("teacher", "distilled"):
        _load_into(teacher, out / "teacher.safetensors")
        teacher.eval()
    else:
        new_attributes = bool(net.attribute_classes) and not start
        if start:
            _load_into(teacher, out / "teacher.safetensors")
            log[:] = [r for r in log if r[0] != "teacher" or r[1] < start]
        elif init_from is not None:
            copied, new = _init_teacher_from(teacher, init_from)
            print(f"[train-default] teacher initialised from {init_from}: {copied} tensors copied, {len(new)} new")
            new_attributes = new_attributes and any(k.startswith(("attr_text.", "attr_head.")) for k in new)
        if new_attributes:
            log[:] = [r for r in log if r[0] != "attributes"]
            train_attributes(teacher, data["tokens"], data["attributes"], cfg, log)
        if net.colour_palette and not start and not teacher.palette.abs().sum():
            teacher.palette.data.copy_(palette_from_data(latents, data["attributes"], data["masks"]))
            print(f"[train-default] colour palette set from the data: {len(teacher.palette)} colours' mean latents")
        if net.text_velocity and not start:
            rms = fit_velocity_head(teacher, data["tokens"], data["velocities"])
            print(f"[train-default] velocity head fitted to {len(data['tokens'])} captions: rms error {rms:.4f} of the frame per frame")
        teacher = train_teacher(freeze_attributes(teacher), latents, data["tokens"], net, cfg, log, start=start,
                                warm=init_from is not None, masks=chunk_masks, shifted=shifted)
        save_folder(out, net, ae, teacher, None, cfg, "teacher")
        save_loss_curves(log, out / "loss_curves.png")
    print(f"[train-default] teacher done at {time.time() - t0:.0f} s")

    records, counts = teacher_trajectories(teacher, latents, data["tokens"], net, cfg, shifted), None
    if cfg.distil_filter:
        records, counts = filter_trajectories(records, ae.eval(), data["frames"], net)
        print(f"[train-default] kept {counts['kept']} of {counts['trajectories']} teacher trajectories (failed: background "
              f"{counts['background']}, object {counts['object']}, direction {counts['direction']})")
        if not records:
            raise ConfigError("--distil-filter: no teacher trajectory passed the pixel checks; train the teacher longer")
    student = train_student(freeze_attributes(copy.deepcopy(teacher).requires_grad_(True)), records, data["tokens"], cfg,
                            log, masks=chunk_masks)
    elapsed = time.time() - t0
    summary = {
        "seconds": round(elapsed, 1),
        "resumed_after": None if init_from is not None else done,
        "initialised_from": str(init_from) if init_from is not None else None,
        "teacher_trained_on_from_step": start or None,
        "final_loss": {s: float(np.mean([r[2] for r in log if r[0] == s][-50:])) for s in ("ae", "teacher", "distil")
                       if any(r[0] == s for r in log)},
    }
    if counts is not None:
        summary["distil_filter"] = counts
    if net.attribute_classes:
        summary["attribute_accuracy_held_out"] = attribute_accuracy(
            student, *(t.to(dev) for t in held_out_attributes(500, net)))
        print(f"[train-default] text adapter on 500 held-out captions: {summary['attribute_accuracy_held_out']}")
    save_folder(out, net, ae, teacher, student, cfg, "distilled", {"training": summary})
    save_loss_curves(log, out / "loss_curves.png")
    print(f"[train-default] done in {elapsed:.0f} s: {json.dumps(summary['final_loss'])}")
    return summary


DECODER_EDGE_PX = 4  # the frame's outer pixels the decoder fine-tune weights more
DECODER_EDGE_WEIGHT = 10.0
DECODER_LR_FACTOR = 0.25  # of the training learning rate


def finetune_decoder(ae: Autoencoder, frames: torch.Tensor, steps: int, cfg: TrainConfig, log: list) -> None:
    """Train the decoder on with the encoder frozen (the latent space, and so the denoiser, stay as
    they are), its L1 + MSE weighted `DECODER_EDGE_WEIGHT` times on the frame's outer
    `DECODER_EDGE_PX` pixels: a decoder trained on the plain loss draws that rim up to ~20 levels
    off in colour (zero padding), where a viewer sees a frame around the video and where the
    fidelity check reads the background. frames: uint8 [N, H, W, 3]."""
    e = DECODER_EDGE_PX
    weight = torch.ones(1, 1, frames.shape[1], frames.shape[2])
    weight[..., :e, :] = weight[..., -e:, :] = weight[..., :, :e] = weight[..., :, -e:] = DECODER_EDGE_WEIGHT
    ae.encoder.requires_grad_(False)
    fit_autoencoder(ae, frames, ae.decoder.parameters(), steps, cfg.lr * DECODER_LR_FACTOR, cfg.ae_batch, cfg.seed + 5,
                    log, "decoder", "decoder (edge-weighted)", weight)
    ae.encoder.requires_grad_(True)


def _trained_folder(out: Path, option: str, threads: int) -> tuple[dict, NetConfig, "TrainConfig", Autoencoder]:
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
    _load_into(ae, out / "autoencoder.safetensors")
    return meta, net, cfg, ae


def _render_training_clips(cfg: TrainConfig, net: NetConfig) -> tuple[torch.Tensor, list]:
    """make_dataset's clips, rendered without captions or masks: uint8 [N, Tc + T, H, W, 3] and their
    (scene, start) in order."""
    n_frames = net.context_frames + net.frames_per_chunk
    frames = torch.empty(cfg.clips, n_frames, net.height, net.width, 3, dtype=torch.uint8)
    clips = []
    for i, (scene, start) in enumerate(training_clips(cfg)):  # rendered as drawn, under its progress bar
        frames[i] = torch.from_numpy(render(scene, start, n_frames, net.height, net.width))
        clips.append((scene, start))
    return frames, clips


def _finish_folder_stage(out: Path, meta: dict, stage: str, record: dict, log: list) -> dict:
    """Finish a stage run on a trained folder: adds the first and last 50 losses of `log` to `record`
    (the stage's entry in `meta`), writes `meta` as its ltc_model.json, and its loss log and curves
    with the stage's earlier entries replaced by `log`. Returns `record`."""
    losses = [r[2] for r in log]
    record.update(loss_first_50=float(np.mean(losses[:50])), loss_last_50=float(np.mean(losses[-50:])))
    (out / "ltc_model.json").write_text(json.dumps(meta, indent=2) + "\n")
    earlier = [r for r in load_loss_log(out, LOG_STAGES) if r[0] != stage]
    save_loss_curves(earlier + log, out / "loss_curves.png")
    return record


def finetune_decoder_folder(out: Path, steps: int, threads: int = 2) -> dict:
    """`finetune_decoder` on a trained folder's autoencoder, on the clips it was trained on (the
    folder's own settings); everything else in the folder is left as it is. Recorded in its
    ltc_model.json (`decoder_finetune`) and loss log."""
    from safetensors.torch import save_file

    meta, net, cfg, ae = _trained_folder(out, "--finetune-decoder", threads)
    t0 = time.time()
    frames, _ = _render_training_clips(cfg, net)
    log: list = []
    finetune_decoder(ae, frames.flatten(0, 1), steps, cfg, log)
    save_file({k: v.contiguous() for k, v in ae.state_dict().items()}, str(out / "autoencoder.safetensors"))
    record = meta["decoder_finetune"] = {"steps": steps, "edge_px": DECODER_EDGE_PX, "edge_weight": DECODER_EDGE_WEIGHT,
                                         "lr": cfg.lr * DECODER_LR_FACTOR, "seconds": round(time.time() - t0, 1)}
    _finish_folder_stage(out, meta, "decoder", record, log)
    print(f"[train-default] decoder fine-tuned {steps} steps in {record['seconds']:.0f} s: "
          f"loss {record['loss_first_50']:.4f} -> {record['loss_last_50']:.4f}")
    return record


READER_STEPS_BATCH = 32
READER_LR = 2e-3
READER_HELD_OUT = 0.1  # share of the clips kept out of the reader's training to measure it


@torch.no_grad()
def reader_inputs(denoiser: Denoiser, chunk: torch.Tensor, context: torch.Tensor, tokens: torch.Tensor,
                  sigmas: torch.Tensor, copies: int, seed: int) -> torch.Tensor:
    """What the reader sees at sampling time: the denoiser's x0 estimates of the true chunks [N, C, T,
    h, w] noised to one of `sigmas` (drawn per clip), half of them with the clip's context; `copies`
    draws per clip, [copies * N, ...], copy-major."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(copies):
        for i in progress(range(0, len(chunk), 64), (len(chunk) + 63) // 64, "reader inputs (denoiser x0 estimates)"):
            x0 = chunk[i:i + 64]
            s = sigmas[torch.randint(len(sigmas), (len(x0),), generator=gen)].view(-1, 1, 1, 1, 1)
            x = (1 - s) * x0 + s * torch.randn(x0.shape, generator=gen)
            keep = torch.rand(len(x0), generator=gen) >= 0.5
            v = denoiser_velocity(denoiser, x, s.flatten(), tokens[i:i + 64], context[i:i + 64], keep)
            out.append(x - s * v)
    return torch.cat(out)


def train_reader(reader, inputs: torch.Tensor, colour: torch.Tensor, obj: torch.Tensor, steps: int, seed: int,
                 log: list) -> None:
    """`steps` AdamW steps (cosine schedule) of `reader.reader_loss` on random rows."""
    from .reader import reader_loss

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(reader.parameters(), lr=READER_LR, weight_decay=1e-2)
    for step in progress(range(steps), steps, "reader"):
        _cosine_lr(opt, step, steps, READER_LR, warmup=100)
        idx = torch.randint(len(inputs), (READER_STEPS_BATCH,), generator=gen)
        loss = reader_loss(reader, inputs[idx], colour[idx], obj[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.append(("reader", step, loss.item()))


def train_reader_folder(out: Path, steps: int, threads: int = 2, guidance: float | None = None) -> dict:
    """Train the colour reader of reader guidance (`reader.py`) for a trained folder: on the clips
    the folder was trained on (its own settings), their latents and its denoiser's x0 estimates of
    them (student, else teacher), labelled from the scenes' ground truth. Writes
    `reader.safetensors`, records the run in ltc_model.json (`reader`) and turns the guidance on
    there (`sampling.reader_guidance`, `guidance` or READER_GUIDANCE; the seam anchor raised to at
    least READER_SEAM_ANCHOR); the network weights are left as they are."""
    from safetensors.torch import save_file

    from .model import READER_GUIDANCE, READER_SEAM_ANCHOR
    from .reader import ColourReader, cell_labels, reader_accuracy

    meta, net, cfg, ae = _trained_folder(out, "--train-reader", threads)
    if not net.attribute_classes:
        raise ConfigError("--train-reader: reader guidance takes the prompt's colours from the attribute pooling; "
                          f"{out} was trained without --text-attributes")
    weights = out / "student.safetensors"
    if not weights.is_file():
        weights = out / "teacher.safetensors"
    if not weights.is_file():
        raise ConfigError(f"--train-reader: {out} has no denoiser weights")
    t0 = time.time()
    denoiser = Denoiser(net)
    _load_into(denoiser, weights)
    denoiser.eval().requires_grad_(False)
    ae.eval().requires_grad_(False)
    frames, clips = _render_training_clips(cfg, net)
    colour = torch.empty(cfg.clips, net.frames_per_chunk, net.height // 8, net.width // 8, dtype=torch.long)
    obj = torch.empty(colour.shape)
    for i, (scene, start) in enumerate(clips):
        coverage = object_coverage(scene, start, frames.shape[1], net.height, net.width)[net.context_frames:]
        colour[i], obj[i] = cell_labels(coverage, scene)
    tokens = embed_captions([scene.caption for scene, _ in clips], net)
    with torch.no_grad():
        latents = _encode_frames(ae, frames) / ae.latent_scale
    context, chunk = split_clip(latents, net)
    copies = 2
    estimates = reader_inputs(denoiser, chunk, context, tokens, student_sigmas(cfg.student_steps)[:-1], copies, cfg.seed + 9)
    train_rows = int(round(cfg.clips * (1 - READER_HELD_OUT)))
    pick = lambda t: torch.cat([t[:train_rows]] * (copies + 1))  # noqa: E731  (clean latents, then each copy)
    inputs = torch.cat([chunk[:train_rows]] + [estimates[k * cfg.clips:k * cfg.clips + train_rows] for k in range(copies)])
    torch.manual_seed(cfg.seed)
    reader = ColourReader(net.latent_channels)
    log: list = []
    train_reader(reader, inputs, pick(colour), pick(obj), steps, cfg.seed + 10, log)
    reader.eval()
    held = slice(train_rows, cfg.clips)
    accuracy = {"clean": reader_accuracy(reader, chunk[held], colour[held], obj[held]),
                "denoiser_estimates": reader_accuracy(reader, estimates[held], colour[held], obj[held])}
    save_file({k: v.contiguous() for k, v in reader.state_dict().items()}, str(out / READER_FILE))
    record = meta["reader"] = {"steps": steps, "batch": READER_STEPS_BATCH, "lr": READER_LR, "from": weights.name,
                               "held_out_clips": cfg.clips - train_rows, "held_out_accuracy": accuracy,
                               "seconds": round(time.time() - t0, 1)}
    sampling = meta.setdefault("sampling", {})
    sampling["reader_guidance"] = READER_GUIDANCE if guidance is None else guidance
    sampling["seam_anchor"] = max(float(sampling.get("seam_anchor", 0.0)), READER_SEAM_ANCHOR)
    _finish_folder_stage(out, meta, "reader", record, log)
    est = accuracy["denoiser_estimates"]
    print(f"[train-default] reader trained {steps} steps in {record['seconds']:.0f} s; on held-out clips' "
          f"x0 estimates: background colour {est['background_colour']:.1%}, object colour {est['object_colour']:.1%}, "
          f"object {est['object']:.1%}; sampling.reader_guidance = {sampling['reader_guidance']:g}, "
          f"sampling.seam_anchor = {sampling['seam_anchor']:g}")
    if (out / LTC_FILE).is_file():  # its key names the reader and the guidance: no longer this folder's
        print(f"[train-default] {out / LTC_FILE} was calibrated with the previous reader: LTC stays off until "
              f"'{calibrate_command(out)}' calibrates it again")
    return record


# NetConfig switches with a flag of the same name: off by default, the folder's own with --resume
_NETWORK_SWITCHES = {
    "rel_pos": "learned relative-position bias (frames, rows, columns) in the chunk self-attention",
    "residual_context": "diffuse each chunk as its change from the previous chunk's last latent frame, so what does "
                        "not change across the boundary is kept exactly",
    "motion_conv": "a depthwise 3x3x3 convolution beside each denoiser block's temporal one (things can move "
                   "from frame to frame)",
    "adaptive_output": "FiLM on the denoiser's output norm, so the prompt can set a colour over the whole picture",
    "text_velocity": "the motion the prompt names (a velocity read from the caption by the attribute pooling): every block "
                     "also sees its neighbouring frames moved along it, and the context moved to where the chunk is "
                     "(needs --text-attributes)",
    "colour_palette": "colours drawn from a learned palette: the output mixes, per pixel, the latents of the colours "
                      "the prompt names (read by the attribute pooling), so what a colour is comes from the words and the "
                      "network chooses where it goes (needs --text-attributes)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="folder to write (default: the packaged weights)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a tiny run for tests (seconds)")
    parser.add_argument("--size", type=int, default=128, help="frame height and width in pixels (multiple of 8)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for PyTorch")
    parser.add_argument("--device", default="auto",
                        help="where the networks train: auto (a CUDA GPU if there is one), cpu, cuda, cuda:N. The data "
                             "and every random draw are made on the CPU, so a seed draws the same batches anywhere "
                             "(--finetune-decoder and --train-reader run on the CPU)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the autoencoder and teacher already in --output when they were trained with the same settings; "
                             "a teacher trained for fewer --teacher-steps is trained on from where it stopped")
    for name in ("clips", "ae_steps", "teacher_steps", "distil_trajectories", "distil_steps", "student_steps"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    parser.add_argument("--init-from", type=Path, default=None,
                        help="reuse this folder's autoencoder and start the teacher from its weights where names and shapes "
                             "match (to grow the network, e.g. with --self-attn)")
    parser.add_argument("--self-attn", action=argparse.BooleanOptionalAction, default=True,
                        help="self-attention over the chunk's half-resolution positions in the denoiser (default: on)")
    for key, text in _NETWORK_SWITCHES.items():
        parser.add_argument("--" + key.replace("_", "-"), action=argparse.BooleanOptionalAction, default=None,
                            help=text + " (default: off, or the folder's with --resume)")
    parser.add_argument("--cross-attn-drop", type=float, default=None,
                        help="share of teacher samples whose cross-attention sees the empty prompt (default 0)")
    parser.add_argument("--text-attributes", action=argparse.BooleanOptionalAction, default=None,
                        help="a second text pooling, trained first to classify the scene's attributes from the caption "
                             "(auxiliary loss, then frozen), feeds the denoiser's condition (default: off, or the folder's "
                             "with --resume)")
    parser.add_argument("--context-drop", type=float, default=None,
                        help="share of training samples without the previous chunk's latents (default 0.5)")
    parser.add_argument("--context-shift", type=float, default=None,
                        help="share of samples with context whose context frames get a random colour offset (up to "
                             f"{CONTEXT_SHIFT_LEVELS:g} levels per channel) while the chunk keeps the true colours, so the "
                             "model takes colours from the prompt rather than copying a drifted context (default 0)")
    parser.add_argument("--object-weight", type=float, default=None,
                        help="extra loss weight on latent pixels the objects cover (default 4; 0: plain MSE)")
    parser.add_argument("--object-weight-sigma", type=float, default=None,
                        help="apply the object weight only to samples at noise level sigma <= this (default 1: all); "
                             "at high noise it makes objects blobs larger than they are (model card)")
    parser.add_argument("--motion-weight", type=float, default=None,
                        help="weight of the motion loss: frame-to-frame changes of the x0 error, so motion drawn the wrong "
                             "way costs more (default 0)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale distilled into the student (default 5.0)")
    parser.add_argument("--distil-filter", action=argparse.BooleanOptionalAction, default=None,
                        help="distil only from teacher trajectories whose output reads like the clip's own frames to the "
                             "fidelity check's pixel reader (background and object colour, direction) (default: off)")
    parser.add_argument("--finetune-decoder", type=int, default=None, metavar="STEPS",
                        help="only fine-tune the decoder of the trained model in --output for STEPS steps, weighted "
                             f"{DECODER_EDGE_WEIGHT:g}x on the frame's outer {DECODER_EDGE_PX} pixels (encoder, denoiser and "
                             "LTC weights unchanged), then stop")
    parser.add_argument("--train-reader", type=int, default=None, metavar="STEPS",
                        help="only train the colour reader of reader guidance for the trained model in --output for STEPS "
                             "steps (on its training clips and its denoiser's x0 estimates of them; about 1000 steps, "
                             "~10 min on 2 CPU cores) and turn the guidance on in its ltc_model.json, then stop")
    parser.add_argument("--noise-flow", type=float, default=None, metavar="A",
                        help="flowing noise: each teacher sample and distillation trajectory gets noise of which a share a, "
                             "drawn uniformly in [0, A], is one field moving along the velocity the prompt names, so the "
                             "noise moves the way the picture should (needs --text-velocity; default 0). The folder still "
                             "samples on plain noise, which measured best for the packaged network trained this way; "
                             "--noise-flow on serve/render/eval-default samples with it")
    parser.add_argument("--distil-rollout", type=float, default=None,
                        help="share of distillation samples that start a step from the student's own state (its earlier "
                             "steps run from the trajectory's noise) instead of the teacher's, with the teacher's next "
                             "state as the target (default 0)")


_RESUME_ADOPTS = ("teacher_steps", "distil_trajectories", "distil_steps", "student_steps", "context_drop",
                  "object_weight", "object_weight_sigma", "motion_weight", "cross_attn_drop", "context_shift", "guidance", "distil_rollout",
                  "distil_filter", "noise_flow")


def main(args: argparse.Namespace) -> int:
    if getattr(args, "finetune_decoder", None) is not None:
        if args.finetune_decoder < 1:
            raise ConfigError(f"--finetune-decoder must be at least 1, got {args.finetune_decoder}")
        finetune_decoder_folder(args.output, args.finetune_decoder, args.threads)
        return 0
    if getattr(args, "train_reader", None) is not None:
        if args.train_reader < 1:
            raise ConfigError(f"--train-reader must be at least 1, got {args.train_reader}")
        train_reader_folder(args.output, args.train_reader, args.threads)
        return 0
    cfg = TrainConfig.quick() if args.quick else TrainConfig()
    cfg.seed, cfg.threads = args.seed, args.threads
    saved_meta = args.output / "ltc_model.json"
    saved_net: dict = {}
    if args.resume and saved_meta.is_file():
        # with --resume, settings not given on the command line are the folder's own: a plain
        # `--resume` reuses what is there instead of retraining it with the defaults
        try:
            meta = json.loads(saved_meta.read_text())
            saved, saved_net = meta.get("train", {}), meta.get("net", {})
        except json.JSONDecodeError:
            saved = {}
        for name in _RESUME_ADOPTS:
            if getattr(args, name, None) is None and isinstance(saved.get(name), (int, float)):
                setattr(cfg, name, type(getattr(cfg, name))(saved[name]))
    for name in ("clips", "ae_steps", "teacher_steps", "distil_trajectories", "distil_steps", "student_steps"):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
            setattr(cfg, name, value)
    for name, low, high in (("guidance", 1, 20), ("context_drop", 0, 1), ("object_weight", 0, 100), ("motion_weight", 0, 100),
                            ("cross_attn_drop", 0, 1), ("context_shift", 0, 1), ("object_weight_sigma", 0, 1),
                            ("distil_rollout", 0, 1), ("noise_flow", 0, 1)):
        value = getattr(args, name)
        if value is not None:
            if not low <= value <= high:
                raise ConfigError(f"--{name.replace('_', '-')} must be between {low} and {high}, got {value}")
            setattr(cfg, name, value)
    if args.distil_filter is not None:
        cfg.distil_filter = args.distil_filter
    if args.size % 8 or not 32 <= args.size <= 512:
        raise ConfigError(f"--size must be a multiple of 8 between 32 and 512, got {args.size}")
    # network options off by default; with --resume, the folder's own unless given
    options = {key: getattr(args, key) if getattr(args, key) is not None else bool(saved_net.get(key, False))
               for key in _NETWORK_SWITCHES}
    text_attributes = args.text_attributes if args.text_attributes is not None else bool(saved_net.get("attribute_classes"))
    options["attribute_classes"] = tuple(len(classes) for classes in ATTRIBUTES.values()) if text_attributes else ()
    if cfg.distil_filter and options["residual_context"]:
        raise ConfigError("--distil-filter reads the teacher's chunks as pictures; with --residual-context they are changes")
    for key in ("text_velocity", "colour_palette"):
        if options[key] and not text_attributes:
            raise ConfigError(f"--{key.replace('_', '-')} reads the prompt through the attribute pooling: add --text-attributes")
    if cfg.noise_flow and not options["text_velocity"]:
        raise ConfigError("--noise-flow moves the noise along the velocity the network reads from the prompt: add --text-velocity")
    if options["colour_palette"] and options["residual_context"]:
        raise ConfigError("--colour-palette draws colours; with --residual-context the network draws changes")
    net = NetConfig(height=args.size, width=args.size, cross_attn=True, self_attn=args.self_attn, **options)
    if args.quick:
        net = NetConfig(height=args.size, width=args.size, ae_widths=(8, 8, 16), width0=16, width1=16,
                        blocks0=1, blocks1=1, cond_dim=32, text_queries=2, cross_attn=True, self_attn=args.self_attn,
                        **options)
    if args.init_from is not None and not (args.init_from / "ltc_model.json").is_file():
        raise ConfigError(f"--init-from {args.init_from}: not a default-model folder (no ltc_model.json)")
    train(cfg, net, args.output, resume=args.resume, init_from=args.init_from, device=args.device)
    return 0
