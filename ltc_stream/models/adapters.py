"""Loading real diffusers models: local pipeline folders, or full-size random weights for benchmarks.

- A `WanPipeline` folder (Wan2.1-T2V-1.3B layout: transformer/, vae/, text_encoder/, tokenizer/,
  scheduler/, optional taehv/taew2_1.pth) becomes a `CausalWanModel`.
- An `AnimateDiffPipeline` folder (unet/, motion_adapter/ or a UNetMotionModel unet/, vae/,
  text_encoder/, tokenizer/, scheduler/, optional tiny_vae/) becomes an `AnimateDiffStreamModel`.
Components are loaded with their own `from_pretrained(..., local_files_only)`; nothing is
downloaded. Anything missing is named in the error before a single weight is read.

`wan-causal-1.3b` and `animatediff-lightning` without a folder build the architectures at full
size with random weights (and random text embeddings): for throughput only, labelled as such.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch

from ..device import resolve_device
from ..errors import ConfigError, ModelNotFoundError
from ..ltc import LTC_FILE, LTCConfig, LTCWeights, calibrate, calibrate_renoise, make_key

log = logging.getLogger(__name__)

SUPPORTED = {"WanPipeline": "causal Wan2.1", "AnimateDiffPipeline": "AnimateDiff(-Lightning)"}
_CONFIG_FILE = {"scheduler": "scheduler_config.json"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def _dtype(spec: str | None, device: torch.device) -> torch.dtype:
    if spec in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if spec not in table:
        raise ConfigError(f"unknown dtype {spec!r}: choose one of auto, {', '.join(table)}")
    return table[spec]


def check_components(path: Path, meta: dict[str, Any], required: tuple[str, ...]) -> None:
    """Every required component is named in model_index.json and present with config and weights."""
    for name in required:
        entry = meta.get(name)
        if not isinstance(entry, list) or len(entry) != 2 or entry[1] is None:
            raise ModelNotFoundError(f"{path / 'model_index.json'} names no '{name}' component")
        sub = path / name
        if not sub.is_dir():
            raise ModelNotFoundError(f"{path} is missing the '{name}/' folder that model_index.json names")
        if name == "tokenizer":
            if not any((sub / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "spiece.model", "vocab.json")):
                raise ModelNotFoundError(f"{sub} holds no tokenizer files (tokenizer.json or tokenizer_config.json)")
            continue
        config = sub / _CONFIG_FILE.get(name, "config.json")
        if not config.is_file():
            raise ModelNotFoundError(f"{sub} has no {config.name}")
        if name != "scheduler" and not any(p.name.endswith(_WEIGHT_SUFFIXES) for p in sub.iterdir()):
            raise ModelNotFoundError(f"{sub} has a config but no weights (*.safetensors or *.bin)")


def _text_encoder_fn(tokenizer, text_encoder, device, dtype, max_length: int, zero_padding: bool):
    """Prompt -> [1, L, D] embeddings, padded to a fixed length so prompts can be blended."""
    length = min(max_length, getattr(tokenizer, "model_max_length", max_length) or max_length)

    @torch.no_grad()
    def encode(text: str) -> torch.Tensor:
        ids = tokenizer([text], padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        mask = ids.get("attention_mask")
        out = text_encoder(ids["input_ids"].to(text_encoder.device),
                           attention_mask=mask.to(text_encoder.device) if mask is not None else None)
        states = out[0].to(device, dtype)
        if zero_padding and mask is not None:  # WanPipeline zeroes the padded positions
            states = states * mask.to(device, dtype)[..., None]
        return states

    return encode


def _random_text_fn(length: int, dim: int, device, dtype):
    """Stand-in for a text encoder in random-weight benchmarks: a fixed embedding per prompt."""

    def encode(text: str) -> torch.Tensor:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(1, length, dim, generator=gen).to(device, dtype)

    return encode


def _load_ltc(model, folder: Path | None) -> None:
    if folder is None or not (folder / LTC_FILE).is_file():
        return
    try:
        model.ltc_weights = LTCWeights.load(folder / LTC_FILE, expect_key=model_ltc_key(model))
    except Exception as exc:  # calibrated for another configuration: run without, loudly
        log.warning("LTC weights in %s not used: %s", folder / LTC_FILE, exc)


def model_ltc_key(model) -> dict[str, Any]:
    shape = list(model.latent_shape() if model.name.startswith("wan") else model.latent_shape(model.window))
    entries = dict(model=model.name, sampler=getattr(model, "sampler", "euler"), steps=model.steps,
                   latent_shape=shape, guidance_scale=float(model.guidance_scale))
    kind = getattr(model, "info", {}).get("kind")
    if kind is not None:  # an imported folder: its kind and timesteps, not its (renameable) folder name
        entries.update(model=f"wan-causal:{kind}", kind=kind, timesteps=[round(float(t), 4) for t in model.timesteps])
    return make_key(**entries)


@torch.no_grad()
def calibrate_model(model, prompts: list[str], cfg: LTCConfig | None = None, seed: int = 0) -> LTCWeights:
    """Closed-form LTC weights for a real model's first chunk over a batch of prompts."""
    cfg = cfg or LTCConfig()
    gen = torch.Generator(device=model.device).manual_seed(seed)
    emb = torch.cat([model.encode_prompt(p) for p in prompts])
    if model.name.startswith("wan"):
        model.ctx.cache = None  # first chunk: no causal context
        x_T = torch.randn(model.latent_shape(len(prompts)), generator=gen, device=model.device)
        den = model.denoiser_fn(emb)
        if model.sampler == "renoise":  # LTC on the clean predictions, re-noised with the same noise
            noises = [torch.randn(x_T.shape, generator=gen, device=model.device) for _ in range(model.steps - 1)]
            weights = calibrate_renoise(den, x_T, model.sigmas, noises, cfg)
            weights.key = model_ltc_key(model)
            return weights
    else:
        s0 = model.sigmas[0]
        x_T = s0 * torch.randn(model.latent_shape(model.window, len(prompts)), generator=gen, device=model.device)
        den = model.denoiser_fn(emb, None)
    weights = calibrate(den, x_T, model.sigmas, cfg)
    weights.key = model_ltc_key(model)
    return weights


