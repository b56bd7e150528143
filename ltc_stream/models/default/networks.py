"""The default model's networks: a per-frame 8x autoencoder and a causal, text-conditioned
(2+1)-D convolutional denoiser that predicts the flow-matching velocity of a chunk of latents.

Sizes are set by `NetConfig` (saved in ltc_model.json), so the tests can build tiny ones.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .text import EMBED_DIM


# architecture switches that were tried and not shipped (git tag lab-2026-11-27 keeps them); folders
# written before they were removed name them as false
REMOVED_SWITCHES = ("rel_pos", "residual_context", "colour_palette")


@dataclass
class NetConfig:
    height: int = 128
    width: int = 128
    latent_channels: int = 8
    frames_per_chunk: int = 8
    context_frames: int = 2  # latent frames of the previous chunk the denoiser sees
    ae_widths: tuple[int, ...] = (16, 32, 64)  # full, 1/2, 1/4 resolution; latent at 1/8
    width0: int = 48  # denoiser width at latent resolution
    width1: int = 96  # denoiser width at half latent resolution
    blocks0: int = 2
    blocks1: int = 2
    cond_dim: int = 128
    text_queries: int = 4
    max_tokens: int = 16
    text_dim: int = EMBED_DIM
    cross_attn: bool = False  # token cross-attention in the half-resolution blocks (new models: True)
    self_attn: bool = False  # self-attention over the chunk's half-resolution positions (global context)
    heads: int = 4
    # classes per scene attribute (world.ATTRIBUTES) read by a second text pooling trained with an
    # auxiliary classification loss; its features join the FiLM condition. Empty: off
    attribute_classes: tuple[int, ...] = ()
    # a depthwise 3x3x3 (frame, row, column) convolution beside each block's temporal one: a channel
    # can carry itself to a neighbouring position in the next frame, which is how things move
    motion_conv: bool = False
    # FiLM on the output norm (DiT's adaptive final layer): the condition can set the output's
    # per-channel offset, which every group norm before it removes; without it, a colour that
    # covers the whole picture has to come through the token cross-attention
    adaptive_output: bool = False
    # motion read from the prompt: a small head on the attribute classifier's probabilities (fitted
    # to the training captions' velocities, needs attribute_classes) gives a velocity per frame; each
    # block also mixes its neighbouring frames moved by it, and the context frames are moved by it
    # to where the chunk's frames are, so following the named direction is alignment, not search
    text_velocity: bool = False
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "NetConfig":
        removed = [key for key in REMOVED_SWITCHES if data.get(key)]
        if removed:  # a folder trained with an architecture option that was tried and not shipped
            raise ValueError(f"trained with {', '.join(removed)}, which this version no longer builds "
                             "(git tag lab-2026-11-27 has it)")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("ae_widths", "attribute_classes"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)


# ---------------------------------------------------------------------------------------------
# Autoencoder: frames [N, 3, H, W] in [-1, 1] <-> latents [N, C, H/8, W/8]
# ---------------------------------------------------------------------------------------------
class Encoder(nn.Module):
    def __init__(self, cfg: NetConfig):
        super().__init__()
        w = cfg.ae_widths
        self.net = nn.Sequential(
            nn.Conv2d(3, w[0], 3, padding=1), nn.SiLU(),
            nn.Conv2d(w[0], w[1], 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(w[1], w[2], 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(w[2], w[2], 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(w[2], w[2], 3, padding=1), nn.SiLU(),
            nn.Conv2d(w[2], cfg.latent_channels, 1),
        )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.net(frames)


class Decoder(nn.Module):
    """Thin at full resolution: the high-resolution layers dominate decoding cost on CPU."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        w = cfg.ae_widths
        self.net = nn.Sequential(
            nn.Conv2d(cfg.latent_channels, w[2], 3, padding=1), nn.SiLU(),
            nn.Conv2d(w[2], w[2], 3, padding=1), nn.SiLU(),
            nn.ConvTranspose2d(w[2], w[1], 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(w[1], w[1], 3, padding=1), nn.SiLU(),
            nn.ConvTranspose2d(w[1], w[0], 4, stride=2, padding=1), nn.SiLU(),
            nn.ConvTranspose2d(w[0], w[0], 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(w[0], 3, 3, padding=1),
        )

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.net(latents)


def from_unit(images: torch.Tensor) -> np.ndarray:
    """float [..., 3, H, W] in [-1, 1] (clipped) -> uint8 [..., H, W, 3]: the inverse of `train.to_unit`."""
    return ((images.clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).movedim(-3, -1).cpu().numpy()


def to_unit(frames_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float [..., 3, H, W] in [-1, 1]."""
    return frames_uint8.movedim(-1, -3).float() / 127.5 - 1.0


class Autoencoder(nn.Module):
    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        # Latents are divided by this so the diffusion model sees unit variance (set after training).
        self.register_buffer("latent_scale", torch.ones(()))

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return self.encoder(frames) / self.latent_scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents * self.latent_scale)


# ---------------------------------------------------------------------------------------------
# Denoiser
# ---------------------------------------------------------------------------------------------
def sigma_embedding(sigma: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of 1000*sigma (the usual timestep embedding, in sigma units)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=sigma.device, dtype=torch.float32) / half)
    args = 1000.0 * sigma.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class TextPooling(nn.Module):
    """Learned queries attend over the prompt's token states (padding rows masked out)."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(cfg.text_queries, cfg.text_dim) * 0.02)
        self.key = nn.Linear(cfg.text_dim, cfg.text_dim)
        self.out = nn.Linear(cfg.text_queries * cfg.text_dim, cfg.cond_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = tokens.abs().sum(-1) > 0  # [B, L]; blended prompts keep the union of both masks
        scores = torch.einsum("qd,bld->bql", self.queries, self.key(tokens)) / math.sqrt(tokens.shape[-1])
        scores = scores.masked_fill(~mask[:, None, :], -1e4)
        pooled = torch.einsum("bql,bld->bqd", scores.softmax(-1), tokens)
        return self.out(pooled.flatten(1))


def translate(frames: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Move the content of `frames` [N, C, h, w] by `shift` [N, 2] (x right, y down; fractions of
    the frame's width and height; fractional shifts interpolate bilinearly, zeros enter)."""
    n = frames.shape[0]
    theta = frames.new_zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, :, 2] = -2.0 * shift.to(frames.dtype)  # output(p) = input(p - shift); grid units span 2
    grid = F.affine_grid(theta, list(frames.shape), align_corners=False)
    return F.grid_sample(frames, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def translate_chunk(h: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """`translate` for every frame of a chunk [B, C, T, h, w] by `shift` [B, T, 2] (or [B, 2]: the
    same for every frame)."""
    b, c, t, hh, ww = h.shape
    if shift.ndim == 2:
        shift = shift[:, None].expand(b, t, 2)
    flat = h.transpose(1, 2).reshape(b * t, c, hh, ww)
    return translate(flat, shift.reshape(b * t, 2)).view(b, t, c, hh, ww).transpose(1, 2)


def along_motion(y: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
    """Each frame's neighbours moved to where the motion takes them: for frame t, frame t-1 moved by
    +velocity and frame t+1 moved by -velocity (zero beyond the chunk), as channels [B, 2C, T, h, w].
    Where things move by `velocity` [B, 2] per frame, both line up with frame t."""
    zero = y[:, :, :1] * 0
    prev = torch.cat([zero, translate_chunk(y[:, :, :-1], velocity)], dim=2)
    nxt = torch.cat([translate_chunk(y[:, :, 1:], -velocity), zero], dim=2)
    return torch.cat([prev, nxt], dim=1)


class FiLMBlock(nn.Module):
    """(2+1)-D residual block: spatial 3x3 conv, FiLM from the condition, temporal 3-tap conv;
    with `motion`, also a depthwise 3x3x3 conv (each channel moved by its own learned kernel, so
    the condition moves things by choosing channels). New outputs are zero-initialised."""

    def __init__(self, width: int, cond_dim: int, motion: bool = False, along: bool = False):
        super().__init__()
        self.norm = nn.GroupNorm(8, width)
        self.spatial = nn.Conv3d(width, width, (1, 3, 3), padding=(0, 1, 1))
        self.film = nn.Linear(cond_dim, 2 * width)
        self.temporal = nn.Conv3d(width, width, (3, 1, 1), padding=(1, 0, 0))
        nn.init.zeros_(self.temporal.weight)
        nn.init.zeros_(self.temporal.bias)
        self.motion = None
        if motion:  # created last: blocks without it draw the same initialisation as before
            self.motion = nn.Conv3d(width, width, 3, padding=1, groups=width)
            nn.init.zeros_(self.motion.weight)
            nn.init.zeros_(self.motion.bias)
        self.along = None
        if along:  # the neighbouring frames moved along the prompt's velocity (`along_motion`)
            self.along = nn.Conv3d(2 * width, width, 1)
            nn.init.zeros_(self.along.weight)
            nn.init.zeros_(self.along.bias)

    def forward(self, h: torch.Tensor, cond: torch.Tensor, velocity: torch.Tensor | None = None) -> torch.Tensor:
        scale, shift = self.film(cond)[:, :, None, None, None].chunk(2, dim=1)
        y = self.spatial(F.silu(self.norm(h)))
        y = F.silu(y * (1 + scale) + shift)
        out = self.temporal(y)
        if self.motion is not None:
            out = out + self.motion(y)
        if self.along is not None:
            out = out + self.along(along_motion(y, velocity))
        return h + out


class _ChunkAttention(nn.Module):
    """Shared frame of the denoiser's attention layers: normalise, flatten the chunk's positions
    [B, C, T, h, w] -> [B, N, C], attend (`attend`, per subclass), project with a zero-initialised
    output (so adding the layer to a trained network starts as the identity), add back."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(8, width)

    def _make_output(self, width: int) -> None:
        """Called last by subclasses, so parameters are created (and draw from the RNG) in the
        order the saved models were trained with."""
        self.o = nn.Linear(width, width)
        nn.init.zeros_(self.o.weight)
        nn.init.zeros_(self.o.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, C] -> [B, heads, N, C / heads]."""
        b, n, c = x.shape
        return x.view(b, n, self.heads, c // self.heads).transpose(1, 2)

    def attend(self, x: torch.Tensor, shape: tuple[int, int, int], *args) -> torch.Tensor:
        """x [B, N, C] for the chunk's (frames, rows, columns) = `shape` positions."""
        raise NotImplementedError

    def forward(self, h: torch.Tensor, *args) -> torch.Tensor:
        b, c, t, hh, ww = h.shape
        x = self.norm(h).permute(0, 2, 3, 4, 1).reshape(b, t * hh * ww, c)
        out = self.attend(x, (t, hh, ww), *args)  # [B, heads, N, C / heads]
        out = self.o(out.transpose(1, 2).reshape(b, t * hh * ww, c))
        return h + out.view(b, t, hh, ww, c).permute(0, 4, 1, 2, 3)


class TokenCrossAttention(_ChunkAttention):
    """Every latent position attends over the prompt's token states (padding masked), so words
    can land on the part of the picture they describe ("red" on the ball, "blue" on the sky)."""

    def __init__(self, width: int, text_dim: int, heads: int):
        super().__init__(width, heads)
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(text_dim, 2 * width)
        self.null_kv = nn.Parameter(torch.zeros(2, width))  # always attendable: the empty prompt is defined
        self._make_output(width)

    def attend(self, x: torch.Tensor, shape: tuple[int, int, int], tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[0], x.shape[2]
        kv = torch.cat([self.null_kv.expand(b, 1, 2, c), self.kv(tokens).view(b, tokens.shape[1], 2, c)], 1)
        k, v = self._heads(kv[:, :, 0]), self._heads(kv[:, :, 1])
        mask = torch.cat([mask.new_ones(b, 1), mask], 1)
        return F.scaled_dot_product_attention(self._heads(self.q(x)), k, v, attn_mask=mask[:, None, None, :])


class ChunkSelfAttention(_ChunkAttention):
    """Every half-resolution position of the chunk (all frames) attends to every other: the
    convolutions see a few latent pixels, this sees the whole chunk, so one colour holds for the
    whole background and one object stays one object."""

    def __init__(self, width: int, heads: int):
        super().__init__(width, heads)
        self.qkv = nn.Linear(width, 3 * width)
        self._make_output(width)

    def attend(self, x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v))


class Denoiser(nn.Module):
    """Predicts the flow-matching velocity v = noise - x0 of a latent chunk [B, C, T, h, w],
    given sigma, the prompt's token states and the previous chunk's last latent frames."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        c, w0, w1 = cfg.latent_channels, cfg.width0, cfg.width1
        in_ch = c + c * cfg.context_frames + 1  # noisy chunk, context frames, has-context flag
        self.text = TextPooling(cfg)
        self.sigma_mlp = nn.Sequential(nn.Linear(cfg.cond_dim, cfg.cond_dim), nn.SiLU(), nn.Linear(cfg.cond_dim, cfg.cond_dim))
        self.cond_mlp = nn.Sequential(nn.SiLU(), nn.Linear(cfg.cond_dim, cfg.cond_dim))
        self.frame_pos = nn.Parameter(torch.zeros(1, w0, cfg.frames_per_chunk, 1, 1))
        self.inp = nn.Conv3d(in_ch, w0, (1, 3, 3), padding=(0, 1, 1))
        mv = cfg.text_velocity
        self.down_blocks = nn.ModuleList(FiLMBlock(w0, cfg.cond_dim, cfg.motion_conv, mv) for _ in range(cfg.blocks0))
        self.down = nn.Conv3d(w0, w1, (1, 4, 4), stride=(1, 2, 2), padding=(0, 1, 1))
        self.mid_blocks = nn.ModuleList(FiLMBlock(w1, cfg.cond_dim, cfg.motion_conv, mv) for _ in range(cfg.blocks1))
        self.cross = nn.ModuleList(TokenCrossAttention(w1, cfg.text_dim, cfg.heads) for _ in range(cfg.blocks1)) \
            if cfg.cross_attn else None
        self.attn = nn.ModuleList(ChunkSelfAttention(w1, cfg.heads) for _ in range(cfg.blocks1)) \
            if cfg.self_attn else None
        self.up = nn.ConvTranspose3d(w1, w0, (1, 4, 4), stride=(1, 2, 2), padding=(0, 1, 1))
        self.up_blocks = nn.ModuleList(FiLMBlock(w0, cfg.cond_dim, cfg.motion_conv, mv) for _ in range(cfg.blocks0))
        self.out_norm = nn.GroupNorm(8, w0)
        self.out = nn.Conv3d(w0, c, (1, 3, 3), padding=(0, 1, 1))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        # Created last, so networks without them draw the same initialisation as before.
        self.out_film = None
        if cfg.adaptive_output:
            self.out_film = nn.Linear(cfg.cond_dim, 2 * w0)
            nn.init.zeros_(self.out_film.weight)
            nn.init.zeros_(self.out_film.bias)
        self.attr_text = self.attr_head = self.attr_proj = None
        if cfg.attribute_classes:
            self.attr_text = TextPooling(cfg)
            self.attr_head = nn.Linear(cfg.cond_dim, sum(cfg.attribute_classes))
            self.attr_proj = nn.Linear(cfg.cond_dim, cfg.cond_dim)
            nn.init.zeros_(self.attr_proj.weight)  # adding it to a trained network starts as the same function
            nn.init.zeros_(self.attr_proj.bias)
        self.velocity_head = self.ctx_along = None
        if cfg.text_velocity:
            if not cfg.attribute_classes:
                raise ValueError("text_velocity reads the attribute pooling: it needs attribute_classes")
            # from the attribute head's class probabilities (motion times speed is a product: a hidden
            # layer); trained on its own, after the attribute pooling (train.fit_velocity_head)
            self.velocity_head = nn.Sequential(nn.Linear(sum(cfg.attribute_classes), 64), nn.SiLU(), nn.Linear(64, 2))
            self.ctx_along = nn.Conv3d(c * cfg.context_frames, w0, (1, 3, 3), padding=(0, 1, 1))
            nn.init.zeros_(self.ctx_along.weight)
            nn.init.zeros_(self.ctx_along.bias)

    def attribute_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """The prompt read for the scene's attributes: [B, cond_dim]."""
        return F.silu(self.attr_text(tokens))

    def attribute_logits(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Per attribute (world.ATTRIBUTES order), logits [B, classes] of what the prompt says."""
        return list(self.attr_head(self.attribute_features(tokens)).split(list(self.cfg.attribute_classes), dim=1))

    MAX_VELOCITY = 0.1  # of the frame per frame; the world's fastest is 0.027

    def attribute_probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """From `attribute_features`, each attribute's class probabilities side by side: [B, sum(classes)]."""
        logits = self.attr_head(features).split(list(self.cfg.attribute_classes), dim=1)
        return torch.cat([out.softmax(-1) for out in logits], dim=1)

    def velocity(self, tokens: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """The motion the prompt names, per frame as a fraction of the frame's smaller side (x right,
        y down): [B, 2]. `features`: the prompt's `attribute_features`, when already computed."""
        if features is None:
            features = self.attribute_features(tokens)
        return self.velocity_head(self.attribute_probabilities(features)).clamp(-self.MAX_VELOCITY, self.MAX_VELOCITY)

    def grid_velocity(self, tokens: torch.Tensor, height: int, width: int, features: torch.Tensor | None = None) -> torch.Tensor:
        """`velocity` (of the smaller side, as the world's speeds) as fractions of the width and of the
        height of a `height` x `width` grid: what `translate` takes. [B, 2]."""
        side = min(height, width)
        return self.velocity(tokens, features) * tokens.new_tensor([side / width, side / height])

    def moved_context(self, context: torch.Tensor, velocity: torch.Tensor, frames: int) -> torch.Tensor:
        """The context frames [B, C, Tc, h, w] moved, for each of the chunk's `frames`, to where the
        prompt's motion has taken them by then (context frame j is Tc - j + t frames before chunk
        frame t): channels [B, C * Tc, frames, h, w], ordered like the unmoved context's."""
        b, c, tc, hh, ww = context.shape
        step = dict(dtype=velocity.dtype, device=velocity.device)
        lag = (tc - torch.arange(tc, **step))[:, None] + torch.arange(frames, **step)[None]
        shift = lag[None, :, :, None] * velocity[:, None, None, :]  # [B, Tc, T, 2]
        rep = context[:, :, :, None].expand(b, c, tc, frames, hh, ww).reshape(b, c, tc * frames, hh, ww)
        moved = translate_chunk(rep, shift.reshape(b, tc * frames, 2))
        return moved.reshape(b, c * tc, frames, hh, ww)

    def condition(self, sigma: torch.Tensor, tokens: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """`features`: the prompt's `attribute_features`, when already computed."""
        cond = self.text(tokens) + self.sigma_mlp(sigma_embedding(sigma, self.cfg.cond_dim))
        if self.attr_text is not None:
            cond = cond + self.attr_proj(self.attribute_features(tokens) if features is None else features)
        return self.cond_mlp(cond)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, tokens: torch.Tensor, context: torch.Tensor | None,
                cross_keep: torch.Tensor | None = None) -> torch.Tensor:
        """`cross_keep` [B] bool (training): False makes a sample's cross-attention see the empty
        prompt, so the FiLM path has to carry the prompt alone."""
        b, c, t, hh, ww = x.shape
        if sigma.ndim == 0:
            sigma = sigma.expand(b)
        if context is None:
            ctx = x.new_zeros(b, c * self.cfg.context_frames, t, hh, ww)
            flag = x.new_zeros(b, 1, t, hh, ww)
        else:  # context [B, C, Tc, h, w] -> channels, broadcast over the chunk's frames
            ctx = context.reshape(b, c * self.cfg.context_frames, 1, hh, ww).expand(-1, -1, t, -1, -1)
            flag = x.new_ones(b, 1, t, hh, ww)
        # the prompt's attribute reading, once per call: the condition and the velocity both use it
        features = self.attribute_features(tokens) if self.attr_text is not None else None
        cond = self.condition(sigma, tokens, features)
        h = self.inp(torch.cat([x, ctx, flag], dim=1)) + self.frame_pos[:, :, :t]
        velocity = None
        if self.velocity_head is not None:
            velocity = self.grid_velocity(tokens, hh, ww, features)
            if context is not None:
                h = h + self.ctx_along(self.moved_context(context, velocity, t))
        for block in self.down_blocks:
            h = block(h, cond, velocity)
        skip = h
        h = self.down(h)
        mask = tokens.abs().sum(-1) > 0
        if cross_keep is not None:
            mask = mask & cross_keep[:, None]
        for i, block in enumerate(self.mid_blocks):
            h = block(h, cond, velocity)
            if self.attn is not None:
                h = self.attn[i](h)
            if self.cross is not None:
                h = self.cross[i](h, tokens, mask)
        h = self.up(h) + skip
        for block in self.up_blocks:
            h = block(h, cond, velocity)
        h = self.out_norm(h)
        if self.out_film is not None:
            scale, shift = self.out_film(cond)[:, :, None, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        return self.out(F.silu(h))
