"""An analytic model whose exact denoiser is known: data drawn from a Gaussian mixture over
video-shaped tensors [C, T, H, W].

For components k with weight pi_k, mean mu_k and isotropic std s_k, under the flow-matching
noising x = (1 - sigma) x0 + sigma n:
    x | k ~ N(a mu_k, (a^2 s_k^2 + sigma^2) I),  a = 1 - sigma
    E[x0 | x, k] = mu_k + a s_k^2 / (a^2 s_k^2 + sigma^2) * (x - a mu_k)
    E[x0 | x]    = sum_k p(k | x) E[x0 | x, k]
so `denoise` is the exact minimum-MSE denoiser: LTC can be tested without a trained network.
"""
from __future__ import annotations

import math

import torch


class GaussianMixtureOracle:
    def __init__(self, shape: tuple[int, ...] = (4, 8, 8, 8), components: int = 6, seed: int = 0):
        self.shape = tuple(shape)
        gen = torch.Generator().manual_seed(seed)
        c, t, h, w = self.shape
        # Structured means: moving low-frequency waves, a different one per component, so the
        # trajectories curve as the posterior commits to a component.
        tt, yy, xx = torch.meshgrid(torch.linspace(0, 1, t), torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
        means = []
        for _ in range(components):
            fx, fy, speed = (torch.rand(3, generator=gen) * torch.tensor([3.0, 3.0, 2.0])).tolist()
            phase = torch.rand(c, 1, 1, 1, generator=gen) * 2 * math.pi
            amp = 0.4 + 0.8 * torch.rand(c, 1, 1, 1, generator=gen)
            means.append(amp * torch.sin(2 * math.pi * (fx * xx + fy * yy + speed * tt) + phase))
        self.means = torch.stack(means).double()  # [K, C, T, H, W]
        self.stds = (0.05 + 0.45 * torch.rand(components, generator=gen)).double()
        self.log_weights = torch.log_softmax(torch.randn(components, generator=gen).double(), 0)
        self.dim = self.means[0].numel()

    def sample_x0(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        k = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        noise = torch.randn((n, *self.shape), generator=generator, dtype=torch.float64)
        return (self.means[k] + self.stds[k].view(-1, 1, 1, 1, 1) * noise).float()

    def noise(self, n: int, seed: int) -> torch.Tensor:
        return torch.randn((n, *self.shape), generator=torch.Generator().manual_seed(seed))

    def denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """Exact E[x0 | x_sigma] for a batch x [B, C, T, H, W]."""
        xd = x.double()
        a = 1.0 - float(sigma)
        var = a * a * self.stds**2 + float(sigma) ** 2  # [K]
        diff = xd[:, None] - a * self.means[None]  # [B, K, ...]
        sq = diff.flatten(2).pow(2).sum(-1)  # [B, K]
        logp = self.log_weights[None] - 0.5 * self.dim * torch.log(var)[None] - 0.5 * sq / var[None]
        resp = torch.softmax(logp, dim=1)  # p(k | x)
        gain = (a * self.stds**2 / var).view(1, -1, *[1] * len(self.shape))
        per_k = self.means[None] + gain * diff
        return (resp.view(*resp.shape, *[1] * len(self.shape)) * per_k).sum(1).to(x.dtype)

    __call__ = denoise
