"""Causal chunk-wise Wan2.1 (Self-Forcing / CausVid style) on diffusers' `WanTransformer3DModel`.

The stock transformer is used unchanged; three of its parts are swapped at load time:
- every block's self-attention processor becomes `CausalWanAttnProcessor`, which attends from
  the current chunk to a KV cache of past chunks (block-causal attention);
- the rotary embedding becomes `ChunkRope`, which places the current chunk after the cached frames;
- the timestep sinusoid becomes `TimestepSinusoid`, computed in float64 as the references do.

The cache is bounded: the first `sink_frames` latent frames ever generated (the attention sink)
plus the last `window_frames` frames. Keys are cached *before* the rotary embedding and rotated
at read time by their slot in the cache (sink first, then the window), StreamingLLM-style, so
positions never grow and a stream can run for hours with constant memory.

Sampling per chunk follows the model folder (`stream.json` of `ltc-stream import`): by default
the authors' few-step sampler (`sampler="renoise"`: predict x0 at each of the folder's sigmas and
re-noise it with fresh noise to the next), the transformer receiving the authors' timesteps in
float32 with a float64 sinusoid, as their reference computes it; then one call on the clean chunk at
t = 0 writes its keys/values into the cache (Self-Forcing's context update, context noise 0).
Both samplers run through LTC (`ltc.sample_renoise`: the estimate on the clean predictions, then
the same fresh re-noise; `ltc.sample`: on the states) with the folder's calibrated `ltc_weights`.
`sampler="euler"` is a deterministic flow-matching Euler sampler over the same sigmas: a departure
from the published models (other samples from the same noise).
Reward Forcing's EMA sink folds the frames leaving the window into the sink (`sink_ema`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..ltc import LTCWeights, sample, sample_renoise
from .base import ChunkResult, ModelOption, VideoModel
from .taehv import TAEHVMemory

# the settings an operator may override with `--model-option KEY=VALUE` (load_model checks them)
OPTIONS = {
    "shift": ModelOption(float, 5.0, "shift of the flow-matching sigma schedule", minimum=0.01, maximum=100.0),
    "latent_frames_per_chunk": ModelOption(int, 3, "latent frames per chunk (4 video frames each)", minimum=1),
    "window_frames": ModelOption(int, None, "latent frames in the KV cache's rolling window (default: the model's)",
                                 minimum=1),
    "sink_frames": ModelOption(int, None, "first latent frames kept as the attention sink (default: one chunk)",
                               minimum=0),
    "recache": ModelOption(bool, True, "re-write the KV cache under a new prompt (LongLive's re-cache)"),
    "sampler": ModelOption(str, None, "renoise (the authors'; the random wan-causal-1.3b's) or euler (deterministic; "
                                      "a diffusers Wan folder's, which has no published chunk-wise sampler)",
                           choices=("euler", "renoise")),
}


# ------------------------------------------------------------------------------------------------
# KV cache with attention sink and rolling window
# ------------------------------------------------------------------------------------------------
class KVCache:
    """Per-layer keys (pre-rotary) and values of past frames: sink frames + a rolling window.

    With `sink_ema` (Reward Forcing's EMA-Sink) the frames leaving the window are not dropped but
    folded into the sink, one sink-sized group at a time, oldest first:
    sink <- sink_ema * sink + (1 - sink_ema) * evicted, for keys and values alike."""

    def __init__(self, num_layers: int, tokens_per_frame: int, sink_frames: int, window_frames: int,
                 sink_ema: float | None = None, recent_frames: int | None = None):
        if sink_frames < 0 or window_frames < 1:
            raise ConfigError(f"KV cache needs sink_frames >= 0 and window_frames >= 1, got {sink_frames}, {window_frames}")
        if sink_ema is not None and (sink_frames < 1 or not 0.0 <= sink_ema <= 1.0):
            raise ConfigError(f"an EMA sink needs sink_frames >= 1 and 0 <= sink_ema <= 1, got {sink_frames}, {sink_ema}")
        self.tokens_per_frame = tokens_per_frame
        self.sink_frames, self.window_frames = sink_frames, window_frames
        self.sink_ema = sink_ema
        self.k: list[torch.Tensor | None] = [None] * num_layers
        self.v: list[torch.Tensor | None] = [None] * num_layers
        self.frames = 0  # frames whose keys/values are held (<= sink + window)
        self.total = 0  # frames ever committed
        # clean latents of the sink and of the last `recent_frames` frames, for a prompt switch's
        # re-cache (LongLive re-runs the frames of its whole attention span but the current block)
        self.recent_frames = window_frames if recent_frames is None else recent_frames
        self.latents: torch.Tensor | None = None
        self.fold = True  # evicted frames go into an EMA sink (off while a re-cache drops frames already folded)

    @property
    def max_frames(self) -> int:
        return self.sink_frames + self.window_frames

    def _trim(self, t: torch.Tensor, frames: int) -> torch.Tensor:
        """Keep the sink frames and the newest window frames of a [B, frames*tpf, ...] tensor."""
        if frames <= self.max_frames:
            return t
        tpf = self.tokens_per_frame
        sink = t[:, : self.sink_frames * tpf]
        recent = t[:, (frames - self.window_frames) * tpf:]
        if self.sink_ema is not None and self.fold:
            evicted = t[:, self.sink_frames * tpf: (frames - self.window_frames) * tpf]
            group = self.sink_frames * tpf
            if evicted.shape[1] % group:
                raise ConfigError(f"an EMA sink of {self.sink_frames} frames cannot fold in "
                                  f"{evicted.shape[1] // tpf} evicted frames; make chunks a multiple of the sink")
            for start in range(0, evicted.shape[1], group):
                sink = self.sink_ema * sink + (1 - self.sink_ema) * evicted[:, start:start + group]
        return torch.cat([sink, recent], 1)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        old_k, old_v = self.k[layer], self.v[layer]
        # a copy even when the cache is empty: k and v may live in a CUDA graph's memory pool,
        # which the next replay overwrites
        k_all = k.clone() if old_k is None else torch.cat([old_k, k], 1)
        v_all = v.clone() if old_v is None else torch.cat([old_v, v], 1)
        frames = k_all.shape[1] // self.tokens_per_frame
        self.k[layer], self.v[layer] = self._trim(k_all, frames), self._trim(v_all, frames)

    def commit_frames(self, latents: torch.Tensor) -> None:
        """After every layer appended a chunk: count its frames, keep its clean latents [B,C,T,h,w]."""
        held = latents if self.latents is None else torch.cat([self.latents, latents], 2)
        n = held.shape[2]
        if n > self.sink_frames + self.recent_frames:
            held = torch.cat([held[:, :, : self.sink_frames], held[:, :, n - self.recent_frames:]], 2)
        self.latents = held
        self.total += latents.shape[2]
        self.frames = min(self.total, self.max_frames)

    def keep_sink_only(self) -> None:
        """Drop every cached frame but the sink (keys and values as they are)."""
        cut = self.sink_frames * self.tokens_per_frame
        self.k = [None if t is None or not cut else t[:, :cut] for t in self.k]
        self.v = [None if t is None or not cut else t[:, :cut] for t in self.v]
        self.frames = min(self.sink_frames, self.frames)

    def clear(self) -> None:
        self.k = [None] * len(self.k)
        self.v = [None] * len(self.v)
        self.frames = 0
        self.total = 0
        self.latents = None

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v if t is not None)


@dataclass
class CausalContext:
    """Shared by the processors and the rope of one transformer while one stream runs."""

    cache: KVCache | None = None
    write: bool = False  # True while the clean chunk is run to append its keys/values
    cache_rope: tuple[torch.Tensor, torch.Tensor] | None = None  # rotary tables for the cached tokens


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved rotary embedding; x [B, S, H, D], cos/sin [1, S, 1, D]."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    return torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], -1).flatten(-2).type_as(x)


class ChunkRope(nn.Module):
    """Replaces `transformer.rope`: tables for the current chunk's frames placed after the
    `cache.frames` cached ones, and (into the context) the tables of the cached frames."""

    def __init__(self, rope: nn.Module, ctx: CausalContext):
        super().__init__()
        self.inner = rope
        self.ctx = ctx

    def _tables(self, frame_positions: torch.Tensor, pph: int, ppw: int):
        r = self.inner
        split = [r.t_dim, r.h_dim, r.w_dim]
        cos_t, cos_h, cos_w = r.freqs_cos.split(split, dim=1)
        sin_t, sin_h, sin_w = r.freqs_sin.split(split, dim=1)
        f = len(frame_positions)

        def grid(t, h, w):
            return torch.cat([
                t[frame_positions].view(f, 1, 1, -1).expand(f, pph, ppw, -1),
                h[:pph].view(1, pph, 1, -1).expand(f, pph, ppw, -1),
                w[:ppw].view(1, 1, ppw, -1).expand(f, pph, ppw, -1),
            ], -1).reshape(1, f * pph * ppw, 1, -1)

        return grid(cos_t, cos_h, cos_w), grid(sin_t, sin_h, sin_w)

    def forward(self, hidden_states: torch.Tensor):
        _, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.inner.patch_size
        ppf, pph, ppw = frames // p_t, height // p_h, width // p_w
        cached = self.ctx.cache.frames if self.ctx.cache is not None else 0
        device = self.inner.freqs_cos.device
        if cached + ppf > self.inner.freqs_cos.shape[0]:
            raise ConfigError(f"chunk of {ppf} frames after {cached} cached ones exceeds rope_max_seq_len")
        all_pos = torch.arange(cached + ppf, device=device)
        cos, sin = self._tables(all_pos, pph, ppw)
        tpf = pph * ppw
        self.ctx.cache_rope = (cos[:, : cached * tpf], sin[:, : cached * tpf]) if cached else None
        # copies: a slice's strides follow the cached length, and torch.compile guards on strides
        fmt = torch.contiguous_format
        return (cos[:, cached * tpf:].to(hidden_states.device).clone(memory_format=fmt),
                sin[:, cached * tpf:].to(hidden_states.device).clone(memory_format=fmt))


class CausalWanAttnProcessor:
    """Self-attention of one Wan block, block-causal over chunks through the shared KV cache."""

    def __init__(self, ctx: CausalContext, layer: int):
        self.ctx, self.layer = ctx, layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        from diffusers.models.transformers.transformer_wan import _get_qkv_projections

        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        cos, sin = rotary_emb
        query_r, key_r = _rotate(query, cos, sin), _rotate(key, cos, sin)
        out = self._attend(query_r, key, key_r, value)
        out = out.flatten(2, 3).type_as(query)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)

    # The cache's reads and writes stay out of torch.compile's graphs: the cached length grows
    # chunk by chunk and each block reads its own layer, which would recompile the (shared)
    # compiled block for every length and every layer; under CUDA graphs the stored keys must
    # also live outside the graphs' memory pool. Projections, norms and the FFN stay compiled.
    @torch.compiler.disable
    def _attend(self, query_r, key, key_r, value):
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        ctx = self.ctx
        cache = ctx.cache
        if cache is not None and cache.k[self.layer] is not None and ctx.cache_rope is not None:
            k_cached = _rotate(cache.k[self.layer], *ctx.cache_rope)
            keys = torch.cat([k_cached, key_r], 1)
            values = torch.cat([cache.v[self.layer], value], 1)
        else:
            keys, values = key_r, value
        if cache is not None and ctx.write:
            cache.append(self.layer, key, value)
        return dispatch_attention_fn(query_r, keys, values, attn_mask=None, dropout_p=0.0, is_causal=False)


class TimestepSinusoid(nn.Module):
    """Wan's timestep embedding [cos | sin](t 10000^(-k / half)), k < half, computed in float64 as the
    reference computes it (diffusers computes it in float32; the cost is one [B, 256] table)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=timesteps.device) / half)
        angles = timesteps.to(torch.float64).flatten()[:, None] * freqs
        return torch.cat([torch.cos(angles), torch.sin(angles)], -1).float()


