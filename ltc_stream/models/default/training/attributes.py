"""The denoiser's prompt reading, trained before the teacher: the attribute pooling (an auxiliary
classification of the scene's attributes from the caption) and the velocity head on it."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from ..networks import Denoiser
from ..world import ATTRIBUTES
from .config import TrainConfig, cosine_lr, progress, scalar


def attribute_accuracy(model: Denoiser, tokens: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Per attribute, the share of captions the text adapter reads right."""
    with torch.no_grad():
        logits = model.attribute_logits(tokens)
    return {name: round(float((out.argmax(1) == labels[:, j]).float().mean()), 4)
            for j, (name, out) in enumerate(zip(ATTRIBUTES, logits))}


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
        cosine_lr(opt, step, cfg.attribute_steps, cfg.lr)
        idx = torch.randint(len(tokens), (cfg.attribute_batch,), generator=gen)
        logits = model.attribute_logits(tokens[idx])
        loss = sum(F.cross_entropy(out, labels[idx, j]) for j, out in enumerate(logits))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.append(("attributes", step, scalar(loss)))


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
        cosine_lr(opt, step, steps, 1e-2)
        loss = (head(probs) / scale - target / scale).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    head.requires_grad_(False)
    with torch.no_grad():
        return scalar((head(probs) - target).pow(2).mean().sqrt())
