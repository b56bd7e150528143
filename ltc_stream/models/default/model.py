"""The default model as a VideoModel: prompt -> MiniLM token states; each chunk is sampled with the
LTC sampler (`ltc_stream.sample`) from fresh noise, conditioned on the previous chunk's last latent
frames, and decoded per frame by the tiny autoencoder."""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...device import resolve_device
from ...errors import ConfigError, ModelNotFoundError
from ...ltc import LTC_FILE, LTCConfig, LTCWeights, OnlineLTC, calibrate, make_key, sample
from ..base import ChunkResult, ModelOption, VideoModel, parse_model_options
from .networks import Autoencoder, Denoiser, NetConfig, from_unit
from .reader import MAX_GUIDANCE, READER_MIN_SIGMA, ColourReader, guide_x0
from .text import shared_text_encoder
from .world import ATTRIBUTES

log = logging.getLogger(__name__)

PACKAGED = Path(__file__).resolve().parent.parent / "weights" / "default"
# the angle threshold the packaged model's LTC weights were calibrated with (at most one skip of 4 steps)
CALIBRATION_TAU = 0.3
# what train-default writes into a new folder's ltc_model.json (sampling.seam_anchor); a folder that
# names none samples without it, as it did before the anchor existed. 0.3 on the packaged weights:
# continuity ratio 2.34 -> 1.44 at the same fidelity (model card)
SEAM_ANCHOR = 0.3
# what `train-default --train-reader` writes into the folder's sampling.reader_guidance: the step size
# of reader guidance (reader.py), chosen on held-out prompts 200-299, not the 200 the figures use
# (model card, "Sampling")
READER_GUIDANCE = 0.2
# the seam anchor `--train-reader` raises a folder's to: guidance draws the first chunk's colours
# where the network alone would not, and with the anchor at 0.3 the next chunk's seam grew (ratio
# 1.58 on held-out prompts 200-299; 1.29 at 0.4, at the same fidelity; model card)
READER_SEAM_ANCHOR = 0.4
READER_FILE = "reader.safetensors"
# the steps the packaged model's colour reader was trained for (~11 min on 2 CPU cores; model card)
READER_STEPS = 1200

# The runtime sampling settings a folder's `sampling` names (its ltc_model.json); `--model-option
# KEY=VALUE` overrides one for an experiment (validated by `parse_model_options`). `default`: the
# value where a folder names none (off: as folders sampled before the setting existed).
OPTIONS: dict[str, ModelOption] = {
    "seam_anchor": ModelOption(
        float, 0.0, "pull each chunk's first frames towards the previous chunk's last frame carried on along "
        "the prompt's motion, weight W at the first frame (0: off; the packaged model: 0.4)", minimum=0.0, maximum=1.0),
    "reader_guidance": ModelOption(
        float, 0.0, "step size of reader guidance: the first step's x0 moves towards the colours the prompt names "
        "as the folder's colour reader sees them (0: off; the packaged model: 0.2)", minimum=0.0, maximum=MAX_GUIDANCE),
}


def calibrate_command(folder: str | Path) -> str:
    """The command that calibrates LTC for a default-format folder as the packaged model's was,
    for the messages that say a folder's calibration is missing or stale."""
    return f"ltc-stream eval-default --model {folder} --calibrate --tau {CALIBRATION_TAU:g}"


def train_reader_command(folder: str | Path) -> str:
    """The command that trains a colour reader for a default-format folder's student as the packaged
    model's was, for the messages that say a folder's reader is missing or was trained on other weights."""
    return f"ltc-stream train-default --train-reader {READER_STEPS} --output {folder}"


@dataclass
class StreamState:
    generator: torch.Generator
    context: torch.Tensor | None = None  # last latent frames of the previous chunk [1, C, Tc, h, w]
    chunk_index: int = 0