# ------------------------------------------------------------------------------------------------
def load_diffusers_folder(path: Path, meta: dict[str, Any], device: str = "auto", **options: Any):
    cls = meta.get("_class_name")
    if cls == "WanPipeline":
        return load_causal_wan(path, meta, device=device, **options)
    if cls == "AnimateDiffPipeline":
        return load_animatediff(path, meta, device=device, **options)
    raise ModelNotFoundError(
        f"{path} is a {cls!r} pipeline; supported: " + ", ".join(f"{k} ({v})" for k, v in SUPPORTED.items()))


def _pop(options: dict, allowed: set[str], what: str) -> dict:
    unknown = set(options) - allowed
    if unknown:
        raise ConfigError(f"unknown option(s) for {what}: {', '.join(sorted(unknown))}")
    return options


def _tiny(path: Path | None, decoder: str):
    """TAESD (diffusers AutoencoderTiny in tiny_vae/) for AnimateDiff."""
    if decoder not in ("auto", "vae", "tiny"):
        raise ConfigError(f"decoder must be auto, vae or tiny, got {decoder!r}")
    has = path is not None and (path / "tiny_vae" / "config.json").is_file()
    if decoder == "tiny" and not has:
        raise ModelNotFoundError(f"--decoder tiny needs a tiny_vae/ folder in {path}")
    if decoder == "vae" or not has:
        return None
    from diffusers import AutoencoderTiny

    return AutoencoderTiny.from_pretrained(path / "tiny_vae", local_files_only=True)


TAEHV_FILE = "taehv/taew2_1.pth"


