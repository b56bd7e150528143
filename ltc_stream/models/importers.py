"""`ltc-stream import KIND SRC --base WAN_FOLDER --out DIR`: a published streaming checkpoint ->
a self-describing model folder that `serve --model DIR` loads.

The folder holds:
- `transformer/`: diffusers `WanTransformer3DModel` weights (safetensors) and the base's config;
- `text_encoder/`, `tokenizer/`, `vae/`: symbolic links to the base Wan2.1-T2V-1.3B diffusers folder
  (nothing is copied twice);
- `taehv/taew2_1.pth` (optional, `--taehv FILE`): a link to the tiny decoder;
- `stream.json`: everything sampling needs, from the authors' configs (see `KINDS`).

Weights go through diffusers' own converter (`convert_wan_transformer_to_diffusers`) after the
training wrappers' prefixes (`model.`, `_fsdp_wrapped_module.`) are stripped; the converted key
set and shapes are then checked against the architecture the base's config builds, so a
checkpoint that is not what KIND says fails with the first missing or unexpected keys instead of
loading half a model.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import LTCStreamError, ModelNotFoundError

MANIFEST = "stream.json"
FORMAT = "ltc-stream-model/1"
TAEHV_FILE = "taehv/taew2_1.pth"
LINKED = ("text_encoder", "tokenizer", "vae")


class CheckpointMismatchError(LTCStreamError):
    """A checkpoint that is not what its KIND says (container, key set or shapes)."""

    code = "checkpoint_mismatch"


@dataclass(frozen=True)
class Kind:
    """What one published model's reference code does at inference."""

    checkpoint: str  # the published file's name, for messages
    container: str  # "generator": a dict with generator(_ema); "bare": the state dict itself
    steps: tuple[int, ...]  # the authors' denoising_step_list (final 0 dropped)
    shift: float  # the flow-matching schedule's shift
    warp: bool  # steps mapped through the shifted schedule's timesteps (warp_denoising_step)
    attention_frames: int  # latent frames one block attends to, its own included
    sink_frames: int  # first frames kept for ever (0: none)
    sink_update: str = "fixed"  # "ema": the sink's keys/values are a running average (Reward Forcing)
    sink_ema: float | None = None
    lora: bool = False  # a PEFT LoRA of the generator merged at import (LongLive)
    # prompt switch: "authors" = this kind's reference re-caches (LongLive); "longlive" = its reference
    # has no prompt switch, and the project re-caches as LongLive does
    recache: str = "longlive"
    source: str = ""


FRAMES_PER_BLOCK = 3
TRAINED_FRAMES = 21  # the clips these models were trained on: 21 latent frames (81 video frames)

KINDS: dict[str, Kind] = {
    # Self-Forcing (Apache-2.0): inference.py + configs/self_forcing_dmd.yaml; local_attn_size -1 means
    # a cache of 32760 = 21 x 1560 tokens, read whole, the current block included: the clip it was
    # trained on (the reference cannot write a 22nd frame); past 21 frames the project keeps a sink of 3
    "self-forcing": Kind("self_forcing_dmd.pt", "generator", (1000, 750, 500, 250), 5.0, True, TRAINED_FRAMES, 3,
                         source="github.com/guandeh17/Self-Forcing"),
    # CausVid (CC BY-NC-SA: facts only): 3 steps, no warp, shift 8
    "causvid": Kind("model.pt", "generator", (1000, 757, 522), 8.0, False, TRAINED_FRAMES, 3,
                    source="github.com/tianweiy/CausVid"),
    # LongLive v1 (Apache-2.0): local attention 12 frames including a sink of 3 and the current block
    # (cache of 12 x 1560 tokens, keys stored rotated at their absolute frame), KV re-cache on a
    # prompt switch; base weights + PEFT LoRA rank 256, alpha 256
    "longlive": Kind("longlive_base.pt", "generator", (1000, 750, 500, 250), 5.0, True, 12, 3, lora=True,
                     recache="authors", source="github.com/NVlabs/LongLive (v1, Wan2.1-T2V-1.3B)"),
    # Reward Forcing (Apache-2.0): a bare state dict; local 9 = EMA sink 3 + 3 past + the current
    # block, cached keys rotated at read time by their slot (cache-relative, as the project does)
    "reward-forcing": Kind("rewardforcing.pt", "bare", (1000, 750, 500, 250), 5.0, True, 9, 3, sink_update="ema",
                           sink_ema=0.999, source="Reward Forcing's reference code"),
}


