"""Real-model adapters on tiny random-initialised diffusers pipelines, loaded through the real path.

References are independent of the adapters: the stock WanTransformer3DModel with a block-causal
attention mask, AutoencoderKLWan.decode over the whole video, model calls counted by wrapping
the network's forward.
"""
from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

from ltc_stream.errors import ConfigError, ModelNotFoundError
from ltc_stream.ltc import LTCConfig
from ltc_stream.models import load_model

from real_model_fixtures import save_tiny_animatediff, save_tiny_wan, tiny_wan_parts

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    return save_tiny_wan(tmp_path_factory.mktemp("wan") / "tiny-wan", with_tiny_decoder=True)


@pytest.fixture(scope="module")
def ad_folder(tmp_path_factory):
    return save_tiny_animatediff(tmp_path_factory.mktemp("ad") / "tiny-animatediff")


class _Masked:
    """The stock Wan attention processor with an explicit attention mask."""

    def __init__(self, mask):
        from diffusers.models.transformers.transformer_wan import WanAttnProcessor

        self.inner, self.mask = WanAttnProcessor(), mask

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        return self.inner(attn, hidden_states, encoder_hidden_states, self.mask, rotary_emb)


def _count_calls(module):
    calls = {"n": 0}
    forward = module.forward

    def counted(*args, **kwargs):
        calls["n"] += 1
        return forward(*args, **kwargs)

    module.forward = counted
    return calls


@torch.no_grad()
def test_kv_cache_attention_equals_block_causal_full_attention():
    from ltc_stream.models.causal_wan import CausalWanModel

    transformer, vae = tiny_wan_parts(seed=1)
    stock = copy.deepcopy(transformer)
    emb = torch.randn(1, 8, 32)
    model = CausalWanModel(transformer, vae, encode_text=lambda t: emb, height=32, width=48, window_frames=9,
                           sampler="euler")
    state = model.new_stream(0)
    model.ctx.cache = state.cache
    gen = torch.Generator().manual_seed(0)
    clean1 = torch.randn(model.latent_shape(), generator=gen)
    noisy2 = torch.randn(model.latent_shape(), generator=gen)
    sigma = 0.7
    model._write_cache(state, clean1, emb)
    ours = model._velocity(noisy2, sigma, emb)

    n1 = n2 = model.tokens_per_frame() * model.latent_frames
    mask = torch.ones(n1 + n2, n1 + n2, dtype=torch.bool)
    mask[:n1, n1:] = False  # the past chunk never sees the present one
    for block in stock.blocks:
        block.attn1.set_processor(_Masked(mask))
    timestep = torch.cat([torch.zeros(n1), torch.full((n2,), sigma * 1000.0)])[None]
    full = stock(torch.cat([clean1, noisy2], 2), timestep=timestep, encoder_hidden_states=emb, return_dict=False)[0]
    reference = full[:, :, model.latent_frames:]
    torch.testing.assert_close(ours, reference, atol=2e-5, rtol=1e-4)


def test_kv_cache_stays_bounded_and_keeps_sink_and_recent_frames():
    from ltc_stream.models.causal_wan import KVCache

    cache = KVCache(num_layers=2, tokens_per_frame=4, sink_frames=3, window_frames=6)
    sizes = []
    for chunk in range(40):
        frames = torch.arange(chunk * 3, chunk * 3 + 3, dtype=torch.float32)
        k = frames.repeat_interleave(4).view(1, 12, 1, 1)
        for layer in range(2):
            cache.append(layer, k, k.clone())
        cache.commit_frames(frames.view(1, 1, 3, 1, 1))
        sizes.append(cache.nbytes())
    assert max(sizes) == sizes[-1] == sizes[3]  # flat once the window is full
    expected = [0, 1, 2] + list(range(40 * 3 - 6, 40 * 3))
    assert cache.latents.flatten().tolist() == expected
    assert cache.k[1][0, ::4, 0, 0].tolist() == expected


