"""Reader guidance: a small network that reads, at every latent pixel of a chunk, which named colour
is drawn there and whether it is part of an object; at sampling time the denoiser's x0 estimate is
moved one gradient step towards the colours the prompt names (object colour on the pixels the
reader takes for object, background colour elsewhere).

Why: the denoiser mixes the colours a prompt names (a blue background drawn towards the object's
purple, orange towards red; git tag lab-2026-11-27's model card, "Where the colours go wrong"), and its first estimate from
pure noise already carries the mix. This is classifier guidance (Dhariwal & Nichol 2021) applied to
the x0 estimate: the reader is trained on the training clips' latents and on the student's own x0
estimates of them, labelled from the world's ground truth; what the prompt names comes from the
denoiser's own attribute pooling (the text), never from a scene.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .world import COLOURS

IGNORE = -100  # colour label of latent pixels the reader is not taught (cross_entropy's ignore_index)
OBJECT_CELL = 0.5  # share of an 8x8 cell an object covers for the cell to count as object
AMBIGUOUS_CELL = 0.15  # cells covered more than this but not OBJECT_CELL are left out of the object loss
BACKGROUND_CELL = 0.02  # cells covered less than this are background
READER_MIN_SIGMA = 0.9  # guidance on the x0 estimate of the first step only (from pure noise: where the colours are laid out)
MAX_GUIDANCE = 2.0


class ColourReader(nn.Module):
    """Latents [B, C, T, h, w] -> (colour logits [B, colours, T, h, w], object logit [B, T, h, w]).
    Four (2+1)-D residual convolutions at latent resolution (receptive field 9x9 latent pixels, 9 frames)."""

    def __init__(self, latent_channels: int, width: int = 48, colours: int = len(COLOURS)):
        super().__init__()

        def block(cin: int, cout: int, kernel=(3, 3, 3)) -> nn.Sequential:
            return nn.Sequential(nn.Conv3d(cin, cout, kernel, padding=tuple(k // 2 for k in kernel)),
                                 nn.GroupNorm(8, cout), nn.SiLU())

        self.stem = block(latent_channels, width)
        self.blocks = nn.ModuleList([block(width, width), block(width, width), block(width, width, (1, 3, 3))])
        self.out = nn.Conv3d(width, colours + 1, 1)
        self.colours = colours

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.stem(x)
        for blk in self.blocks:
            h = h + blk(h)
        out = self.out(h)
        return out[:, : self.colours], out[:, self.colours]


def cell_labels(coverage: np.ndarray, scene) -> tuple[torch.Tensor, torch.Tensor]:
    """One clip's labels from its objects' pixel coverage [T, H, W] (world.object_coverage):
    colour index per latent pixel [T, h, w] (the object's colour on object cells of one-object
    scenes, the background's on uncovered cells of plain backgrounds, else IGNORE) and object
    target [T, h, w] (1 object, 0 background, -1 ignored: partly covered cells)."""
    names = list(COLOURS)
    cell = F.avg_pool2d(torch.from_numpy(coverage).float()[:, None], 8)[:, 0]
    obj = (cell > OBJECT_CELL).float()
    obj[(cell > AMBIGUOUS_CELL) & (cell <= OBJECT_CELL)] = -1
    colour = torch.full(cell.shape, IGNORE, dtype=torch.long)
    if len(scene.objects) == 1:
        colour[cell > OBJECT_CELL] = names.index(scene.main.colour)
    if scene.background == "plain":
        colour[cell < BACKGROUND_CELL] = names.index(scene.bg_colours[0])
    return colour, obj


def reader_loss(reader: ColourReader, x: torch.Tensor, colour: torch.Tensor, obj: torch.Tensor) -> torch.Tensor:
    colour_logits, object_logit = reader(x)
    valid = obj >= 0
    return (F.cross_entropy(colour_logits, colour, ignore_index=IGNORE)
            + F.binary_cross_entropy_with_logits(object_logit[valid], obj[valid]))


@torch.no_grad()
def reader_accuracy(reader: ColourReader, x: torch.Tensor, colour: torch.Tensor, obj: torch.Tensor) -> dict[str, float]:
    """Share of labelled latent pixels read right: colour on background cells, colour on object
    cells, object or not."""
    colour_logits, object_logit = reader(x)
    seen = colour_logits.argmax(1)
    labelled = colour != IGNORE
    on_object, on_background = labelled & (obj == 1), labelled & (obj == 0)
    return {"background_colour": float((seen == colour)[on_background].float().mean()),
            "object_colour": float((seen == colour)[on_object].float().mean()),
            "object": float(((object_logit > 0).float() == obj)[obj >= 0].float().mean())}


def guide_x0(reader: ColourReader, x0: torch.Tensor, object_probs: torch.Tensor, background_probs: torch.Tensor,
             eta: float) -> torch.Tensor:
    """One gradient step of `eta` on x0 [B, C, T, h, w] down the cross-entropy between the reader's
    colour at each latent pixel and the prompt's colour for what the reader takes that pixel for:
    `object_probs` [B, colours] where its object logit is positive, `background_probs` elsewhere
    (summed over pixels, so a pixel already read as the right colour is barely moved)."""
    with torch.enable_grad():
        y = x0.detach().requires_grad_(True)
        colour_logits, object_logit = reader(y)
        is_object = (object_logit.detach() > 0).float()[:, None]
        target = (is_object * object_probs[:, :, None, None, None]
                  + (1 - is_object) * background_probs[:, :, None, None, None])
        loss = -(target * colour_logits.log_softmax(1)).sum()
        grad, = torch.autograd.grad(loss, y)
    return (y - eta * grad).detach()
