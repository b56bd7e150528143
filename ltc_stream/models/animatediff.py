"""AnimateDiff(-Lightning) streamed as overlapping windows, sampled through the LTC sampler.

The UNet with its motion modules (diffusers' `UNetMotionModel`, as `AnimateDiffPipeline` builds
it) denoises a window of `window` frames. After the first window, each chunk keeps the last
`overlap` clean latent frames of the previous window as known frames: at every step they are
held on the path `(1 - sigma) x0_known + sigma * eps_fixed` (their x0 prediction is replaced by the
known latents), so the motion modules continue the motion and the new `window - overlap` frames
join without a seam.

Sampling runs in flow-matching coordinates so that LTC's Euler sampler applies unchanged: an
epsilon-prediction model at VE sigma `s` is the same deterministic (DDIM / Euler) sampler in
`sigma = s / (1 + s)`, `x = x_ve / (1 + s)`. The schedule (Lightning's trailing timesteps) comes
from the folder's own scheduler config.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..ltc import LTCWeights, sample
from .base import ChunkResult, ModelOption, VideoModel

# the settings an operator may override with `--model-option KEY=VALUE` (load_model checks them)
OPTIONS = {
    "window": ModelOption(int, 16, "frames the UNet denoises at once", minimum=2),
    "overlap": ModelOption(int, 4, "clean frames each window keeps from the previous one", minimum=0),
}


@dataclass
class WindowState:
    generator: torch.Generator
    chunk_index: int = 0
    known: torch.Tensor | None = None  # clean latents of the overlap frames [1, C, O, h, w]
    known_noise: torch.Tensor | None = None


class AnimateDiffStreamModel(VideoModel):
    def __init__(self, unet, vae, scheduler, *, encode_text, height: int = 512, width: int = 512, steps: int = 4,
                 window: int = 16, overlap: int = 4, guidance_scale: float = 1.0,
                 negative_embedding: torch.Tensor | None = None, fps: float = 16.0, tiny_decoder=None,
                 name: str = "animatediff-lightning", ltc_weights: LTCWeights | None = None):
        if not 0 <= overlap < window:
            raise ConfigError(f"overlap must be in [0, window), got overlap={overlap}, window={window}")
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        if height % factor or width % factor:
            raise ConfigError(f"height and width must be multiples of {factor}, got {height}x{width}")
        prediction = scheduler.config.get("prediction_type", "epsilon")
        if prediction not in ("epsilon", "v_prediction"):
            raise ConfigError(f"unsupported prediction_type {prediction!r} (epsilon or v_prediction)")
        if not hasattr(scheduler, "sigmas"):
            raise ConfigError(f"{type(scheduler).__name__} exposes no sigmas; use EulerDiscreteScheduler "
                              "(AnimateDiff-Lightning's own: timestep_spacing='trailing')")
        self.unet, self.vae, self.scheduler = unet, vae, scheduler
        self.prediction = scheduler.config.get("prediction_type", "epsilon")
        self.encode_text = encode_text
        self.name, self.height, self.width, self.fps = name, height, width, fps
        self.window, self.overlap = window, overlap
        self.frames_per_chunk = window - overlap
        self.steps = steps
        self.guidance_scale, self.negative_embedding = guidance_scale, negative_embedding
        self.tiny_decoder = tiny_decoder
        self.factor = factor
        self.device = next(unet.parameters()).device
        self.dtype = next(unet.parameters()).dtype
        self.ltc_weights = ltc_weights
        scheduler.set_timesteps(steps, device="cpu")
        ve = [float(s) for s in scheduler.sigmas[:-1]]
        self.timesteps = [float(t) for t in scheduler.timesteps]
        self.sigmas = [s / (1 + s) for s in ve] + [0.0]  # flow-matching sigmas of the same sampler
        self._t_of = dict(zip(self.sigmas[:-1], self.timesteps))

    def encode_prompt(self, text: str) -> torch.Tensor:
        return self.cached_embedding(text, self.encode_text)

    def new_stream(self, seed: int = 0) -> WindowState:
        return WindowState(generator=torch.Generator(device=self.device).manual_seed(int(seed)))

    def latent_shape(self, frames: int, batch: int = 1) -> tuple[int, ...]:
        return (batch, self.unet.config.in_channels, frames, self.height // self.factor, self.width // self.factor)

    def _eps(self, x_in: torch.Tensor, t: float, emb: torch.Tensor) -> torch.Tensor:
        ts = torch.full((x_in.shape[0],), t, device=x_in.device)
        emb = emb.repeat_interleave(x_in.shape[2], dim=0)  # per frame, as AnimateDiffPipeline passes it
        return self.unet(x_in.to(self.dtype), ts, encoder_hidden_states=emb).sample.float()

    def denoiser_fn(self, embedding: torch.Tensor, known: torch.Tensor | None):
        emb = embedding if embedding.ndim == 3 else embedding[None]
        guided = self.guidance_scale != 1.0 and self.negative_embedding is not None
        o = 0 if known is None else known.shape[2]

        def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
            s = sigma / (1 - sigma)  # VE sigma
            x_ve = x * (1 + s)
            x_in = x_ve / (s * s + 1) ** 0.5  # = sqrt(abar) x0 + sqrt(1 - abar) eps
            t = self._t_of[sigma]
            if guided:  # one batch: a skipped step skips the whole guided batch
                neg = self.negative_embedding.expand_as(emb)
                e_u, e_c = self._eps(torch.cat([x_in, x_in]), t, torch.cat([neg, emb])).chunk(2)
                out = e_u + self.guidance_scale * (e_c - e_u)
            else:
                out = self._eps(x_in, t, emb)
            if self.prediction == "v_prediction":  # x0 = sqrt(abar) x_in - sqrt(1-abar) v
                a = 1 / (s * s + 1) ** 0.5
                x0 = a * x_in - (1 - a * a) ** 0.5 * out
            else:
                x0 = x_ve - s * out
            if o:
                x0 = torch.cat([known.to(x0), x0[:, :, o:]], 2)
            return x0

        return denoise

    @torch.no_grad()
    def generate_chunk(self, state: WindowState, embedding: torch.Tensor, *, ltc: bool = True) -> ChunkResult:
        t0 = time.perf_counter()
        s0 = self.sigmas[0]
        x = s0 * torch.randn(self.latent_shape(self.window), generator=state.generator, device=self.device)
        known = state.known
        if known is not None:  # the overlap frames start on their known path
            x[:, :, :known.shape[2]] = (1 - s0) * known + s0 * state.known_noise
        den = self.denoiser_fn(embedding, known)
        latents, info = sample(den, x, self.sigmas, self.ltc_weights if ltc else None)
        new = latents if known is None else latents[:, :, known.shape[2]:]
        if self.overlap:
            state.known = latents[:, :, -self.overlap:].clone()
            state.known_noise = torch.randn(state.known.shape, generator=state.generator, device=self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        frames = self.decode(new)
        t2 = time.perf_counter()
        state.chunk_index += 1
        return ChunkResult(frames=frames, model_calls=info.nfe, steps=self.steps, denoise_s=t1 - t0, decode_s=t2 - t1,
                           extra={"window": self.window, "overlap": self.overlap})

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """[1, C, T, h, w] -> uint8 [T, H, W, 3]; per-frame image VAE (or AutoencoderTiny)."""
        z = latents[0].movedim(1, 0)  # [T, C, h, w]
        if self.tiny_decoder is not None:
            img = self.tiny_decoder.decode(z.to(self.tiny_decoder.dtype), return_dict=False)[0]
        else:
            img = self.vae.decode(z.to(self.vae.dtype) / self.vae.config.scaling_factor, return_dict=False)[0]
        return ((img.float().clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(window=self.window, overlap=self.overlap, decoder="tiny" if self.tiny_decoder is not None else "vae",
                    ltc_calibrated=self.ltc_weights is not None, timesteps=self.timesteps)
        return info