def test_ema_sink_folds_evicted_frames_into_the_sink():
    """Reward Forcing's EMA-Sink: each group of frames leaving the window is averaged into the sink
    (sink 3 + window 3, chunks of 3: from the third chunk on, the chunk before last is folded in)."""
    from ltc_stream.models.causal_wan import KVCache

    alpha = 0.9
    cache = KVCache(num_layers=1, tokens_per_frame=2, sink_frames=3, window_frames=3, sink_ema=alpha)
    expected_sink = [0.0, 1.0, 2.0]
    for chunk in range(6):
        frames = torch.arange(chunk * 3, chunk * 3 + 3, dtype=torch.float32)
        k = frames.repeat_interleave(2).view(1, 6, 1, 1)
        cache.append(0, k, -k)
        if chunk >= 2:  # frames 3(chunk-1) .. 3(chunk-1)+2 leave the window
            expected_sink = [alpha * s + (1 - alpha) * (3 * (chunk - 1) + j) for j, s in enumerate(expected_sink)]
    held = cache.k[0][0, ::2, 0, 0].tolist()
    assert held[:3] == pytest.approx(expected_sink, abs=1e-5)
    assert held[3:] == [15.0, 16.0, 17.0]
    assert cache.v[0][0, ::2, 0, 0].tolist()[:3] == pytest.approx([-s for s in expected_sink], abs=1e-5)
    with pytest.raises(ConfigError, match="multiple of the sink"):
        odd = KVCache(num_layers=1, tokens_per_frame=1, sink_frames=2, window_frames=2, sink_ema=alpha)
        for chunk in range(3):
            odd.append(0, torch.zeros(1, 3, 1, 1), torch.zeros(1, 3, 1, 1))


@torch.no_grad()
def test_streaming_vae_decode_equals_whole_video_decode():
    from ltc_stream.models.causal_wan import StreamingWanDecoder

    _, vae = tiny_wan_parts(seed=2)
    z = torch.randn(1, 16, 6, 4, 6, generator=torch.Generator().manual_seed(3))
    dec = StreamingWanDecoder(vae)
    streamed = torch.cat([dec(z[:, :, :3]), dec(z[:, :, 3:])], 2)
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    whole = vae.decode(z * std + mean, return_dict=False)[0]
    assert streamed.shape == whole.shape == (1, 3, 1 + 4 * 5, 32, 48)
    torch.testing.assert_close(streamed, whole, atol=1e-5, rtol=1e-4)


def test_wan_folder_loads_and_streams_bounded_chunks(wan_folder):
    model = load_model(str(wan_folder), device="cpu", height=32, width=48, window_frames=3, decoder="vae")
    assert model.describe()["decoder"] == "vae"
    state = model.new_stream(seed=0)
    emb = model.encode_prompt("a red ball moves left")
    assert emb.shape == (1, 16, 32)
    shapes, cache_bytes = [], []
    for _ in range(6):
        result = model.generate_chunk(state, emb, ltc=False)
        shapes.append(result.frames.shape)
        cache_bytes.append(result.extra["kv_cache_bytes"])
    assert shapes[0] == (9, 32, 48, 3)  # causal VAE: the first latent frame is one frame
    assert all(s == (12, 32, 48, 3) for s in shapes[1:])
    assert cache_bytes[1] == cache_bytes[-1] and state.cache.frames == 6  # sink 3 + window 3


def test_wan_prompt_change_recaches(wan_folder):
    model = load_model(str(wan_folder), device="cpu", height=32, width=48, decoder="vae")
    calls = _count_calls(model.transformer)
    state = model.new_stream(seed=0)
    model.generate_chunk(state, model.encode_prompt("a red ball"), ltc=False)
    model.generate_chunk(state, model.encode_prompt("a red ball"), ltc=False)
    before = calls["n"]
    result = model.generate_chunk(state, model.encode_prompt("a blue cat"), ltc=False)
    assert result.extra["cache_calls"] == 2 and calls["n"] - before == 4 + 2


