"""Flowing noise: a chunk's noise partly made of one noise field that travels along the prompt's motion.

Each frame's noise is `sqrt(1 - a^2) * fresh + a * shared`, where `shared` is one field of noise moved,
frame after frame, by the velocity the prompt names: the noise itself then moves the way the picture
should (the motion control of noise-warping methods such as Go-with-the-Flow, which fine-tune the
model on such noise). Moving noise by a fraction of a pixel with interpolation would blur it (its
variance falls and neighbouring pixels correlate), so the field lives at `UPSCALE` times the latent
resolution, moves by whole pixels there (circular rolls keep it independent standard-normal noise),
and is summed back down over UPSCALE x UPSCALE blocks and scaled by 1 / UPSCALE: every latent pixel of
every frame is again a standard normal draw, independent of its neighbours, and the field moves in
steps of 1 / UPSCALE of a latent pixel. A stream keeps its field and how far it has moved, so the
noise flows on across chunks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

UPSCALE = 4  # the field's resolution over the latent's: it moves in quarter latent pixels


def noise_field(batch: int, channels: int, height: int, width: int, generator: torch.Generator,
                device: torch.device | str | None = None) -> torch.Tensor:
    """A fresh field [B, C, height * UPSCALE, width * UPSCALE] of standard normal noise."""
    field = torch.randn(batch, channels, height * UPSCALE, width * UPSCALE, generator=generator,
                        device=generator.device)
    return field if device is None else field.to(device)


def field_frames(field: torch.Tensor, offset: torch.Tensor, velocity: torch.Tensor, frames: int) -> torch.Tensor:
    """The field at `frames` successive frames, summed down to latent resolution: [B, C, T, h, w].
    `offset` [B, 2]: how far (x right, y down, in the field's pixels) the field has moved before the
    first frame; `velocity` [B, 2]: how far it moves per frame, as fractions of the width and height
    (what `networks.translate` takes). Frame t is the field moved by round(offset + t * velocity in
    field pixels), circularly. The shifts are chosen on the host (one copy of the velocity per call,
    once per chunk)."""
    b = field.shape[0]
    per_frame = _field_pixels(velocity, field)
    start = offset.to(torch.float64).cpu()
    out = []
    for t in range(frames):
        shift = torch.round(start + t * per_frame).long()  # [B, 2] whole field pixels
        moved = torch.stack([torch.roll(field[i], (int(shift[i, 1]), int(shift[i, 0])), dims=(-2, -1))
                             for i in range(b)])
        out.append(F.avg_pool2d(moved, UPSCALE) * UPSCALE)  # a sum of UPSCALE^2 unit normals / UPSCALE
    return torch.stack(out, dim=2)


def _field_pixels(velocity: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
    """`velocity` [B, 2] (fractions of the width and height per frame) in `field`'s pixels, on the host."""
    hh, ww = field.shape[-2:]
    return velocity.to(torch.float64).cpu() * torch.tensor([ww, hh], dtype=torch.float64)


def mix(fresh: torch.Tensor, shared: torch.Tensor, weight: torch.Tensor | float) -> torch.Tensor:
    """`sqrt(1 - a^2) * fresh + a * shared`, per sample when `weight` is a tensor [B]: standard normal
    noise again, `a^2` of whose variance travels."""
    if not torch.is_tensor(weight):
        weight = torch.full((fresh.shape[0],), float(weight))
    a = weight.to(fresh.device, fresh.dtype).view(-1, *([1] * (fresh.ndim - 1)))
    return torch.sqrt(1 - a * a) * fresh + a * shared.to(fresh.device, fresh.dtype)
