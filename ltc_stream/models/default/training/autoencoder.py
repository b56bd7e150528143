"""The per-frame autoencoder's training: L1 + MSE on pixels."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from ..networks import Autoencoder, to_unit
from .config import TrainConfig, cosine_lr, progress, scalar


def fit_autoencoder(ae: Autoencoder, frames: torch.Tensor, params, steps: int, lr: float, batch: int, seed: int,
                    log: list, stage: str, label: str) -> None:
    """`steps` AdamW steps (cosine schedule) on `params` of L1 + MSE between random frames (uint8
    [N, H, W, 3]) and their reconstructions. Losses logged as `stage`; `label` names the progress bar."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    device = ae.latent_scale.device  # the frames stay on the CPU; each batch moves to the network
    for step in progress(range(steps), steps, label):
        cosine_lr(opt, step, steps, lr)
        idx = torch.randint(len(frames), (batch,), generator=gen)
        x = to_unit(frames[idx].to(device))
        recon = ae.decoder(ae.encoder(x))
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.append((stage, step, scalar(loss)))


def train_autoencoder(ae: Autoencoder, data, cfg: TrainConfig, log: list) -> None:
    fit_autoencoder(ae, data["frames"].flatten(0, 1), ae.parameters(), cfg.ae_steps, cfg.lr, cfg.ae_batch, cfg.seed + 1,
                    log, "ae", "autoencoder")