def test_wan_tiny_decoder_shapes(wan_folder):
    model = load_model(str(wan_folder), device="cpu", height=32, width=48)  # auto: taehv/taew2_1.pth is present
    assert model.describe()["decoder"] == "taehv"
    state = model.new_stream(seed=0)
    emb = model.encode_prompt("a blue square")
    assert model.generate_chunk(state, emb).frames.shape == (9, 32, 48, 3)
    assert model.generate_chunk(state, emb).frames.shape == (12, 32, 48, 3)


def test_wan_ltc_engages_with_counted_calls(wan_folder, tmp_path):
    from ltc_stream.models.adapters import calibrate_model

    folder = tmp_path / "wan"
    shutil.copytree(wan_folder, folder)
    model = load_model(str(folder), device="cpu", height=32, width=48, decoder="vae")
    weights = calibrate_model(model, ["a red ball", "a blue cat"], LTCConfig(tau=3.0, max_skips=1))
    assert weights.model_calls == 3 and len(weights.angles) == 4
    weights.save(folder / "ltc_weights.json")
    model = load_model(str(folder), device="cpu", height=32, width=48, decoder="vae")
    assert model.ltc_weights is not None
    calls = _count_calls(model.transformer)
    state = model.new_stream(seed=0)
    emb = model.encode_prompt("a red ball")
    on = model.generate_chunk(state, emb, ltc=True)
    assert on.model_calls == 3 and calls["n"] == 3 + 1  # + the cache write
    off = model.generate_chunk(state, emb, ltc=False)
    assert off.model_calls == 4 and calls["n"] == 4 + 5
    # weights calibrated for another resolution are refused, not reused
    other = load_model(str(folder), device="cpu", height=48, width=48, decoder="vae")
    assert other.ltc_weights is None


def test_renoise_sampler_and_transition_angles():
    from ltc_stream.models.causal_wan import transition_angles

    line = [torch.full((4,), float(i)) for i in range(5)]
    assert all(a < 1e-3 for a in transition_angles(line)[1:])
    zigzag = [torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])]
    assert transition_angles(zigzag)[1] == pytest.approx(torch.pi / 2, abs=1e-4)


def test_animatediff_folder_streams_overlapping_windows(ad_folder):
    model = load_model(str(ad_folder), device="cpu", height=32, width=32, window=8, overlap=2)
    assert model.timesteps == [999.0, 749.0, 499.0, 249.0]  # Lightning's trailing schedule, from the folder
    state = model.new_stream(seed=0)
    emb = model.encode_prompt("a green ball")
    first = model.generate_chunk(state, emb, ltc=False)
    known = state.known.clone()
    second = model.generate_chunk(state, emb, ltc=False)
    assert first.frames.shape == (8, 32, 32, 3) and second.frames.shape == (6, 32, 32, 3)
    # the overlap frames were held on their known path: decoding them gives the first window's tail
    tail = model.decode(known)
    assert (tail.astype(int) - first.frames[-2:].astype(int)).__abs__().max() <= 1


def test_animatediff_ltc_engages(ad_folder):
    from ltc_stream.models.adapters import calibrate_model

    model = load_model(str(ad_folder), device="cpu", height=32, width=32, window=8, overlap=2)
    model.ltc_weights = calibrate_model(model, ["a red ball"], LTCConfig(tau=3.0, max_skips=1))
    calls = _count_calls(model.unet)
    state = model.new_stream(seed=0)
    result = model.generate_chunk(state, model.encode_prompt("a red ball"), ltc=True)
    assert result.model_calls == 3 == calls["n"]


