"""`ltc-stream import`: tiny random Wan weights written in each published checkpoint's layout come
back as the identical diffusers tensors; the LoRA merge equals the LoRA forward; wrong checkpoints
get one clear error; the imported folder streams through `load_model` exactly as `serve` loads it,
with the authors' timesteps reaching the transformer."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from ltc_stream.cli import main as cli_main
from ltc_stream.errors import ConfigError, ModelNotFoundError
from ltc_stream.models import load_model
from ltc_stream.models.importers import CheckpointMismatchError, import_checkpoint, kind_schedule, KINDS

from real_model_fixtures import diffusers_to_original, save_tiny_wan, taehv_published_state

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_wan(tmp_path_factory.mktemp("base") / "Wan2.1-T2V-tiny")


@pytest.fixture(scope="module")
def weights(base):
    """Two different diffusers-layout state dicts (the 'generator' and its EMA)."""
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel.from_pretrained(base / "transformer")
    ema = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(5)
    raw = {k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in ema.items()}
    return raw, ema


def wrapped(state, fsdp: bool = False):
    """The original layout under the training wrapper's `model.` (and FSDP's module) prefixes."""
    out = {}
    for key, value in diffusers_to_original(state).items():
        if fsdp and key.startswith("blocks."):
            key = "_fsdp_wrapped_module." + key
        out["model." + key] = value
    return out


def imported(out):
    return load_file(str(out / "transformer" / "diffusion_pytorch_model.safetensors"))


def assert_identical(got, want):
    assert set(got) == set(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_inverse_key_map_is_checked_by_diffusers_forward_conversion(weights):
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    _, ema = weights
    original = diffusers_to_original(ema)
    assert "head.modulation" in original and "blocks.0.self_attn.q.weight" in original
    assert len(original) == len(ema) == 69
    assert_identical(convert_wan_transformer_to_diffusers(dict(original)), ema)


def test_self_forcing_round_trip_ema_by_default_and_generator_on_request(base, weights, tmp_path):
    raw, ema = weights
    src = tmp_path / "self_forcing_dmd.pt"
    torch.save({"generator": wrapped(raw, fsdp=True), "generator_ema": wrapped(ema), "critic": {"x": torch.zeros(1)}},
               src)
    manifest = import_checkpoint("self-forcing", src, base, tmp_path / "sf")
    assert_identical(imported(tmp_path / "sf"), ema)
    assert manifest["source"]["weights"] == "generator_ema"
    import_checkpoint("self-forcing", src, base, tmp_path / "sf-raw", weights="generator")
    assert_identical(imported(tmp_path / "sf-raw"), raw)
    for name in ("text_encoder", "tokenizer", "vae"):  # linked, not copied
        assert (tmp_path / "sf" / name).is_symlink() and (tmp_path / "sf" / name).resolve() == (base / name).resolve()


def test_causvid_and_reward_forcing_containers(base, weights, tmp_path):
    raw, ema = weights
    torch.save({"generator": wrapped(raw)}, tmp_path / "model.pt")
    import_checkpoint("causvid", tmp_path / "model.pt", base, tmp_path / "cv")
    assert_identical(imported(tmp_path / "cv"), raw)
    torch.save(wrapped(ema), tmp_path / "rewardforcing.pt")  # a bare state dict
    import_checkpoint("reward-forcing", tmp_path / "rewardforcing.pt", base, tmp_path / "rf")
    assert_identical(imported(tmp_path / "rf"), ema)
    info = load_model(str(tmp_path / "rf"), device="cpu", height=32, width=48).describe()
    # its authors' attention of 9 frames: EMA sink 3 + 3 past + the block's own 3
    assert (info["sink_frames"], info["window_frames"], info["sink_ema"]) == (3, 3, 0.999)
    info = load_model(str(tmp_path / "cv"), device="cpu", height=32, width=48).describe()
    assert info["timesteps"] == [1000.0, 757.0, 522.0] and info["sink_ema"] is None
    with pytest.raises(CheckpointMismatchError, match="bare state dict"):
        import_checkpoint("self-forcing", tmp_path / "rewardforcing.pt", base, tmp_path / "x")
    with pytest.raises(CheckpointMismatchError, match="expects a bare state dict"):
        import_checkpoint("reward-forcing", tmp_path / "model.pt", base, tmp_path / "y")


def test_wrong_keys_and_shapes_are_one_error_naming_the_first(base, weights, tmp_path):
    _, ema = weights
    state = wrapped(ema)
    missing = {k: v for k, v in state.items() if k != "model.blocks.1.ffn.0.weight"}
    torch.save({"generator": missing}, tmp_path / "missing.pt")
    with pytest.raises(CheckpointMismatchError, match=r"1 missing \(first: blocks\.1\.ffn\.net\.0\.proj\.weight\)"):
        import_checkpoint("causvid", tmp_path / "missing.pt", base, tmp_path / "a")
    extra = dict(state, **{"model.img_emb.proj.0.weight": torch.zeros(4)})
    torch.save({"generator": extra}, tmp_path / "extra.pt")
    with pytest.raises(CheckpointMismatchError, match="unexpected.*condition_embedder.image_embedder.norm1.weight"):
        import_checkpoint("causvid", tmp_path / "extra.pt", base, tmp_path / "b")
    bigger = dict(state, **{"model.head.head.weight": torch.zeros(128, 24)})
    torch.save({"generator": bigger}, tmp_path / "bigger.pt")
    with pytest.raises(CheckpointMismatchError, match=r"other shapes \(first: proj_out\.weight \(128, 24\)"):
        import_checkpoint("causvid", tmp_path / "bigger.pt", base, tmp_path / "c")
    torch.save({"generator": {"unet.conv_in.weight": torch.zeros(1)}}, tmp_path / "unet.pt")
    with pytest.raises(CheckpointMismatchError, match="not a Wan transformer"):
        import_checkpoint("causvid", tmp_path / "unet.pt", base, tmp_path / "d")
    # through the CLI: one line, exit 2, nothing written
    code = cli_main(["import", "causvid", str(tmp_path / "missing.pt"), "--base", str(base), "--out", str(tmp_path / "e")])
    assert code == 2 and not (tmp_path / "e" / "stream.json").exists()
    with pytest.raises(ModelNotFoundError, match="model_index.json"):
        import_checkpoint("causvid", tmp_path / "missing.pt", tmp_path, tmp_path / "f")


def _lora_targets(original):
    """Every Linear of each attention block (LongLive's target modules): q, k, v, o, ffn.0, ffn.2."""
    return sorted(k[: -len(".weight")] for k, v in original.items()
                  if k.startswith("blocks.") and k.endswith(".weight") and v.ndim == 2)


def test_longlive_lora_merge_equals_the_lora_forward(base, weights, tmp_path):
    _, ema = weights
    original = diffusers_to_original(ema)
    targets = _lora_targets(original)
    assert len(targets) == 2 * 10  # two blocks: self q k v o, cross q k v o, ffn.0, ffn.2
    gen = torch.Generator().manual_seed(7)
    rank, alpha = 4, 8.0
    lora = {}
    for module in targets:
        out_f, in_f = original[module + ".weight"].shape
        lora[f"base_model.model.{module}.lora_A.weight"] = torch.randn(rank, in_f, generator=gen) * 0.1
        lora[f"base_model.model.{module}.lora_B.weight"] = torch.randn(out_f, rank, generator=gen) * 0.1
    torch.save({"generator": wrapped(ema)}, tmp_path / "longlive_base.pt")
    torch.save({"generator_lora": lora}, tmp_path / "lora.pt")
    with pytest.raises(CheckpointMismatchError, match="--lora"):
        import_checkpoint("longlive", tmp_path / "longlive_base.pt", base, tmp_path / "nolora")
    import_checkpoint("longlive", tmp_path / "longlive_base.pt", base, tmp_path / "ll", lora=tmp_path / "lora.pt",
                      lora_alpha=alpha)
    merged = diffusers_to_original(imported(tmp_path / "ll"))
    x = torch.randn(3, 64, generator=gen)
    for module in targets:  # PEFT's LoRA forward: W x + (alpha / r) B (A x), against the merged W' x
        w, b = original[module + ".weight"], original[module + ".bias"]
        xin = x[:, : w.shape[1]]
        a_ = lora[f"base_model.model.{module}.lora_A.weight"]
        b_ = lora[f"base_model.model.{module}.lora_B.weight"]
        want = torch.nn.functional.linear(xin, w, b) + (alpha / rank) * ((xin @ a_.T) @ b_.T)
        got = torch.nn.functional.linear(xin, merged[module + ".weight"], merged[module + ".bias"])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    untouched = [k for k in original if not any(k.startswith(m + ".") for m in targets)]
    for key in untouched:
        assert torch.equal(merged[key], original[key]), key
    bad = dict(lora)
    bad["base_model.model.blocks.0.self_attn.nope.lora_A.weight"] = torch.zeros(rank, 24)
    bad["base_model.model.blocks.0.self_attn.nope.lora_B.weight"] = torch.zeros(24, rank)
    torch.save(bad, tmp_path / "bad_lora.pt")
    with pytest.raises(CheckpointMismatchError, match="blocks.0.self_attn.nope"):
        import_checkpoint("longlive", tmp_path / "longlive_base.pt", base, tmp_path / "bad", lora=tmp_path / "bad_lora.pt")


def test_schedules_are_the_references():
    """Self-Forcing's steps warped through the shift-5 table reach the model as 1000, 937.5, 833.33,
    625; CausVid's go unwarped, its arithmetic using the shift-8 table's nearest sigma."""
    timesteps, sigmas = kind_schedule(KINDS["self-forcing"])
    assert timesteps == pytest.approx([1000.0, 937.5, 2500 / 3, 625.0], abs=1e-4)
    assert sigmas == pytest.approx([1.0, 0.9375, 5 / 6, 0.625, 0.0], abs=1e-7)
    timesteps, sigmas = kind_schedule(KINDS["causvid"])
    assert timesteps == [1000.0, 757.0, 522.0]
    table = [8 * (k / 1000) / (1 + 7 * (k / 1000)) for k in range(1, 1001)]  # the shift-8 grid, exactly
    nearest = [min(table, key=lambda s: abs(1000 * s - t)) for t in (1000.0, 757.0, 522.0)]
    assert sigmas == pytest.approx(nearest + [0.0], abs=1e-6)


@pytest.fixture(scope="module")
def sf_folder(base, weights, tmp_path_factory):
    root = tmp_path_factory.mktemp("sf")
    _, ema = weights
    torch.save({"generator_ema": wrapped(ema)}, root / "self_forcing_dmd.pt")
    torch.save(taehv_published_state(), root / "taew2_1.pth")
    import_checkpoint("self-forcing", root / "self_forcing_dmd.pt", base, root / "folder", taehv=root / "taew2_1.pth")
    return root / "folder"


def test_imported_folder_streams_as_serve_loads_it_with_the_authors_timesteps(sf_folder):
    manifest = json.loads((sf_folder / "stream.json").read_text())
    assert manifest["sampling"]["sampler"] == "renoise" and manifest["cache"]["window_frames"] == 15
    model = load_model(str(sf_folder), device="cpu", height=32, width=48)
    info = model.describe()
    assert (info["kind"], info["sampler"], info["decoder"], info["text_length"]) == ("self-forcing", "renoise", "taehv", 512)
    assert (info["sink_frames"], info["window_frames"]) == (3, 15)
    received = []
    forward = model.transformer.forward

    def spy(*args, **kwargs):
        received.append(float(kwargs["timestep"][0]))
        return forward(*args, **kwargs)

    model.transformer.forward = spy
    state = model.new_stream(seed=0)
    emb = model.encode_prompt("a red ball moves left")
    first = model.generate_chunk(state, emb)
    second = model.generate_chunk(state, emb)
    assert first.frames.shape == (9, 32, 48, 3) and second.frames.shape == (12, 32, 48, 3)
    # four steps then the clean cache write at 0, per block
    assert received == pytest.approx([1000.0, 937.5, 2500 / 3, 625.0, 0.0] * 2, abs=1e-3)
    assert first.model_calls == 4 and state.cache.frames == 6


def test_imported_folder_options_and_errors(sf_folder, tmp_path):
    import shutil

    model = load_model(str(sf_folder), device="cpu", height=32, width=48, decoder="vae", sampler="euler",
                       window_frames=3)
    assert (model.sampler, model.window_frames, model.describe()["decoder"]) == ("euler", 3, "vae")
    with pytest.raises(ConfigError, match="unknown model option"):
        load_model(str(sf_folder), device="cpu", colour="red")
    with pytest.raises(ConfigError, match="choose from renoise, euler"):
        load_model(str(sf_folder), device="cpu", sampler="ddim")
    moved = tmp_path / "moved"
    shutil.copytree(sf_folder, moved, symlinks=True)
    (moved / "vae").unlink()
    (moved / "vae").symlink_to(tmp_path / "gone")
    with pytest.raises(ModelNotFoundError, match="base folder moved"):
        load_model(str(moved), device="cpu")
    (moved / "stream.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match="ltc-stream import"):
        load_model(str(moved), device="cpu")


def test_check_model_describes_loads_runs_a_block_and_estimates(sf_folder, capsys, tmp_path):
    from ltc_stream.check_model import component_parameters, memory_estimate

    code = cli_main(["check-model", str(sf_folder), "--device", "cpu", "--height", "32", "--width", "48"])
    out = capsys.readouterr().out
    assert code == 0
    for text in ("self-forcing", "renoise", "937.5", "sink 3 (fixed) + 15 past + 3 per block", "taehv",
                 "512 tokens", "one block", "9 frames 48x32", "no GPU here; estimate"):
        assert text in out, text
    model = load_model(str(sf_folder), device="cpu", height=32, width=48)
    counts = component_parameters(sf_folder)
    assert counts["transformer"] == sum(p.numel() for p in model.transformer.parameters())
    estimate = memory_estimate(model, counts, 2)
    # keys and values of 2 layers x (3 sink + 15 window) frames x (4 x 6 latents / 2x2 patches) tokens x 24 wide
    assert estimate["kv_cache_gib"] * 2 ** 30 == 2 * 2 * 18 * 6 * 24 * 2
    assert estimate["transformer_gib"] * 2 ** 30 == counts["transformer"] * 2
    empty = tmp_path / "empty"
    empty.mkdir()
    capsys.readouterr()
    assert cli_main(["check-model", str(empty), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stream.json" in err[0]


def test_animatediff_lightning_import_streams_with_the_model_cards_sampler(tmp_path):
    from diffusers import MotionAdapter
    from safetensors.torch import save_file

    from real_model_fixtures import save_tiny_sd15

    base = save_tiny_sd15(tmp_path / "sd15")
    torch.manual_seed(3)
    adapter = MotionAdapter(block_out_channels=(8, 16), motion_layers_per_block=1, motion_norm_num_groups=4)
    state = {k: v.contiguous() for k, v in adapter.state_dict().items()}
    src = tmp_path / "animatediff_lightning_4step_diffusers.safetensors"
    save_file(state, str(src))
    assert cli_main(["import", "animatediff-lightning", str(src), "--base", str(base), "--out", str(tmp_path / "ad")]) == 0
    manifest = json.loads((tmp_path / "ad" / "stream.json").read_text())
    assert manifest["sampling"] == {"sampler": "euler", "steps": 4, "timestep_spacing": "trailing",
                                    "beta_schedule": "linear", "guidance_scale": 1.0}
    assert_identical(load_file(str(tmp_path / "ad" / "motion_adapter" / "diffusion_pytorch_model.safetensors")), state)
    model = load_model(str(tmp_path / "ad"), device="cpu", height=32, width=32, window=8, overlap=2)
    assert model.timesteps == [999.0, 749.0, 499.0, 249.0] and model.guidance_scale == 1.0
    state_ = model.new_stream(seed=0)
    emb = model.encode_prompt("a green ball")
    assert model.generate_chunk(state_, emb).frames.shape == (8, 32, 32, 3)
    assert model.generate_chunk(state_, emb).frames.shape == (6, 32, 32, 3)
    other = MotionAdapter(block_out_channels=(8, 16), motion_layers_per_block=2, motion_norm_num_groups=4)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()},
              str(tmp_path / "animatediff_lightning_2step_diffusers.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="unexpected"):
        from ltc_stream.models.importers import import_animatediff_lightning

        import_animatediff_lightning(tmp_path / "animatediff_lightning_2step_diffusers.safetensors", base, tmp_path / "x")


@torch.no_grad()
def test_first_block_is_the_authors_renoise_loop_on_the_stock_transformer(sf_folder, weights):
    """With the stream's noise fed in, block 0 of the imported folder equals a loop written here on
    the stock diffusers transformer: x0 = x - sigma v(x, t), x = (1 - s') x0 + s' eps, over
    (t, sigma) = (1000, 1), (937.5, .9375), (833.33, .8333), (625, .625). The only difference is the
    timestep sinusoid (float64 there, float32 in stock diffusers): relative L2 below 1e-4."""
    from diffusers import WanTransformer3DModel

    model = load_model(str(sf_folder), device="cpu", height=32, width=48, decoder="vae")
    gen = torch.Generator().manual_seed(11)
    draws = [torch.randn(model.latent_shape(), generator=gen) for _ in range(4)]
    fed = iter(draws)
    state = model.new_stream(seed=0)
    state.noise = lambda shape: next(fed)
    captured = {}
    write = model._write_cache
    model._write_cache = lambda st, latents, emb: (captured.setdefault("latents", latents.clone()), write(st, latents, emb))
    emb = torch.randn(1, 16, 32, generator=gen)
    model.generate_chunk(state, emb)
    stock = WanTransformer3DModel.from_pretrained(sf_folder / "transformer").eval()
    x = draws[0]
    schedule = [(1000.0, 1.0), (937.5, 0.9375), (2500 / 3, 5 / 6), (625.0, 0.625)]
    for i, (t, sigma) in enumerate(schedule):
        v = stock(x, timestep=torch.tensor([t]), encoder_hidden_states=emb, return_dict=False)[0]
        x0 = x - sigma * v
        x = (1 - schedule[i + 1][1]) * x0 + schedule[i + 1][1] * draws[i + 1] if i + 1 < len(schedule) else x0
    got = captured["latents"]
    assert float((got - x).norm() / x.norm()) < 1e-4