def make_causal(transformer) -> CausalContext:
    """Swap the self-attention processors, the rope and the timestep sinusoid of a stock
    WanTransformer3DModel."""
    ctx = CausalContext()
    for i, block in enumerate(transformer.blocks):
        block.attn1.set_processor(CausalWanAttnProcessor(ctx, i))
    transformer.rope = ChunkRope(transformer.rope, ctx)
    embedder = transformer.condition_embedder
    embedder.timesteps_proj = TimestepSinusoid(embedder.timesteps_proj.num_channels)
    return ctx


# ------------------------------------------------------------------------------------------------
# Streaming VAE decode (AutoencoderKLWan with its causal feature cache kept across chunks)
# ------------------------------------------------------------------------------------------------
class StreamingWanDecoder:
    """Decodes latent chunks one after another through AutoencoderKLWan's causal decoder, keeping
    its per-conv feature cache between chunks: the first latent frame gives 1 frame, every later
    one 4, with no seam at chunk boundaries (the same result as decoding the whole video at once)."""

    def __init__(self, vae):
        self.vae = vae
        self.feat_map: list | None = None
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
        self.mean, self.std = mean, std

    def reset(self) -> None:
        self.feat_map = None

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        z = latents.to(vae.dtype) * self.std.to(latents.device, vae.dtype) + self.mean.to(latents.device, vae.dtype)
        first = self.feat_map is None
        if first:
            self.feat_map = [None] * vae._cached_conv_counts["decoder"]
        x = vae.post_quant_conv(z)
        outs = []
        for i in range(x.shape[2]):
            idx = [0]
            outs.append(vae.decoder(x[:, :, i:i + 1], feat_cache=self.feat_map, feat_idx=idx, first_chunk=first and i == 0))
        return torch.cat(outs, 2).clamp(-1, 1)  # [B, 3, frames, H, W]


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """[1, 3, T, H, W] in [-1, 1] -> uint8 [T, H, W, 3]."""
    return ((video[0].float().clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


# ------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------
def shifted_sigmas(steps: int, shift: float) -> list[float]:
    """Wan's flow-matching schedule: uniform in t, warped by sigma = shift t / (1 + (shift - 1) t)."""
    t = np.linspace(1.0, 0.0, steps + 1)
    return [float(shift * v / (1 + (shift - 1) * v)) for v in t]


@dataclass
class WanStreamState:
    generator: torch.Generator
    cache: KVCache
    chunk_index: int = 0
    embedding: torch.Tensor | None = None  # prompt the cache was written with
    taehv_memory: TAEHVMemory | None = None  # the tiny decoder's memory across chunks
    # where this stream's noise comes from (shape -> tensor); None: `generator`. Equivalence tests
    # feed the reference's own draws through it.
    noise: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class CausalWanModel(VideoModel):
    """Chunk-wise causal Wan: `latent_frames_per_chunk` latent frames per chunk (4 video frames each)."""

    def __init__(self, transformer, vae, *, encode_text, height: int, width: int, steps: int = 4,
                 shift: float = 5.0, latent_frames_per_chunk: int = 3, sink_frames: int | None = None,
                 window_frames: int = 9, sampler: str, guidance_scale: float = 1.0,
                 negative_embedding: torch.Tensor | None = None, taehv=None, fps: float = 16.0,
                 recache: bool = True, name: str = "wan-causal", ltc_weights: LTCWeights | None = None,
                 timesteps: list[float] | None = None, sigmas: list[float] | None = None,
                 info: dict[str, Any] | None = None, sink_ema: float | None = None):
        if sampler not in ("euler", "renoise"):
            raise ConfigError(f"sampler must be 'euler' or 'renoise', got {sampler!r}")
        sf, sp = vae.config.scale_factor_temporal, vae.config.scale_factor_spatial
        patch = transformer.config.patch_size
        if height % (sp * patch[1]) or width % (sp * patch[2]):
            raise ConfigError(f"height and width must be multiples of {sp * patch[1]}, got {height}x{width}")
        if sigmas is not None:  # a published model's own schedule (stream.json)
            if len(sigmas) < 2 or sigmas[-1] != 0.0 or timesteps is None or len(timesteps) != len(sigmas) - 1:
                raise ConfigError("a schedule needs sigmas ending in 0 and one timestep per step")
            steps = len(sigmas) - 1
        if steps < 1:
            raise ConfigError(f"steps must be at least 1, got {steps}")
        self.transformer, self.vae = transformer, vae
        self.ctx = make_causal(transformer)
        self.encode_text = encode_text
        self.name, self.height, self.width, self.fps = name, height, width, fps
        self.steps, self.shift, self.sampler = steps, shift, sampler
        self.latent_frames = latent_frames_per_chunk
        self.temporal_factor, self.spatial_factor = sf, sp
        self.frames_per_chunk = latent_frames_per_chunk * sf
        self.sink_frames = latent_frames_per_chunk if sink_frames is None else sink_frames
        self.window_frames = window_frames
        self.sink_ema = sink_ema
        self.guidance_scale = guidance_scale
        self.negative_embedding = negative_embedding
        self.taehv = taehv
        self.recache = recache
        self.device = next(transformer.parameters()).device
        self.dtype = next(transformer.parameters()).dtype
        self.sigmas = list(sigmas) if sigmas is not None else shifted_sigmas(steps, shift)
        # what the transformer receives at each sigma: 1000 sigma unless the schedule says otherwise
        # (CausVid feeds its unwarped steps while its arithmetic uses the table's nearest sigma)
        self.timesteps = list(timesteps) if timesteps is not None else [s * 1000.0 for s in self.sigmas[:-1]]
        self._timestep_of = dict(zip(self.sigmas[:-1], self.timesteps))
        self.ltc_weights = ltc_weights
        self._decoders: dict[int, StreamingWanDecoder] = {}
        self.info = dict(info or {})  # what the model folder says about itself (kind, authors' settings)

    # --- VideoModel -------------------------------------------------------------------------
    def encode_prompt(self, text: str) -> torch.Tensor:
        return self.cached_embedding(text, self.encode_text)

    def latent_shape(self, batch: int = 1) -> tuple[int, ...]:
        c = self.transformer.config.in_channels
        return (batch, c, self.latent_frames, self.height // self.spatial_factor, self.width // self.spatial_factor)

    def tokens_per_frame(self) -> int:
        _, p_h, p_w = self.transformer.config.patch_size
        return (self.height // self.spatial_factor // p_h) * (self.width // self.spatial_factor // p_w)

    def steady_state_chunks(self) -> int:
        """Chunks until the KV cache is full (its length, and so each call's cost, stops growing)."""
        return -(-(self.sink_frames + self.window_frames) // self.latent_frames) + 1

    def new_stream(self, seed: int = 0) -> WanStreamState:
        cache = KVCache(len(self.transformer.blocks), self.tokens_per_frame(), self.sink_frames, self.window_frames,
                        self.sink_ema, recent_frames=self.window_frames + self.latent_frames)
        return WanStreamState(generator=torch.Generator(device=self.device).manual_seed(int(seed)), cache=cache)

    def _velocity(self, x: torch.Tensor, sigma: float, embedding: torch.Tensor) -> torch.Tensor:
        # float32 whatever the weights' dtype: bfloat16 would turn 937.5 into 936 and 625 into 624
        t = torch.full((x.shape[0],), self._timestep_of.get(sigma, sigma * 1000.0), device=x.device, dtype=torch.float32)
        return self.transformer(x.to(self.dtype), timestep=t, encoder_hidden_states=embedding,
                                return_dict=False)[0].float()

    def denoiser_fn(self, embedding: torch.Tensor):
        emb = embedding if embedding.ndim == 3 else embedding[None]
        guided = self.guidance_scale != 1.0 and self.negative_embedding is not None

        def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
            if guided:  # one batch for both branches: a skipped step skips the whole guided batch
                neg = self.negative_embedding.expand_as(emb)
                v_u, v_c = self._velocity(torch.cat([x, x]), sigma, torch.cat([neg, emb])).chunk(2)
                v = v_u + self.guidance_scale * (v_c - v_u)
            else:
                v = self._velocity(x, sigma, emb.expand(x.shape[0], -1, -1))
            return x - sigma * v

        return denoise

    def _write_cache(self, state: WanStreamState, latents: torch.Tensor, embedding: torch.Tensor) -> None:
        emb = embedding if embedding.ndim == 3 else embedding[None]
        self.ctx.write = True
        try:
            self._velocity(latents, 0.0, emb)
        finally:
            self.ctx.write = False
        state.cache.commit_frames(latents)

    def _recache(self, state: WanStreamState, embedding: torch.Tensor) -> None:
        """New prompt: LongLive's re-cache (`_recache_after_switch` with its global sink), so the
        cached history does not drag the old prompt along. The clean latents of the attention span
        but the current block (the last min(span, frames so far) frames) are run again at t = 0
        under the new prompt, attending to one another without a causal mask, and their keys and
        values replace the cached ones. Once frames have left the span, the sink keeps the keys and
        values it has (LongLive also re-runs the frames in the sink's slots, whose keys it does not
        write and which so change nothing: they are not run here); before that, every frame is
        re-run from the start, the sink's included. Positions are cache slots, as always here."""
        cache = state.cache
        held = cache.latents
        if held is None:
            return
        emb = embedding if embedding.ndim == 3 else embedding[None]
        dropped = cache.total > held.shape[2]
        if dropped:
            cache.keep_sink_only()
            rerun = held[:, :, cache.sink_frames:]
        else:
            frames = cache.total
            cache.clear()
            cache.total, cache.latents, rerun = frames, held, held
        # frames leaving the window now were folded into an EMA sink when they first left it
        cache.fold = not dropped
        self.ctx.write = True
        try:
            self._velocity(rerun, 0.0, emb)
        finally:
            self.ctx.write = False
            cache.fold = True
        cache.frames = min(cache.frames + rerun.shape[2], cache.max_frames)

    @torch.no_grad()
    def generate_chunk(self, state: WanStreamState, embedding: torch.Tensor, *, ltc: bool = True) -> ChunkResult:
        t0 = time.perf_counter()
        self.ctx.cache = state.cache
        extra_calls = 0
        if self.recache and state.embedding is not None and not torch.equal(state.embedding, embedding):
            if state.cache.latents is not None:
                self._recache(state, embedding)
                extra_calls += 1
        state.embedding = embedding
        draw = state.noise or (lambda shape: torch.randn(shape, generator=state.generator, device=self.device))
        x = draw(self.latent_shape()).to(self.device)
        den = self.denoiser_fn(embedding)
        weights = self.ltc_weights if ltc else None
        if self.sampler == "euler":
            latents, info = sample(den, x, self.sigmas, weights)
        else:  # the fresh re-noise tensors, drawn in the order the reference draws them; a skipped
            # step (LTC on the clean predictions) is re-noised with the same tensor as the full run
            noises = [draw(x.shape).to(self.device) for _ in range(self.steps - 1)]
            latents, info = sample_renoise(den, x, self.sigmas, noises, weights)
        calls = info.nfe
        self._write_cache(state, latents, embedding)
        extra_calls += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        frames = self.decode(latents, state)
        t2 = time.perf_counter()
        state.chunk_index += 1
        return ChunkResult(frames=frames, model_calls=calls, steps=self.steps, denoise_s=t1 - t0, decode_s=t2 - t1,
                           extra={"cache_calls": extra_calls, "kv_cache_bytes": state.cache.nbytes(),
                                  "kv_cache_frames": state.cache.frames})

    def decode(self, latents: torch.Tensor, state: WanStreamState) -> np.ndarray:
        if self.taehv is not None:  # [0, 1] frames; its memory (start-up trim included) lives in the stream
            if state.chunk_index == 0:
                state.taehv_memory = TAEHVMemory()
            return to_uint8_frames(self.taehv.decode(latents, state.taehv_memory) * 2 - 1)
        dec = self._decoders.get(id(state))
        if dec is None:
            self._decoders.clear()  # one live decoder cache per stream object; streams are long-lived
            dec = self._decoders[id(state)] = StreamingWanDecoder(self.vae)
        return to_uint8_frames(dec(latents))

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(sampler=self.sampler, shift=self.shift, sink_frames=self.sink_frames,
                    window_frames=self.window_frames, sink_ema=self.sink_ema, decoder="taehv" if self.taehv is not None else "vae",
                    timesteps=self.timesteps, sigmas=self.sigmas,
                    ltc_calibrated=self.ltc_weights is not None, **self.info)
        return info


def transition_angles(states: list[torch.Tensor]) -> list[float | None]:
    """Angle (rad) between adjacent transitions D_i = x_{i+1} - x_i of a trajectory x_0..x_N: the
    quantity LTC's skip rule reads. Entry i compares D_i with D_{i-1} (None for i = 0)."""
    from ..kernels import angle_from_stats, pair_stats

    out: list[float | None] = [None]
    for i in range(1, len(states) - 1):
        d_cur, d_prev = states[i + 1] - states[i], states[i] - states[i - 1]
        out.append(float(angle_from_stats(pair_stats(d_cur, d_prev))))
    return out