def test_folder_errors_name_what_is_missing(wan_folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(wan_folder, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ModelNotFoundError, match="vae/"):
        load_model(str(broken), device="cpu")
    for f in (broken / "transformer").glob("*.safetensors"):
        f.unlink()
    shutil.copytree(wan_folder / "vae", broken / "vae")
    with pytest.raises(ModelNotFoundError, match="no weights"):
        load_model(str(broken), device="cpu")
    other = tmp_path / "other"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ModelNotFoundError, match="WanPipeline"):
        load_model(str(other))
    with pytest.raises(ConfigError, match="unknown option"):
        load_model(str(wan_folder), device="cpu", colour="red")
    with pytest.raises(ConfigError, match="multiples"):
        load_model(str(wan_folder), device="cpu", height=30, width=48)


def test_bench_reports_every_lever_with_counted_calls(wan_folder):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "ltc_stream", "bench", "model", "--model", str(wan_folder), "--device", "cpu",
                          "--size", "48x32", "--chunks", "1", "--warmup", "1", "--levers", "ltc,decoder",
                          "--tau", "3.1", "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    runs = {r["lever"]: r for r in report["runs"]}
    assert set(runs) == {"baseline", "ltc", "tiny_decoder"}
    assert runs["baseline"]["calls_per_chunk"] == 4 and runs["ltc"]["calls_per_chunk"] < 4
    for r in report["runs"]:
        assert r["e2e_fps"] > 0 and r["frames_per_chunk"] == 12 and r["first_chunk_frames"] == 9
    assert set(report["lever_speedups"]) >= {"ltc", "tiny_decoder"}


def test_wan_regional_compile_streams_without_recompiling(wan_folder):
    """The bench's compile lever on Wan: the repeated blocks compiled once serve every block and
    every cache length (the cache's reads and writes stay outside the graphs), and the frames equal
    the eager model's. Recompiling is made an error; backend 'eager' keeps dynamo's tracing and
    guards without inductor's code generation (which the GPU run measures)."""
    import numpy as np
    import torch._dynamo

    eager = load_model(str(wan_folder), device="cpu", height=32, width=48, window_frames=3, decoder="vae")
    compiled = load_model(str(wan_folder), device="cpu", height=32, width=48, window_frames=3, decoder="vae")
    torch._dynamo.reset()
    compiled.transformer.compile_repeated_blocks(backend="eager")
    emb = eager.encode_prompt("a red ball moves left")
    s1, s2 = eager.new_stream(seed=3), compiled.new_stream(seed=3)
    chunks = compiled.steady_state_chunks() + 1  # the cache fills, then stays full
    assert chunks == 4  # (sink 3 + window 3) / 3 frames per chunk, + 1
    old = torch._dynamo.config.error_on_recompile
    torch._dynamo.config.error_on_recompile = True
    try:
        for _ in range(chunks):
            a = eager.generate_chunk(s1, emb, ltc=False).frames
            b = compiled.generate_chunk(s2, emb, ltc=False).frames
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    finally:
        torch._dynamo.config.error_on_recompile = old
        torch._dynamo.reset()


def test_bench_records_a_failing_lever_and_keeps_partial_results(tmp_path, monkeypatch):
    """One configuration raising (a compiler error, out of memory) is an entry with its error; the
    others are measured, their shares computed without it, and the JSON file is rewritten after
    every configuration."""
    import argparse

    from ltc_stream import bench

    seen_files = []

    def fake_run(args, cfg):
        seen_files.append(json.loads(out.read_text())["runs"] if out.exists() else [])
        if cfg["lever"] == "compile":
            raise RuntimeError("inductor failed\nlong traceback")
        fps = {"baseline": 10.0, "ltc": 12.5, "tiny_decoder": 20.0}[cfg["lever"]]
        return dict(cfg, e2e_fps=fps)

    monkeypatch.setattr(bench, "run_config", fake_run)
    monkeypatch.setattr(bench, "_tiny_available", lambda args: True)
    out = tmp_path / "bench.json"
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--model", "x", "--device", "cpu", "--levers", "ltc,decoder,compile", "--json",
                              "--output", str(out)])
    assert bench.main(args) == 0
    report = json.loads(out.read_text())
    runs = {r["lever"]: r for r in report["runs"]}
    assert runs["compile"]["error"] == "RuntimeError: inductor failed"
    assert report["lever_speedups"] == {"ltc": 1.25, "tiny_decoder": 1.6, "best_over_baseline": 2.0}
    assert [len(r) for r in seen_files] == [0, 1, 2, 3]  # written after each configuration