def wan_taehv(path: Path | None, decoder: str, device, dtype):
    """TAEHV (taehv/taew2_1.pth in the folder) for Wan: `auto` uses it where the folder has it;
    `taehv` (or `tiny`, the name the benchmarks' lever uses) requires it; `vae` never."""
    if decoder not in ("auto", "vae", "tiny", "taehv"):
        raise ConfigError(f"decoder must be auto, vae or taehv, got {decoder!r}")
    file = path / TAEHV_FILE if path is not None else None
    has = file is not None and file.is_file()
    if decoder in ("tiny", "taehv") and not has:
        raise ModelNotFoundError(f"--decoder taehv needs {TAEHV_FILE} in {path} "
                                 "(ltc-stream import ... --taehv taew2_1.pth puts it there)")
    if decoder == "vae" or not has:
        return None
    from .taehv import load_taehv

    return load_taehv(file, device, dtype)


WAN_OPTIONS = {"steps", "height", "width", "decoder", "sampler", "dtype", "guidance_scale", "shift",
               "window_frames", "sink_frames", "latent_frames_per_chunk", "recache"}


def load_causal_wan(path: Path, meta: dict[str, Any], device: str = "auto", **options: Any):
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    import transformers

    from .causal_wan import CausalWanModel

    opts = _pop(dict(options), WAN_OPTIONS, "causal Wan")
    check_components(path, meta, ("transformer", "vae", "text_encoder", "tokenizer"))
    dev = resolve_device(device)
    dtype = _dtype(opts.pop("dtype", None), dev)
    transformer = WanTransformer3DModel.from_pretrained(path / "transformer", torch_dtype=dtype, local_files_only=True)
    vae = AutoencoderKLWan.from_pretrained(path / "vae", torch_dtype=dtype, local_files_only=True)
    enc_cls = getattr(transformers, meta["text_encoder"][1], None)
    if enc_cls is None:
        raise ModelNotFoundError(f"text encoder class {meta['text_encoder'][1]!r} is not in transformers")
    text_encoder = enc_cls.from_pretrained(path / "text_encoder", local_files_only=True).to(dev, dtype).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
    taehv = wan_taehv(path, opts.pop("decoder", "auto"), dev, dtype)
    transformer.to(dev).eval()
    vae.to(dev).eval()
    encode = _text_encoder_fn(tokenizer, text_encoder, dev, dtype, 512, zero_padding=True)
    # A WanPipeline folder is the bidirectional Wan2.1 base, not a published streaming model: no
    # authors' chunk-wise sampler exists for it. It is sampled chunk by chunk with deterministic
    # flow-matching Euler over shift-5 sigmas (its FlowMatchEulerDiscreteScheduler's family; the
    # sampler its ltc_weights.json is calibrated for). Published streaming models come through
    # `ltc-stream import`, whose stream.json names their authors' re-noise sampler.
    opts.setdefault("sampler", "euler")
    model = CausalWanModel(transformer, vae, encode_text=encode, taehv=taehv,
                           height=opts.pop("height", 480), width=opts.pop("width", 832),
                           name=f"wan-causal:{path.name}", **opts)
    _load_ltc(model, path)
    return model


AD_OPTIONS = {"steps", "height", "width", "decoder", "dtype", "guidance_scale", "window", "overlap"}


def load_animatediff(path: Path, meta: dict[str, Any], device: str = "auto", **options: Any):
    from diffusers import AnimateDiffPipeline

    from .animatediff import AnimateDiffStreamModel

    opts = _pop(dict(options), AD_OPTIONS, "AnimateDiff")
    check_components(path, meta, ("unet", "vae", "text_encoder", "tokenizer", "scheduler"))
    dev = resolve_device(device)
    dtype = _dtype(opts.pop("dtype", None), dev)
    pipe = AnimateDiffPipeline.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
    tiny = _tiny(path, opts.pop("decoder", "auto"))
    pipe.unet.to(dev).eval()
    pipe.vae.to(dev).eval()
    pipe.text_encoder.to(dev).eval()
    if tiny is not None:
        tiny.to(dev, dtype).eval()
    encode = _text_encoder_fn(pipe.tokenizer, pipe.text_encoder, dev, dtype, 77, zero_padding=False)
    model = AnimateDiffStreamModel(pipe.unet, pipe.vae, pipe.scheduler, encode_text=encode, tiny_decoder=tiny,
                                   height=opts.pop("height", 512), width=opts.pop("width", 512),
                                   name=f"animatediff:{path.name}", **opts)
    _load_ltc(model, path)
    return model