# ------------------------------------------------------------------------------------------------
# Schedules
# ------------------------------------------------------------------------------------------------
def flow_table(shift: float, n: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """The references' training scheduler (sigma 1 -> 0 in n steps, the last dropped, shifted):
    sigma = shift s / (1 + (shift - 1) s), timestep = 1000 sigma; float32 as they compute it."""
    s = torch.linspace(1.0, 0.0, n + 1)[:-1]
    sigmas = shift * s / (1 + (shift - 1) * s)
    return sigmas, sigmas * 1000


def kind_schedule(kind: Kind) -> tuple[list[float], list[float]]:
    """(timesteps the transformer receives, sigmas the sampler's arithmetic uses, ending in 0).

    Warped steps are read from the table (`timesteps[1000 - step]`); unwarped ones go to the
    model as given. Either way the references convert and re-noise with the table's sigma
    nearest to the timestep."""
    sigmas, table = flow_table(kind.shift)
    timesteps = [float(table[1000 - s]) if kind.warp else float(s) for s in kind.steps]
    sig = [float(sigmas[torch.argmin((table - t).abs())]) for t in timesteps]
    return timesteps, sig + [0.0]


def manifest_for(kind_name: str, weights: str, src: Path, base: Path, lora: Path | None, taehv: bool) -> dict[str, Any]:
    kind = KINDS[kind_name]
    timesteps, sigmas = kind_schedule(kind)
    window = kind.attention_frames - kind.sink_frames - FRAMES_PER_BLOCK  # past frames besides the sink
    return {
        "format": FORMAT,
        "kind": kind_name,
        "family": "wan-causal",
        "source": {"checkpoint": str(src), "weights": weights, "lora": str(lora) if lora else None,
                   "base": str(base), "reference": kind.source},
        "sampling": {"sampler": "renoise", "timesteps": timesteps, "sigmas": sigmas, "authors_steps": list(kind.steps),
                     "shift": kind.shift, "warp": kind.warp, "context_noise": 0.0, "guidance_scale": 1.0},
        "frames_per_block": FRAMES_PER_BLOCK,
        "cache": {"attention_frames": kind.attention_frames, "sink_frames": kind.sink_frames, "window_frames": window,
                  "sink_update": kind.sink_update, "sink_ema": kind.sink_ema, "recache_on_prompt_switch": True,
                  "recache": kind.recache},
        "text": {"encoder": "umt5-xxl", "max_length": 512},
        "decoder": "taehv" if taehv else "vae",
        "video": {"height": 480, "width": 832, "fps": 16},
    }


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------
def _say(msg: str) -> None:
    print(f"[import] {msg}", file=sys.stderr, flush=True)


def load_checkpoint(path: Path) -> Any:
    """torch.load, memory-mapped where the file allows (a 5 GB .pt then costs no extra RAM)."""
    if not path.is_file():
        raise ModelNotFoundError(f"checkpoint {str(path)!r} not found")
    _say(f"reading {path} ({path.stat().st_size / 1e9:.2f} GB)...")
    t0 = time.perf_counter()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointMismatchError(f"{path} is not a PyTorch checkpoint torch.load can read safely: {exc}") from None
    _say(f"read in {time.perf_counter() - t0:.1f} s")
    return obj


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def select_weights(obj: Any, kind_name: str, weights: str | None, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The generator's state dict out of a checkpoint's container, as KIND's reference reads it."""
    kind = KINDS[kind_name]
    if kind.container == "bare":
        if not _is_state_dict(obj):
            keys = ", ".join(list(obj)[:4]) if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointMismatchError(f"{kind_name} expects a bare state dict ({kind.checkpoint}); {path} holds {keys}")
        if weights not in (None, "generator"):
            raise CheckpointMismatchError(f"{kind_name} checkpoints hold one set of weights; drop --weights {weights}")
        return obj, "state_dict"
    if not isinstance(obj, dict) or not ({"generator", "generator_ema"} & set(obj)):
        what = "a bare state dict (as reward-forcing's rewardforcing.pt is)" if _is_state_dict(obj) else \
            (f"keys {', '.join(list(obj)[:4])}" if isinstance(obj, dict) else type(obj).__name__)
        raise CheckpointMismatchError(f"{kind_name} expects a dict with 'generator' or 'generator_ema' "
                                      f"({kind.checkpoint}); {path} is {what}")
    if weights is None:  # the EMA weights where present, as the authors' inference --use_ema
        weights = "generator_ema" if "generator_ema" in obj else "generator"
    if weights not in obj:
        raise CheckpointMismatchError(f"{path} has no '{weights}' weights (it has: {', '.join(obj)})")
    state = obj[weights]
    if not _is_state_dict(state):
        raise CheckpointMismatchError(f"{path}['{weights}'] is not a state dict of tensors")
    return state, weights


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Training wrappers' names -> the original Wan layout: FSDP's `_fsdp_wrapped_module.` anywhere,
    the wrapper's leading `model.` (diffusers' Wan detection needs `head.modulation` exactly)."""
    out = {}
    for key, value in state.items():
        key = key.replace("_fsdp_wrapped_module.", "")
        if key.startswith("model."):
            key = key[len("model."):]
        out[key] = value
    return out


def _lora_module(key: str) -> tuple[str, str] | None:
    """`base_model.model.blocks.0.self_attn.q.lora_A(.default).weight` -> ("blocks.0.self_attn.q", "A")."""
    for part in ("A", "B"):
        for tag in (f".lora_{part}.default.weight", f".lora_{part}.weight"):
            if key.endswith(tag):
                module = key[: -len(tag)]
                for prefix in ("base_model.model.", "model."):
                    if module.startswith(prefix):
                        module = module[len(prefix):]
                return module.replace("_fsdp_wrapped_module.", ""), part
    return None


def merge_lora(state: dict[str, torch.Tensor], lora: dict[str, torch.Tensor], alpha: float | None) -> int:
    """W <- W + (alpha / r) B A for every LoRA pair (PEFT's merge of a linear layer), in float32,
    stored back in W's dtype. Returns how many layers were merged."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in lora.items():
        found = _lora_module(key)
        if found is None:
            raise CheckpointMismatchError(f"LoRA key {key!r} is not a PEFT lora_A/lora_B weight")
        pairs.setdefault(found[0], {})[found[1]] = value
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise CheckpointMismatchError(f"LoRA of {module} has lora_{''.join(ab)} without its pair")
        target = f"{module}.weight"
        if target not in state:
            raise CheckpointMismatchError(f"LoRA targets {module}, which the base checkpoint does not have")
        a, b = ab["A"].float(), ab["B"].float()
        rank = a.shape[0]
        w = state[target]
        if b.shape[1] != rank or (b.shape[0], a.shape[1]) != tuple(w.shape):
            raise CheckpointMismatchError(f"LoRA of {module}: A {tuple(a.shape)} B {tuple(b.shape)} "
                                          f"do not fit its weight {tuple(w.shape)}")
        scale = (rank if alpha is None else alpha) / rank
        state[target] = (w.float() + scale * (b @ a)).to(w.dtype)
    return len(pairs)


def expected_state(config: dict[str, Any]) -> dict[str, torch.Size]:
    """Key -> shape of the WanTransformer3DModel the config builds (on the meta device: no memory)."""
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(config)
    return {k: v.shape for k, v in model.state_dict().items()}


def convert_checked(original: dict[str, torch.Tensor], config: dict[str, Any], what: str) -> dict[str, torch.Tensor]:
    """Original Wan layout -> diffusers layout with diffusers' own converter, then the key set and
    shapes checked against the architecture (the converter and from_single_file are not strict)."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    if "head.modulation" not in original:
        first = ", ".join(sorted(original)[:3])
        raise CheckpointMismatchError(f"{what} is not a Wan transformer in the original layout "
                                      f"(no head.modulation; first keys: {first})")
    converted = convert_wan_transformer_to_diffusers(dict(original))
    want = expected_state(config)
    missing = sorted(set(want) - set(converted))
    unexpected = sorted(set(converted) - set(want))
    wrong = sorted(k for k in set(want) & set(converted) if tuple(want[k]) != tuple(converted[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:3])})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} with other shapes (first: {k} {tuple(converted[k].shape)}, "
                         f"the base's config wants {tuple(want[k])})")
        raise CheckpointMismatchError(f"{what} does not fit the base's transformer config: " + "; ".join(parts))
    return converted


# ------------------------------------------------------------------------------------------------
# The folder
# ------------------------------------------------------------------------------------------------
def _check_base(base: Path) -> dict[str, Any]:
    if not (base / "model_index.json").is_file():
        raise ModelNotFoundError(f"--base {str(base)!r} is not a diffusers Wan folder (no model_index.json); "
                                 "give the Wan2.1-T2V-1.3B-Diffusers folder")
    meta = json.loads((base / "model_index.json").read_text())
    if meta.get("_class_name") != "WanPipeline":
        raise ModelNotFoundError(f"--base {base} is a {meta.get('_class_name')!r} folder, not a WanPipeline")
    for name in LINKED:
        if not (base / name).is_dir():
            raise ModelNotFoundError(f"--base {base} has no {name}/ folder")
    config_file = base / "transformer" / "config.json"
    if not config_file.is_file():
        raise ModelNotFoundError(f"--base {base} has no transformer/config.json")
    return json.loads(config_file.read_text())


def _link(target: Path, link: Path) -> None:
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target.resolve(), target_is_directory=target.is_dir())


def import_checkpoint(kind_name: str, src: Path, base: Path, out: Path, *, weights: str | None = None,
                      lora: Path | None = None, lora_alpha: float | None = None, taehv: Path | None = None,
                      overwrite: bool = False) -> dict[str, Any]:
    """Write the imported folder; returns its manifest."""
    from safetensors.torch import save_file

    if kind_name not in KINDS:
        raise CheckpointMismatchError(f"unknown kind {kind_name!r}: choose from {', '.join(KINDS)}")
    kind = KINDS[kind_name]
    if kind.lora and lora is None:
        raise CheckpointMismatchError(f"{kind_name} needs its LoRA: --lora lora.pt (merged into {kind.checkpoint})")
    if lora is not None and not kind.lora:
        raise CheckpointMismatchError(f"{kind_name} has no LoRA; drop --lora")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ModelNotFoundError(f"--out {out} exists and is not empty (add --overwrite to replace it)")
    config = _check_base(base)
    taehv_model = None
    if taehv is not None:
        from .taehv import load_taehv

        taehv_model = load_taehv(taehv)  # a wrong file fails here, before the long steps
    state, chosen = select_weights(load_checkpoint(src), kind_name, weights, src)
    original = strip_prefixes(state)
    if lora is not None:
        lora_obj = load_checkpoint(lora)
        if isinstance(lora_obj, dict) and "generator_lora" in lora_obj:
            lora_obj = lora_obj["generator_lora"]
        if not _is_state_dict(lora_obj):
            raise CheckpointMismatchError(f"{lora} is not a LoRA state dict (nor a dict with 'generator_lora')")
        t0 = time.perf_counter()
        merged = merge_lora(original, lora_obj, lora_alpha)
        _say(f"merged the LoRA into {merged} linear layers in {time.perf_counter() - t0:.1f} s")
    _say("converting to diffusers' layout and checking every key...")
    converted = convert_checked(original, config, f"{src} ({kind_name}, {chosen})")

    out.mkdir(parents=True, exist_ok=True)
    (out / "transformer").mkdir(exist_ok=True)
    (out / "transformer" / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    target = out / "transformer" / "diffusion_pytorch_model.safetensors"
    size = sum(v.numel() * v.element_size() for v in converted.values())
    _say(f"writing {target} ({size / 1e9:.2f} GB)...")
    t0 = time.perf_counter()
    save_file({k: v.contiguous() for k, v in converted.items()}, str(target))
    _say(f"written in {time.perf_counter() - t0:.1f} s")
    for name in LINKED:
        _link(base / name, out / name)
    if taehv is not None:
        (out / "taehv").mkdir(exist_ok=True)
        _link(taehv, out / TAEHV_FILE)
    manifest = manifest_for(kind_name, chosen, src.resolve(), base.resolve(), lora.resolve() if lora else None,
                            taehv_model is not None)
    manifest["parameters"] = sum(v.numel() for v in converted.values())
    manifest["dtype"] = str(next(iter(converted.values())).dtype).replace("torch.", "")
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    _say(f"done: {out} (serve it with: ltc-stream serve --model {out})")
    return manifest


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=[*KINDS, "animatediff-lightning"], help="which published model SRC is")
    parser.add_argument("src", type=Path, help="the checkpoint: self_forcing_dmd.pt, model.pt (CausVid), "
                                               "longlive_base.pt, rewardforcing.pt, "
                                               "animatediff_lightning_Nstep_diffusers.safetensors")
    parser.add_argument("--base", type=Path, required=True,
                        help="local Wan2.1-T2V-1.3B-Diffusers folder (text encoder, tokenizer, VAE, transformer config); "
                             "for animatediff-lightning a Stable Diffusion 1.5 diffusers folder")
    parser.add_argument("--out", type=Path, required=True, help="folder to write (serve --model OUT)")
    parser.add_argument("--weights", choices=("generator", "generator_ema"), default=None,
                        help="which weights of a generator checkpoint (default: generator_ema where present)")
    parser.add_argument("--lora", type=Path, default=None, help="LongLive: lora.pt, merged into the base at import")
    parser.add_argument("--lora-alpha", type=float, default=None,
                        help="LoRA alpha (default: the rank, LongLive's alpha 256 for rank 256: scale 1)")
    parser.add_argument("--taehv", type=Path, default=None,
                        help="TAEHV decoder weights for Wan 2.1 (taew2_1.pth), linked into the folder")
    parser.add_argument("--taesd", type=Path, default=None,
                        help="animatediff-lightning: a diffusers AutoencoderTiny folder (madebyollin/taesd), linked in")
    parser.add_argument("--steps", type=int, default=None,
                        help="animatediff-lightning: the steps the file was distilled for (default: from its name)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")


def main(args: argparse.Namespace) -> int:
    if args.kind == LIGHTNING:
        if args.lora or args.taehv or args.weights:
            raise CheckpointMismatchError("animatediff-lightning takes --taesd and --steps, not --lora, --taehv or --weights")
        import_animatediff_lightning(args.src, args.base, args.out, steps=args.steps, taesd=args.taesd,
                                     overwrite=args.overwrite)
        return 0
    if args.taesd or args.steps:
        raise CheckpointMismatchError(f"{args.kind} takes no --taesd or --steps (its steps come from its authors)")
    import_checkpoint(args.kind, args.src, args.base, args.out, weights=args.weights, lora=args.lora,
                      lora_alpha=args.lora_alpha, taehv=args.taehv, overwrite=args.overwrite)
    return 0


# ------------------------------------------------------------------------------------------------
# AnimateDiff-Lightning
# ------------------------------------------------------------------------------------------------
LIGHTNING = "animatediff-lightning"
SD_LINKED = ("unet", "vae", "text_encoder", "tokenizer")


def _lightning_steps(src: Path, steps: int | None) -> int:
    import re

    found = re.search(r"(\d+)step", src.name)
    if steps is None and found is None:
        raise CheckpointMismatchError(f"say how many steps {src.name} was distilled for: --steps 1, 2, 4 or 8 "
                                      "(the published files are animatediff_lightning_Nstep_diffusers.safetensors)")
    if steps is not None and found is not None and int(found.group(1)) != steps:
        raise CheckpointMismatchError(f"{src.name} is the {found.group(1)}-step model, not {steps}")
    steps = steps if steps is not None else int(found.group(1))
    if steps not in (1, 2, 4, 8):
        raise CheckpointMismatchError(f"AnimateDiff-Lightning has 1, 2, 4 and 8-step models, not {steps}")
    return steps


def motion_adapter_config(unet_config: dict[str, Any]) -> dict[str, Any]:
    """The MotionAdapter that fits the base UNet (for SD1.5: diffusers' MotionAdapter() defaults, what
    the Lightning model card builds)."""
    return {"block_out_channels": list(unet_config["block_out_channels"]),
            "motion_layers_per_block": unet_config.get("layers_per_block", 2),
            "motion_norm_num_groups": unet_config.get("norm_num_groups", 32)}


def import_animatediff_lightning(src: Path, base: Path, out: Path, *, steps: int | None = None,
                                 taesd: Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Lightning's motion module into a MotionAdapter on a local SD1.5 folder; sampled as its model
    card says: Euler discrete, trailing timesteps, linear betas, guidance 1, N steps."""
    from diffusers import EulerDiscreteScheduler, MotionAdapter
    from safetensors.torch import load_file

    steps = _lightning_steps(src, steps)
    if not src.is_file():
        raise ModelNotFoundError(f"checkpoint {str(src)!r} not found")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ModelNotFoundError(f"--out {out} exists and is not empty (add --overwrite to replace it)")
    index = base / "model_index.json"
    if not index.is_file():
        raise ModelNotFoundError(f"--base {str(base)!r} is not a diffusers Stable Diffusion 1.5 folder (no model_index.json)")
    for name in SD_LINKED + ("scheduler",):
        if not (base / name).is_dir():
            raise ModelNotFoundError(f"--base {base} has no {name}/ folder")
    unet_config = json.loads((base / "unet" / "config.json").read_text())
    if unet_config.get("_class_name") != "UNet2DConditionModel":
        raise ModelNotFoundError(f"--base {base}'s unet is not a Stable Diffusion 1.5 UNet2DConditionModel")
    if taesd is not None and not (taesd / "config.json").is_file():
        raise ModelNotFoundError(f"--taesd {taesd} is not a diffusers AutoencoderTiny folder (no config.json)")
    _say(f"reading {src}...")
    try:
        state = load_file(str(src))
    except Exception as exc:
        raise CheckpointMismatchError(f"{src} is not a safetensors file: {exc}") from None
    adapter = MotionAdapter(**motion_adapter_config(unet_config))
    want = adapter.state_dict()
    missing, unexpected = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    wrong = sorted(k for k in set(want) & set(state) if want[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{len(v)} {what} (first: {', '.join(v[:3])})" for what, v in
                 (("missing", missing), ("unexpected", unexpected), ("with other shapes", wrong)) if v]
        raise CheckpointMismatchError(f"{src} is not an AnimateDiff motion adapter for this base: " + "; ".join(parts))
    adapter.load_state_dict(state)
    out.mkdir(parents=True, exist_ok=True)
    adapter.save_pretrained(out / "motion_adapter")
    for name in SD_LINKED:
        _link(base / name, out / name)
    base_scheduler = EulerDiscreteScheduler.from_pretrained(base / "scheduler")
    EulerDiscreteScheduler.from_config(base_scheduler.config, timestep_spacing="trailing",
                                       beta_schedule="linear").save_pretrained(out / "scheduler")
    if taesd is not None:
        _link(taesd, out / "tiny_vae")
    meta = json.loads(index.read_text())
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "AnimateDiffPipeline", "_diffusers_version": meta.get("_diffusers_version"),
        "motion_adapter": ["diffusers", "MotionAdapter"], "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": meta["text_encoder"], "tokenizer": meta["tokenizer"], "unet": meta["unet"],
        "vae": meta["vae"], "feature_extractor": [None, None], "image_encoder": [None, None]}, indent=2) + "\n")
    manifest = {
        "format": FORMAT, "kind": LIGHTNING, "family": "animatediff",
        "source": {"checkpoint": str(src.resolve()), "base": str(base.resolve()),
                   "reference": "huggingface.co/ByteDance/AnimateDiff-Lightning (model card)"},
        "sampling": {"sampler": "euler", "steps": steps, "timestep_spacing": "trailing", "beta_schedule": "linear",
                     "guidance_scale": 1.0},
        "text": {"encoder": "clip-vit-l-14", "max_length": 77},
        "decoder": "taesd" if taesd is not None else "vae",
        "parameters": sum(v.numel() for v in state.values()),
        "dtype": str(next(iter(state.values())).dtype).replace("torch.", ""),
        "video": {"height": 512, "width": 512, "fps": 16},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    _say(f"done: {out} (serve it with: ltc-stream serve --model {out})")
    return manifest
