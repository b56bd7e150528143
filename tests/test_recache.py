"""A prompt switch re-caches as LongLive does (`_recache_after_switch` with its global sink),
checked against an expectation computed on the stock diffusers transformer.

Once frames have left the attention span, the sink keeps its keys and values, and the span's other
frames (LongLive: the last min(12, frames so far), of which the 3 in the sink's slots are not
written) are run again at t = 0 under the new prompt, attending to the kept sink and to one
another with no causal mask. For a two-layer model that has a closed form on the stock,
bidirectional transformer: self-attention keys and values of layer 0 do not depend on the prompt
(cross-attention comes after them), so running [sink latents; re-run latents] through the stock
model at t = 0 under the new prompt gives the re-run frames' layer-1 keys and values exactly.
Before anything left the span, every held frame is re-run, the sink's included.
"""
from __future__ import annotations

import copy

import pytest
import torch

from real_model_fixtures import tiny_wan_parts

pytest.importorskip("diffusers")

SINK, WINDOW, BLOCK = 3, 6, 3  # LongLive: local attention 12 = sink 3 + 6 past + the current block


def longlive_model():
    from ltc_stream.models.causal_wan import CausalWanModel

    transformer, vae = tiny_wan_parts(seed=2)
    stock = copy.deepcopy(transformer)
    prompts = {"a": torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(1)),
               "b": torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(2))}
    model = CausalWanModel(transformer, vae, encode_text=prompts.__getitem__, height=32, width=48, sampler="renoise",
                           timesteps=[1000.0, 937.5, 2500 / 3, 625.0], sigmas=[1.0, 0.9375, 5 / 6, 0.625, 0.0],
                           sink_frames=SINK, window_frames=WINDOW, latent_frames_per_chunk=BLOCK)
    model.decode = lambda latents, state: None  # only the cache matters here
    return model, stock, prompts


def stock_keys_values(stock, latents: torch.Tensor, embedding: torch.Tensor, layer: int):
    """Pre-rotary keys [B, S, H, D] and values of one layer, the stock model on `latents` at t = 0."""
    seen = {}
    attn = stock.blocks[layer].attn1
    hooks = [attn.norm_k.register_forward_hook(lambda m, i, o: seen.__setitem__("k", o)),
             attn.to_v.register_forward_hook(lambda m, i, o: seen.__setitem__("v", o))]
    try:
        stock(latents, timestep=torch.zeros(1), encoder_hidden_states=embedding, return_dict=False)
    finally:
        for h in hooks:
            h.remove()
    return (seen["k"].unflatten(2, (attn.heads, -1)), seen["v"].unflatten(2, (attn.heads, -1)))


def frames_seen(model) -> list[tuple[int, float]]:
    seen = []
    forward = model.transformer.forward

    def spy(hidden_states, timestep, **kwargs):
        seen.append((hidden_states.shape[2], float(timestep[0])))
        return forward(hidden_states, timestep=timestep, **kwargs)

    model.transformer.forward = spy
    return seen


@torch.no_grad()
def test_switch_after_frames_left_the_span_keeps_the_sink_and_reruns_the_span():
    model, stock, prompts = longlive_model()
    state = model.new_stream(0)
    for _ in range(5):  # 15 frames: frames 3-5 have left the 12-frame span
        model.generate_chunk(state, prompts["a"], ltc=False)
    cache = state.cache
    tpf = cache.tokens_per_frame
    assert (cache.total, cache.frames, cache.latents.shape[2]) == (15, SINK + WINDOW, SINK + WINDOW + BLOCK)
    sink_before = [(k[:, : SINK * tpf].clone(), v[:, : SINK * tpf].clone()) for k, v in zip(cache.k, cache.v)]
    held = cache.latents.clone()

    seen = frames_seen(model)
    model.ctx.cache = cache
    model._recache(state, prompts["b"])
    assert seen == [(WINDOW + BLOCK, 0.0)]  # the 9 frames after the sink, clean (context noise 0)
    assert cache.frames == SINK + WINDOW and cache.k[0].shape[1] == (SINK + WINDOW) * tpf
    for (k0, v0), k, v in zip(sink_before, cache.k, cache.v):  # the sink is kept as it was
        assert torch.equal(k[:, : SINK * tpf], k0) and torch.equal(v[:, : SINK * tpf], v0)

    want_k, want_v = stock_keys_values(stock, held, prompts["b"], layer=1)
    window = slice((SINK + BLOCK) * tpf, None)  # the last 6 re-run frames stay in the window
    torch.testing.assert_close(cache.k[1][:, SINK * tpf:], want_k[:, window], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(cache.v[1][:, SINK * tpf:], want_v[:, window], atol=2e-5, rtol=1e-4)
    # the expectation can fail: the old prompt's keys, or the window re-run without the 3 frames
    # about to leave it (what re-caching only the held window would do), are far from it
    old_k, _ = stock_keys_values(stock, held, prompts["a"], layer=1)
    assert (old_k[:, window] - want_k[:, window]).abs().max() > 1e-3
    short = torch.cat([held[:, :, :SINK], held[:, :, SINK + BLOCK:]], 2)
    short_k, _ = stock_keys_values(stock, short, prompts["b"], layer=1)
    assert (short_k[:, SINK * tpf:] - want_k[:, window]).abs().max() > 1e-3

    # the stream goes on under the new prompt, cache bounded as before
    state.embedding = prompts["b"]  # what generate_chunk records after its own re-cache
    result = model.generate_chunk(state, prompts["b"], ltc=False)
    assert result.extra["cache_calls"] == 1 and cache.frames == SINK + WINDOW and cache.total == 18


@torch.no_grad()
def test_switch_before_anything_left_the_span_reruns_every_frame():
    model, stock, prompts = longlive_model()
    state = model.new_stream(0)
    for _ in range(2):  # 6 frames, all inside the span
        model.generate_chunk(state, prompts["a"], ltc=False)
    held = state.cache.latents.clone()
    assert held.shape[2] == 6
    seen = frames_seen(model)
    result = model.generate_chunk(state, prompts["b"], ltc=False)
    assert seen[0] == (6, 0.0) and result.extra["cache_calls"] == 2  # the re-cache, then the block's write
    # before the new block was written: check the re-cache alone on a fresh copy of the stream
    model2, stock2, _ = longlive_model()
    state2 = model2.new_stream(0)
    for _ in range(2):
        model2.generate_chunk(state2, prompts["a"], ltc=False)
    model2.ctx.cache = state2.cache
    model2._recache(state2, prompts["b"])
    want_k, want_v = stock_keys_values(stock2, held, prompts["b"], layer=1)
    torch.testing.assert_close(state2.cache.k[1], want_k, atol=2e-5, rtol=1e-4)  # the sink's too
    torch.testing.assert_close(state2.cache.v[1], want_v, atol=2e-5, rtol=1e-4)