# ------------------------------------------------------------------------------------------------
def wan_1_3b_config() -> dict[str, Any]:
    """Wan2.1-T2V-1.3B transformer configuration (diffusers layout)."""
    return dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
                text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)


def load_random_full_size(spec: str, device: str = "auto", **options: Any):
    """Full-size architectures with random weights, for throughput benchmarks only."""
    dev = resolve_device(device)
    opts = dict(options)
    dtype = _dtype(opts.pop("dtype", None), dev)
    torch.manual_seed(0)
    if spec == "wan-causal-1.3b":
        from diffusers import AutoencoderKLWan, WanTransformer3DModel

        from .causal_wan import CausalWanModel
        from .taehv import TAEHVDecoder

        _pop(opts, WAN_OPTIONS - {"dtype"}, spec)
        decoder = opts.pop("decoder", "vae")
        with torch.device(dev):
            transformer = WanTransformer3DModel(**wan_1_3b_config()).to(dtype).eval()
            vae = AutoencoderKLWan().to(dtype).eval()
            taehv = TAEHVDecoder().to(dtype).eval() if decoder in ("tiny", "taehv") else None
        # the stand-in for Self-Forcing: sampled as its authors sample it (what import writes for
        # self-forcing: re-noise sampler, warped steps, 3 frames per block, its cache)
        from .importers import FRAMES_PER_BLOCK, KINDS, kind_schedule

        kind = KINDS["self-forcing"]
        timesteps, sigmas = kind_schedule(kind)
        authors = dict(sampler="renoise", timesteps=timesteps, sigmas=sigmas, shift=kind.shift,
                       latent_frames_per_chunk=FRAMES_PER_BLOCK, sink_frames=kind.sink_frames,
                       window_frames=kind.attention_frames - kind.sink_frames - FRAMES_PER_BLOCK)
        if "steps" in opts:  # another step count is not the authors' schedule: shifted sigmas, Euler or not
            authors = {k: v for k, v in authors.items() if k not in ("timesteps", "sigmas")}
        return CausalWanModel(transformer, vae, encode_text=_random_text_fn(512, 4096, dev, dtype), taehv=taehv,
                              height=opts.pop("height", 480), width=opts.pop("width", 832),
                              name="wan-causal-1.3b (random weights: throughput only)",
                              info={"kind": "self-forcing (random weights)", "authors_sampler": "renoise"},
                              **{**authors, **opts})
    if spec == "animatediff-lightning":
        from diffusers import AutoencoderKL, AutoencoderTiny, EulerDiscreteScheduler, MotionAdapter, UNet2DConditionModel
        from diffusers import UNetMotionModel

        from .animatediff import AnimateDiffStreamModel

        _pop(opts, AD_OPTIONS - {"dtype"}, spec)
        decoder = opts.pop("decoder", "vae")
        with torch.device(dev):
            unet2d = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)  # SD1.5 layout
            unet = UNetMotionModel.from_unet2d(unet2d, MotionAdapter()).to(dtype).eval()
            del unet2d
            vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], latent_channels=4,
                                down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                                layers_per_block=2, sample_size=512).to(dtype).eval()
            tiny = AutoencoderTiny().to(dtype).eval() if decoder == "tiny" else None
        scheduler = EulerDiscreteScheduler(beta_schedule="linear", beta_start=0.00085, beta_end=0.012,
                                           timestep_spacing="trailing")
        return AnimateDiffStreamModel(unet, vae, scheduler, encode_text=_random_text_fn(77, 768, dev, dtype),
                                      tiny_decoder=tiny, height=opts.pop("height", 512), width=opts.pop("width", 512),
                                      name="animatediff-lightning (random weights: throughput only)", **opts)
    raise ModelNotFoundError(f"no full-size random architecture named {spec!r}")
