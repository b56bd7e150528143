"""Loading a folder written by `ltc-stream import` (a `stream.json` beside diffusers components):
the manifest decides how the model is sampled (sampler, timesteps, sigmas, frames per block, cache
window and sink, text length), as its authors sample it. `--model-option` overrides a declared
setting for an experiment; the loaded model's `describe()` says what it runs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..device import resolve_device
from ..errors import CalibrationMismatchError, ConfigError, ModelNotFoundError
from .base import ModelOption, parse_model_options
from .importers import FORMAT, MANIFEST

OPTIONS: dict[str, ModelOption] = {
    "sampler": ModelOption(
        str, "renoise",
        "renoise: the authors' sampler (predict x0, re-noise with fresh noise at the next sigma); "
        "euler: deterministic flow-matching Euler over the same sigmas, a departure from the published "
        "model (other samples from the same noise: relative L2 1.7 from the Self-Forcing reference's on "
        "tests/fixtures/self_forcing_golden, against 6e-8 for renoise)",
        choices=("renoise", "euler")),
    "sink_frames": ModelOption(int, 3, "latent frames kept for ever at the start of the KV cache "
                                       "(default: the folder's, from its authors)", minimum=0, maximum=64),
    "window_frames": ModelOption(int, 15, "past latent frames kept besides the sink (default: the folder's: "
                                          "the authors' attention span less the sink and the block itself)",
                                 minimum=1, maximum=256),
    "recache": ModelOption(bool, True, "on a prompt switch, recompute the cached frames' keys/values under "
                                       "the new prompt (LongLive's re-cache)"),
}


def read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    try:
        manifest = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelNotFoundError(f"{file} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelNotFoundError(f"{file} is not an ltc-stream model manifest (format {FORMAT!r}); "
                                 "make the folder with: ltc-stream import KIND SRC --base WAN_FOLDER --out DIR")
    for key in ("kind", "sampling", "text") + (() if manifest.get("family") == "animatediff" else ("cache", "frames_per_block")):
        if key not in manifest:
            raise ModelNotFoundError(f"{file} lacks {key!r}; re-run ltc-stream import")
    return manifest


def check_folder(path: Path) -> None:
    """Every component present, links to the base included, before a weight is read."""
    for name in ("transformer", "vae", "text_encoder"):
        sub = path / name
        if sub.is_symlink() and not sub.exists():
            raise ModelNotFoundError(f"{sub} links to {sub.readlink()}, which is gone (was the base folder moved? "
                                     "re-run ltc-stream import)")
        if not (sub / "config.json").is_file():
            raise ModelNotFoundError(f"{path} has no {name}/config.json")
        if not any(p.name.endswith((".safetensors", ".bin")) for p in sub.iterdir()):
            raise ModelNotFoundError(f"{sub} has a config but no weights (*.safetensors)")
    tok = path / "tokenizer"
    if not tok.is_dir() or not any((tok / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "spiece.model")):
        raise ModelNotFoundError(f"{path} has no tokenizer/ files")


def load_stream_folder(path: Path, device: str = "auto", *, decoder: str = "auto", dtype: str | None = None,
                       height: int | None = None, width: int | None = None, ltc_choice: bool = True, **options: Any):
    import transformers
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from .adapters import _dtype, _text_encoder_fn, wan_taehv
    from .causal_wan import CausalWanModel

    manifest = read_manifest(path)
    if manifest.get("family") == "animatediff":  # a diffusers AnimateDiffPipeline folder with its manifest
        from .adapters import load_animatediff

        meta = json.loads((path / "model_index.json").read_text())
        given = {k: v for k, v in (("decoder", decoder), ("dtype", dtype), ("height", height), ("width", width))
                 if v is not None}
        sampling = manifest["sampling"]
        options = {"steps": sampling["steps"], "guidance_scale": sampling["guidance_scale"], **given, **options}
        return load_animatediff(path, meta, device=device, **options)
    chosen = parse_model_options(OPTIONS, options, f"{manifest['kind']} ({path})")
    check_folder(path)
    dev = resolve_device(device)
    torch_dtype = _dtype(dtype, dev)
    transformer = WanTransformer3DModel.from_pretrained(path / "transformer", torch_dtype=torch_dtype,
                                                        local_files_only=True)
    vae = AutoencoderKLWan.from_pretrained(path / "vae", torch_dtype=torch_dtype, local_files_only=True)
    enc_config = json.loads((path / "text_encoder" / "config.json").read_text())
    enc_name = (enc_config.get("architectures") or ["UMT5EncoderModel"])[0]
    enc_cls = getattr(transformers, enc_name, None)
    if enc_cls is None:
        raise ModelNotFoundError(f"text encoder class {enc_name!r} is not in transformers")
    text_encoder = enc_cls.from_pretrained(path / "text_encoder", local_files_only=True).to(dev, torch_dtype).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
    taehv = wan_taehv(path, decoder, dev, torch_dtype)
    transformer.to(dev).eval()
    vae.to(dev).eval()
    sampling, cache, video = manifest["sampling"], manifest["cache"], manifest.get("video", {})
    encode = _text_encoder_fn(tokenizer, text_encoder, dev, torch_dtype, int(manifest["text"]["max_length"]),
                              zero_padding=True)
    model = CausalWanModel(
        transformer, vae, encode_text=encode, taehv=taehv,
        height=height or video.get("height", 480), width=width or video.get("width", 832), fps=video.get("fps", 16.0),
        sampler=chosen.get("sampler", sampling["sampler"]), timesteps=sampling["timesteps"], sigmas=sampling["sigmas"],
        guidance_scale=float(sampling.get("guidance_scale", 1.0)), latent_frames_per_chunk=int(manifest["frames_per_block"]),
        sink_frames=chosen.get("sink_frames", cache["sink_frames"]),
        window_frames=chosen.get("window_frames", cache["window_frames"]),
        recache=chosen.get("recache", cache.get("recache_on_prompt_switch", True)),
        sink_ema=cache.get("sink_ema") if cache.get("sink_update") == "ema" else None,
        name=f"wan-causal:{manifest['kind']}:{path.name}",
        info={"kind": manifest["kind"], "authors_sampler": sampling["sampler"],
              "attention_frames": cache.get("attention_frames"), "sink_update": cache.get("sink_update", "fixed"),
              "text_length": int(manifest["text"]["max_length"])})
    if ltc_choice:  # off while calibrate measures afresh (a stored choice may be for other settings)
        load_ltc_choice(model, path)
    return model


def load_ltc_choice(model, path: Path) -> None:
    """The folder's stored LTC choice (`ltc_weights.json` from `calibrate_stream_folder`), refused
    with one clear error when its key (kind, sampler, timesteps, latent shape, ...) is not what
    this load runs: weights fitted for another sampler or size would silently skip the wrong step."""
    from ..ltc import LTCWeights
    from .adapters import LTC_FILE, model_ltc_key

    file = path / LTC_FILE
    if not file.is_file():
        return
    try:
        model.ltc_weights = LTCWeights.load(file, expect_key=model_ltc_key(model))
    except CalibrationMismatchError as exc:
        raise CalibrationMismatchError(f"{file}: {exc}; run `ltc-stream calibrate {path}` for these settings "
                                       "or remove the file") from None


def _embeddings(model, prompts_or_embeddings) -> torch.Tensor:
    """Prompts (encoded by the folder's text encoder) or embeddings [N, L, D] / a list of [1, L, D]."""
    if torch.is_tensor(prompts_or_embeddings):
        emb = prompts_or_embeddings
    else:
        items = list(prompts_or_embeddings)
        if not items:
            raise ConfigError("calibration needs at least one prompt")
        emb = torch.cat([model.encode_prompt(p) if isinstance(p, str) else (p if p.ndim == 3 else p[None])
                         for p in items])
    if emb.ndim != 3:
        raise ConfigError(f"prompt embeddings must be [N, tokens, dim], got shape {tuple(emb.shape)}")
    return emb.to(model.device, model.dtype)


@torch.no_grad()
def calibrate_stream_folder(folder, prompts_or_embeddings, *, device: str = "cpu", seeds: int = 2, seed: int = 0,
                            context_blocks: int = 2,
                            calls: int | None = None, save: bool = False, file=None, dtype: str | None = None,
                            height: int | None = None, width: int | None = None, out=None, command: str | None = None,
                            **options: Any) -> dict[str, Any]:
    """Measure the calls-versus-PSNR curve of an imported folder under its own sampler and store the
    chosen skip.

    The model is the folder loaded as `serve` loads it (`options` are model options). The curve is
    `eval_ltc.ltc_curve` on the chunk after `context_blocks` full-step blocks (a stream's chunks but
    its first see cached context; 0 measures first chunks) of every prompt x `seeds` noise draws:
    LTC at each setting of the sweep (under the re-noise sampler: the estimate on the clean
    predictions, then the same fresh re-noise, closed-form w_g per step), plain reuse of the previous
    prediction at the same skips, and the authors' schedule re-spaced to fewer steps, each in PSNR
    against the full run from the same noise. Calibration and evaluation use different noise draws.
    It is printed (`print_curve`, to `file`, default stderr); the skip is the best LTC point at
    `calls` model calls (default: one step fewer), `eval_ltc.choose_config`. With `save`, the
    weights go to `ltc_weights.json` in the folder, keyed by kind, sampler, timesteps and latent
    shape, and `serve`/`render` then skip that step whenever LTC is on. With `out`, the curve, the
    choice and `command` (what made it) are also written there as JSON.
    Returns {"curve", "config", "weights", "model_calls"}."""
    import sys

    from ..eval_ltc import calibrate_for, choose_config, ltc_curve, print_curve
    from ..ltc import sample, sample_renoise
    from .adapters import LTC_FILE, model_ltc_key
    from .causal_wan import shifted_sigmas

    if seeds < 1 or context_blocks < 0:
        raise ConfigError(f"seeds must be at least 1 and context_blocks at least 0, got {seeds}, {context_blocks}")
    path = Path(folder)
    given = {k: v for k, v in (("dtype", dtype), ("height", height), ("width", width)) if v is not None}
    model = load_stream_folder(path, device=device, decoder="vae", ltc_choice=False, **given, **options)
    emb = _embeddings(model, prompts_or_embeddings).repeat_interleave(seeds, 0)
    batch = emb.shape[0]
    gen = torch.Generator().manual_seed(seed)
    shape = model.latent_shape(batch)
    x_cal, x_eval = (torch.randn(shape, generator=gen).to(model.device) for _ in range(2))
    n = model.steps
    noises_cal = [torch.randn(shape, generator=gen).to(model.device) for _ in range(n - 1)]
    noises_eval = [torch.randn(shape, generator=gen).to(model.device) for _ in range(n - 1)]
    den = model.denoiser_fn(emb)
    state = model.new_stream(seed)
    model.ctx.cache = state.cache  # each sample's own context, written block after block as a stream does
    for _ in range(context_blocks):
        x = torch.randn(shape, generator=gen).to(model.device)
        noises = [torch.randn(shape, generator=gen).to(model.device) for _ in range(n - 1)]
        latents, _ = sample_renoise(den, x, model.sigmas, noises) if model.sampler == "renoise" else \
            sample(den, x, model.sigmas)
        model._write_cache(state, latents, emb)
    curve = ltc_curve(den, model.sigmas, x_cal, x_eval, sampler=model.sampler, noises_cal=noises_cal,
                      noises_eval=noises_eval, respace=lambda k: shifted_sigmas(k, model.shift))
    print_curve(curve, file or sys.stderr)
    cfg = choose_config(curve, calls)
    weights = calibrate_for(model.sampler, den, x_cal, model.sigmas, noises_cal, cfg)
    weights.key = model_ltc_key(model)
    print(f"chosen: skip step(s) {weights.skipped_steps} ({weights.model_calls} of {n} calls), "
          f"w_g {[round(weights.w_g[i], 4) for i in weights.skipped_steps]}"
          + (f"; written to {path / LTC_FILE}" if save else " (not saved)"), file=file or sys.stderr)
    if save:
        weights.save(path / LTC_FILE)
    if out is not None:
        manifest = read_manifest(path)
        report = {"command": command, "folder": str(path), "kind": manifest["kind"],
                  "weights_dtype": manifest.get("dtype"), "model": model.describe()["name"],
                  "prompts": [p if isinstance(p, str) else "<embedding>" for p in
                              (prompts_or_embeddings if not torch.is_tensor(prompts_or_embeddings) else [])],
                  "seeds": seeds, "context_blocks": context_blocks, "device": str(model.device), "latent_shape": list(model.latent_shape()),
                  "chosen": {"skipped": weights.skipped_steps, "model_calls": weights.model_calls,
                             "w_g": [round(weights.w_g[i], 4) for i in weights.skipped_steps]},
                  "curve": curve}
        Path(out).write_text(json.dumps(report, indent=1) + "\n")
    return {"curve": curve, "config": cfg, "weights": weights, "model_calls": weights.model_calls}