def _load_safetensors(module: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    if not path.is_file():
        raise ModelNotFoundError(f"model folder {path.parent} lacks {path.name}")
    try:
        state = load_file(str(path))
        module.load_state_dict(state)
    except Exception as exc:  # a truncated or foreign file: say which one
        raise ModelNotFoundError(f"{path} could not be loaded into the {type(module).__name__}: {exc}") from None


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def read_folder_meta(folder: Path) -> tuple[dict, NetConfig]:
    """A default-model folder's `ltc_model.json` and its network settings (a setting the file
    predates reads as its default), or a clear error."""
    meta_path = Path(folder) / "ltc_model.json"
    if not meta_path.is_file():
        raise ModelNotFoundError(f"{folder} has no ltc_model.json: not a default-model folder")
    try:
        meta = json.loads(meta_path.read_text())
        return meta, NetConfig.from_dict(meta["net"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ModelNotFoundError(f"{meta_path} is malformed ({exc}); retrain with 'ltc-stream train-default'") from None


def sigma_schedule(steps: int) -> torch.Tensor:
    """Uniform in sigma from 1 to 0 (the schedule the student was distilled on, at its own steps)."""
    return torch.linspace(1.0, 0.0, steps + 1)


class DefaultModel(VideoModel):
    # A new prompt starts a fresh context (ltc_stream.stream.Steering): blended with the previous
    # chunk's latents kept, the object's colour follows a new prompt 15% of the time; cut, 55%
    # (background 65% / 75%)
    # (eval-default's prompt_change on 20 held-out pairs; model card)
    prompt_change = "cut"
    # inside the world it was trained on (world.py: one object on a plain background), as its captions say
    # it, and drawn recognisably as served: each passes >= 83% of the pixel checks over 8 seeds with an
    # object in every frame or nearly (benchmarks/default_prompts.py, results/default-model-prompts-cpu.json)
    example_prompts = (
        "a yellow circle moving left on a blue background",
        "a red circle moving left on a blue background",
        "a yellow square moving up on a purple background",
        "a yellow circle moving right on a red background",
        "a white square moving up on a green background",
    )

    def __init__(self, folder: Path, device: str | torch.device = "auto", steps: int | None = None,
                 use_teacher: bool = False, online_refresh: int = 0, options: dict[str, Any] | None = None):
        """`options`: sampling settings (`OPTIONS`), already validated by `parse_model_options`; the
        folder's `sampling` gives the rest."""
        folder = Path(folder)
        meta, self.net = read_folder_meta(folder)
        meta_path = folder / "ltc_model.json"
        self.folder, self.meta = folder, meta
        sampler = meta.get("sampling", {}).get("sampler", "euler") if isinstance(meta.get("sampling"), dict) else "euler"
        if sampler != "euler":  # the student was distilled onto deterministic Euler steps: its one sampler
            raise ModelNotFoundError(f"{meta_path}: sampling.sampler {sampler!r}: a default-format model samples "
                                     "with 'euler' only (its student is distilled onto Euler steps)")
        self.device = resolve_device(device)
        self.name = meta.get("name", "default")
        self.height, self.width = self.net.height, self.net.width
        self.fps = float(meta.get("fps", 16))
        self.frames_per_chunk = self.net.frames_per_chunk

        self.autoencoder = Autoencoder(self.net)
        _load_safetensors(self.autoencoder, folder / "autoencoder.safetensors")
        student_file = folder / "student.safetensors"
        self.denoiser = Denoiser(self.net)
        if student_file.is_file() and not use_teacher:
            _load_safetensors(self.denoiser, student_file)
            self.stage, weights_file = "distilled", student_file
            self.steps = int(steps or meta.get("student_steps", 4))
        elif (folder / "teacher.safetensors").is_file():
            _load_safetensors(self.denoiser, folder / "teacher.safetensors")
            self.stage, weights_file = "teacher", folder / "teacher.safetensors"
            self.steps = int(steps or 8)
        else:
            raise ModelNotFoundError(f"{folder} has no denoiser weights (student.safetensors or teacher.safetensors)")
        if not 1 <= self.steps <= 100:
            raise ConfigError(f"steps must be between 1 and 100, got {self.steps}")
        settings = {key: _folder_setting(meta, meta_path, key) for key in OPTIONS}
        settings.update(options or {})
        self.seam_anchor = float(settings["seam_anchor"])
        self.reader_guidance = float(settings["reader_guidance"])
        self.reader: ColourReader | None = None
        if self.reader_guidance > 0:
            off = "--model-option reader_guidance=0"
            if not self.net.attribute_classes:
                raise ConfigError(f"reader guidance {self.reader_guidance:g} takes the prompt's colours from the attribute "
                                  f"pooling; {folder} was trained without --text-attributes (use {off})")
            reader_path = folder / READER_FILE
            if not reader_path.is_file():
                raise ConfigError(f"reader guidance {self.reader_guidance:g} needs {reader_path}: train it with "
                                  f"'{train_reader_command(folder)}' (or use {off})")
            self.reader = ColourReader(self.net.latent_channels)
            _load_safetensors(self.reader, reader_path)
            self.reader.to(self.device).eval().requires_grad_(False)
            self.reader_digest = _file_digest(reader_path)
        self.autoencoder.to(self.device).eval().requires_grad_(False)
        self.denoiser.to(self.device).eval().requires_grad_(False)
        self.sigmas = sigma_schedule(self.steps)
        self.weights_digest = _file_digest(weights_file)
        self.text = shared_text_encoder(self.net.max_tokens)

        self.ltc_weights: LTCWeights | None = None
        ltc_path = folder / LTC_FILE
        if ltc_path.is_file():
            try:
                self.ltc_weights = LTCWeights.load(ltc_path, expect_key=self.ltc_key())
            except Exception as exc:  # calibrated for other weights or steps: run without, loudly
                log.warning("LTC weights in %s not used: %s. Every step runs until LTC is calibrated for these "
                            "settings: '%s' with the same sampling options (on a copy of the folder, to keep its "
                            "own calibration)", ltc_path, exc, calibrate_command(folder))
        self.online = OnlineLTC(self.ltc_weights, every=online_refresh) if (online_refresh and self.ltc_weights) else None

    # --- VideoModel ---------------------------------------------------------------------------
    def encode_prompt(self, text: str) -> torch.Tensor:
        return self.text.encode(text).to(self.device)

    def new_stream(self, seed: int = 0) -> StreamState:
        return StreamState(generator=torch.Generator(device=self.device).manual_seed(int(seed)))

    def latent_shape(self, batch: int = 1) -> tuple[int, ...]:
        n = self.net
        return (batch, n.latent_channels, n.frames_per_chunk, n.height // 8, n.width // 8)

    def denoiser_fn(self, tokens: torch.Tensor, context: torch.Tensor | None):
        """denoiser(x, sigma) -> x0 = x - sigma * v for the LTC sampler (the net predicts v = noise - x0).
        With a context and `seam_anchor` > 0, the chunk's first frames' x0 are pulled towards
        `seam_target` (the previous chunk's last frame carried on along the prompt's motion): weight
        `seam_anchor` at the first frame, fading to none at half the chunk. With `reader_guidance` > 0,
        the x0 estimates of steps at sigma >= READER_MIN_SIGMA then take one step of reader guidance
        (`reader.guide_x0`) towards the colours the prompt names, as the attribute pooling reads them."""
        if tokens.ndim == 2:
            tokens = tokens[None]
        colours = self.prompt_colours(tokens) if self.reader_guidance > 0 else None
        anchor = weight = None
        if context is not None and self.seam_anchor > 0:
            frames = self.net.frames_per_chunk
            anchor = self.seam_target(tokens, context, frames)
            fade = (1 - torch.arange(frames, device=context.device) / max(1, frames // 2)).clamp(min=0)
            weight = (self.seam_anchor * fade).view(1, 1, frames, 1, 1)

        def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
            v = self.denoiser(x, torch.full((x.shape[0],), sigma, device=x.device), tokens, context)
            x0 = x - sigma * v
            if anchor is not None:
                x0 = torch.lerp(x0, anchor, weight)
            if colours is not None and sigma >= READER_MIN_SIGMA:
                x0 = guide_x0(self.reader, x0, *colours, self.reader_guidance)
            return x0

        return denoise

    def prompt_colours(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The object's and the background's colour as the attribute pooling reads the prompt:
        class probabilities [B, colours] each."""
        logits = self.denoiser.attribute_logits(tokens)
        names = list(ATTRIBUTES)
        return logits[names.index("colour")].softmax(-1), logits[names.index("background_colour")].softmax(-1)

    def seam_target(self, tokens: torch.Tensor, context: torch.Tensor, frames: int) -> torch.Tensor:
        """Where the previous chunk's last latent frame would be at each of the next chunk's `frames`:
        moved along the velocity the prompt names when the network reads one (`text_velocity`),
        else held still. [B, C, frames, h, w]."""
        last = context[:, :, -1:]
        if not self.net.text_velocity:
            return last.expand(-1, -1, frames, -1, -1)
        b, c, tc, hh, ww = context.shape
        tok = tokens.expand(b, -1, -1) if tokens.shape[0] != b else tokens
        velocity = self.denoiser.grid_velocity(tok, hh, ww)
        moved = self.denoiser.moved_context(context, velocity, frames)  # [B, C * Tc, frames, h, w]
        return moved.view(b, c, tc, frames, hh, ww)[:, :, -1]

    @torch.no_grad()
    def generate_chunk(self, state: StreamState, embedding: torch.Tensor, *, ltc: bool = True) -> ChunkResult:
        t0 = time.perf_counter()
        tokens = embedding.to(self.device)
        tokens = tokens[None] if tokens.ndim == 2 else tokens
        den = self.denoiser_fn(tokens, state.context)
        x_T = torch.randn(self.latent_shape(), generator=state.generator, device=self.device)
        weights = self.ltc_weights if ltc else None
        refresh = ltc and self.online is not None and self.online.should_run_full(state.chunk_index)
        if refresh:
            latents, info = sample(den, x_T, self.sigmas, record=True)
            self.ltc_weights = self.online.update(info.trajectory)
        else:
            latents, info = sample(den, x_T, self.sigmas, weights)
        t1 = time.perf_counter()
        frames = self.decode(latents)
        t2 = time.perf_counter()
        state.context = latents[:, :, -self.net.context_frames:]
        state.chunk_index += 1
        return ChunkResult(frames=frames, model_calls=info.nfe, steps=self.steps, denoise_s=t1 - t0, decode_s=t2 - t1,
                           extra={"refresh": refresh})

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """[1, C, T, h, w] latents -> uint8 [T, H, W, 3]."""
        return from_unit(self.autoencoder.decode(latents[0].movedim(1, 0)))  # [T, C, h, w] -> frames

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(stage=self.stage, seam_anchor=self.seam_anchor, reader_guidance=self.reader_guidance,
                    ltc_calibrated=self.ltc_weights is not None,
                    ltc_model_calls=self.ltc_weights.model_calls if self.ltc_weights else self.steps)
        return info

    # --- LTC calibration ------------------------------------------------------------------------
    def ltc_key(self) -> dict[str, Any]:
        # the seam anchor changes the trajectories of chunks with a context (named only when on, so
        # calibrations made before it existed still match)
        anchor = {"seam_anchor": self.seam_anchor} if self.seam_anchor else {}
        # so does reader guidance (and which reader guides)
        if self.reader_guidance > 0:
            anchor.update(reader_guidance=self.reader_guidance, reader=self.reader_digest[:16])
        return make_key(model=f"ltc-stream-default:{self.weights_digest}", sampler="euler", steps=self.steps,
                        latent_shape=list(self.latent_shape()), guidance_scale=1.0, **anchor)

    @torch.no_grad()
    def calibrate_ltc(self, prompts: list[str], cfg: LTCConfig, seed: int = 0, contexts: torch.Tensor | None = None) -> LTCWeights:
        """Closed-form w_g over a batch of prompts (and, optionally, causal contexts), returned, not
        saved (`evaluate.calibrate_model`, behind `eval-default --calibrate`, saves them beside the
        weights). The key is that of a single-stream chunk (batch 1) since that is what runs."""
        gen = torch.Generator(device=self.device).manual_seed(seed)
        tokens = torch.stack([self.encode_prompt(p) for p in prompts])
        x_T = torch.randn(self.latent_shape(len(prompts)), generator=gen, device=self.device)
        weights = calibrate(self.denoiser_fn(tokens, contexts), x_T, self.sigmas, cfg)
        weights.key = self.ltc_key()
        return weights


def _folder_setting(meta: dict, meta_path: Path, name: str) -> Any:
    """A folder's `sampling.<name>` (`OPTIONS[name].default` where it names none), checked as
    `--model-option` checks a given value."""
    sampling = meta.get("sampling", {})
    if not isinstance(sampling, dict):
        raise ModelNotFoundError(f"{meta_path}: sampling.{name} is malformed: sampling is {sampling!r}, not a table")
    if name not in sampling:
        return OPTIONS[name].default
    try:
        return OPTIONS[name].parse(name, sampling[name])
    except ConfigError as exc:
        raise ModelNotFoundError(f"{meta_path}: sampling.{name}: {exc}") from None


def load_default(path: str | Path | None = None, device: str = "auto", *, steps: int | None = None,
                 options: dict[str, Any] | None = None, use_teacher: bool = False, online_refresh: int = 0) -> DefaultModel:
    """The packaged default model, or a default-format folder. `options`: sampling settings
    (`OPTIONS`, as `parse_model_options(OPTIONS, given, "default")` returns them) over the folder's own."""
    folder = Path(path) if path is not None else PACKAGED
    if path is None and not (folder / "ltc_model.json").is_file():
        raise ModelNotFoundError(
            f"the packaged default model is missing from {folder}; train it with 'ltc-stream train-default'"
        )
    options = parse_model_options(OPTIONS, dict(options or {}), "default")  # typed already: checks keys and ranges
    return DefaultModel(folder, device=device, steps=steps, use_teacher=use_teacher, online_refresh=online_refresh,
                        options=options)