def test_serve_compile_compiles_regionally_and_warms_up_before_serving(wan_folder, monkeypatch, capsys):
    """`serve --compile`: the network's repeated blocks are compiled, and the model streams through
    its KV cache's fill on a throwaway stream before the server starts (viewers then get the warm
    model). Traced with dynamo's 'eager' backend here (the GPU run measures inductor's code)."""
    import argparse

    import torch._dynamo

    from ltc_stream.models import speed
    from ltc_stream.server import app

    model = load_model(str(wan_folder), device="cpu", height=32, width=48, decoder="vae")
    calls = _count_calls(model.transformer)
    served = {}

    async def fake_serve(m, cfg):
        served["model"], served["calls"] = m, calls["n"]

    monkeypatch.setattr(speed, "BACKEND", "eager")
    monkeypatch.setattr("ltc_stream.models.load_model", lambda *a, **k: model)
    monkeypatch.setattr(app, "_serve", fake_serve)
    parser = argparse.ArgumentParser()
    app.add_arguments(parser)
    try:
        assert app.main(parser.parse_args(["--model", str(wan_folder), "--device", "cpu", "--compile"])) == 0
    finally:
        torch._dynamo.reset()
    assert served["model"] is model
    assert all(block._compiled_call_impl is not None for block in model.transformer.blocks)
    # (sink 3 + window 9) / 3 frames per chunk + 1 = 5 chunks, each 4 steps + the cache write
    assert served["calls"] == model.steady_state_chunks() * 5 == 25
    assert "warm in" in capsys.readouterr().out


@torch.no_grad()
def test_timesteps_reach_the_network_exactly_and_its_sinusoid_is_float64():
    """In bfloat16 the model still receives 937.5 (not 936) and embeds it with the reference's
    float64 sinusoid: cat(cos, sin) of t * 10000^(-k/half)."""
    from ltc_stream.models.causal_wan import CausalWanModel

    transformer, vae = tiny_wan_parts(seed=4)
    transformer = transformer.to(torch.bfloat16)
    model = CausalWanModel(transformer, vae.to(torch.bfloat16), encode_text=None, height=32, width=48,
                           sampler="renoise", timesteps=[1000.0, 937.5, 2500 / 3, 625.0],
                           sigmas=[1.0, 0.9375, 5 / 6, 0.625, 0.0])
    seen = []
    proj = model.transformer.condition_embedder.timesteps_proj
    original = proj.forward

    def spy(t):
        seen.append(t.clone())
        return original(t)

    proj.forward = spy
    state = model.new_stream(0)
    model.ctx.cache = state.cache
    emb = torch.randn(1, 8, 32, dtype=torch.bfloat16)
    model.denoiser_fn(emb)(torch.randn(model.latent_shape()), 0.9375)
    assert seen[0].dtype == torch.float32 and seen[0].tolist() == [937.5]
    t = torch.tensor([937.5, 2500 / 3, 0.0]).double()  # the float32 timesteps, as the reference receives them
    half = 8
    angles = t[:, None] * torch.tensor([10000.0 ** (-k / half) for k in range(half)], dtype=torch.float64)
    reference = torch.cat([angles.cos(), angles.sin()], 1).float()
    torch.testing.assert_close(original(t.float()), reference, atol=1e-7, rtol=0)
    from diffusers.models.embeddings import get_timestep_embedding

    float32 = get_timestep_embedding(t.float(), 16, flip_sin_to_cos=True, downscale_freq_shift=0)
    assert (float32 - reference).abs().max() > 1e-6  # what the stock float32 table would have given
