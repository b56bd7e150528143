"""Training data: clips of the procedural world (`world.py`), their captions' token states, object
masks, latents, and the context augmentations the teacher and the distillation share."""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from ..networks import Autoencoder, NetConfig, to_unit
from ..text import shared_text_encoder
from ..world import caption, linear_velocity, object_coverage, render, sample_scene, scene_attributes
from .config import CONTEXT_SHIFT_LEVELS, TrainConfig, progress


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


def render_training_clips(cfg: TrainConfig, net: NetConfig) -> tuple[torch.Tensor, list]:
    """make_dataset's clips, rendered without captions or masks: uint8 [N, Tc + T, H, W, 3] and their
    (scene, start) in order."""
    n_frames = net.context_frames + net.frames_per_chunk
    frames = torch.empty(cfg.clips, n_frames, net.height, net.width, 3, dtype=torch.uint8)
    clips = []
    for i, (scene, start) in enumerate(training_clips(cfg)):  # rendered as drawn, under its progress bar
        frames[i] = torch.from_numpy(render(scene, start, n_frames, net.height, net.width))
        clips.append((scene, start))
    return frames, clips


def embed_captions(captions: list[str], net: NetConfig) -> torch.Tensor:
    encoder = shared_text_encoder(net.max_tokens)
    return torch.cat([encoder.encode_batch(captions[i:i + 256]) for i in range(0, len(captions), 256)])


ATTRIBUTE_CHECK_SEED = 1_500_000_000  # captions for the held-out check of the text adapter


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


def latent_mask(coverage: np.ndarray) -> np.ndarray:
    """Pixel coverage [T, H, W] -> latent-resolution mask [T, H/8, W/8]: the share of each 8x8
    cell an object covers, grown by one latent pixel (the edges decide the shape too)."""
    t, h, w = coverage.shape
    cells = torch.from_numpy(coverage).view(t, 1, h, w)
    cells = F.avg_pool2d(cells, 8)
    return F.max_pool2d(cells, 3, stride=1, padding=1)[:, 0].numpy()


@torch.no_grad()
def encode_frames(ae: Autoencoder, frames: torch.Tensor) -> torch.Tensor:
    """Pixel clips [N, T, H, W, 3] (0-255) -> unscaled latents [N, C, T, h, w]."""
    out = []
    for i in range(0, len(frames), 32):
        z = ae.encoder(to_unit(frames[i:i + 32].flatten(0, 1).to(ae.latent_scale.device)))
        out.append(z.reshape(-1, frames.shape[1], *z.shape[1:]).movedim(2, 1))
    return torch.cat(out)


@torch.no_grad()
def encode_clips(ae: Autoencoder, data) -> torch.Tensor:
    """All clips -> latents [N, C, T, h, w], and sets the autoencoder's latent scale to their std."""
    latents = encode_frames(ae, data["frames"])
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
    return encode_frames(ae, shifted) / ae.latent_scale


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
