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
from ...ltc import LTCConfig, LTCWeights, OnlineLTC, calibrate, make_key, sample
from ..base import ChunkResult, VideoModel
from .networks import Autoencoder, Denoiser, NetConfig, context_baseline, from_unit, motion_projection
from .noise import advance, field_frames, noise_field
from .noise import mix as noise_mix
from .reader import MAX_GUIDANCE, READER_MIN_SIGMA, ColourReader, guide_x0, selection_scores
from .text import shared_text_encoder
from .world import ATTRIBUTES

log = logging.getLogger(__name__)

PACKAGED = Path(__file__).resolve().parent.parent / "weights" / "default"
LTC_FILE = "ltc_weights.json"
# the angle threshold the packaged model's LTC weights were calibrated with (model card, "LTC")
CALIBRATION_TAU = 0.3
# what train-default writes into a new folder's ltc_model.json (sampling.seam_anchor); a folder that
# names none samples without it, as it did before the anchor existed. 0.3 on the packaged weights:
# continuity ratio 2.34 -> 1.44 at the same fidelity (model card)
SEAM_ANCHOR = 0.3
# what `train-default --train-reader` writes into the folder's sampling.reader_guidance: the step size
# of reader guidance (reader.py), chosen on held-out prompts 200-299, not the 200 the figures use
# (model card, "Reader guidance")
READER_GUIDANCE = 0.2
# the seam anchor `--train-reader` raises a folder's to: guidance draws the first chunk's colours
# where the network alone would not, and with the anchor at 0.3 the next chunk's seam grew (ratio
# 1.58 on held-out prompts 200-299; 1.29 at 0.4, at the same fidelity; model card)
READER_SEAM_ANCHOR = 0.4
READER_FILE = "reader.safetensors"
# the steps the packaged model's colour reader was trained for (~11 min on 2 CPU cores; model card)
READER_STEPS = 1200
# noise selection (`--noise-candidates N`, sampling.noise_candidates; reader.selection_scores): off
# (1) in folders unless asked for. 4 draws: held-out prompts 200-299 without LTC 68.2% -> 74.1%, the
# 200 report prompts without LTC 70.3% -> 72.3%, but with LTC (as served) 69.5% -> 70.1% (+1.6 on
# prompts 300-499, within noise too), a fifth slower at 128x128 (model card, "Noise selection")
MAX_NOISE_CANDIDATES = 16
# motion guidance (`--motion-guidance G`, sampling.motion_guidance): at steps with sigma >=
# MOTION_MIN_SIGMA (the first step: it lays out where the object goes) the network runs twice, with
# the velocity the prompt names and with none, and v_named + G * (v_named - v_none) is taken, as
# classifier-free guidance does for a prompt. Off unless asked for: on held-out prompts 200-299 G 3
# at the first step only looked best (later steps, or stronger, grew the objects), but with LTC it
# gained +1.8 points on the 200 report prompts (-1.4 to +5.1) and lost -4.0 (-7.2 to -0.8) on
# prompts 300-499 (model card, "Motion guidance" under "Tried and not shipped")
MAX_MOTION_GUIDANCE = 8.0
MOTION_MIN_SIGMA = 1.0
# motion projection (`--motion-projection A`, sampling.motion_projection; networks.motion_projection):
# at steps with sigma >= PROJECTION_MIN_SIGMA (the first: where the object is laid out) each frame of
# the x0 estimate is mixed, weight A, with the chunk's frames carried to it along the velocity the
# prompt names; prompts whose velocity is under PROJECTION_MIN_SPEED (of the frame per frame; the
# world's slowest linear motion is 0.0098) are left alone, or their frames would be frozen together
PROJECTION_MIN_SIGMA = 0.9
PROJECTION_MIN_SPEED = 0.003
# the sampling settings a folder's `sampling` names and `load_default` / the commands take
SAMPLING_OPTIONS = ("seam_anchor", "reader_guidance", "noise_candidates", "motion_guidance", "noise_flow",
                    "motion_projection")


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
    # flowing noise (`noise_flow` > 0): the stream's moving field and how far it has moved [1, 2]
    noise_field: torch.Tensor | None = None
    noise_offset: torch.Tensor | None = None


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
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
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
    # inside the world it was trained on (world.py: one object on a plain background), as its captions say it
    example_prompts = (
        "a red circle moving left on a blue background",
        "a yellow star spinning on a purple background",
        "a white square moving up on a green background",
        "a pink triangle bouncing on a cyan background",
        "a green circle growing on a black background",
    )

    def __init__(self, folder: Path, device: str | torch.device = "auto", steps: int | None = None,
                 use_teacher: bool = False, online_refresh: int = 0, seam_anchor: float | None = None,
                 reader_guidance: float | None = None, noise_candidates: int | None = None,
                 motion_guidance: float | None = None, noise_flow: float | None = None,
                 motion_projection: float | None = None):
        folder = Path(folder)
        meta, self.net = read_folder_meta(folder)
        meta_path = folder / "ltc_model.json"
        self.folder, self.meta = folder, meta
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
        self.seam_anchor = _sampling_setting(meta, meta_path, "seam_anchor", seam_anchor, 1.0)
        self.reader_guidance = _sampling_setting(meta, meta_path, "reader_guidance", reader_guidance, MAX_GUIDANCE)
        candidates = _sampling_setting(meta, meta_path, "noise_candidates", noise_candidates, MAX_NOISE_CANDIDATES, 1.0)
        if candidates < 1 or candidates != int(candidates):
            raise ConfigError(f"noise_candidates must be a whole number between 1 and {MAX_NOISE_CANDIDATES}, got {candidates:g}")
        self.noise_candidates = int(candidates)
        self.motion_guidance = _sampling_setting(meta, meta_path, "motion_guidance", motion_guidance, MAX_MOTION_GUIDANCE)
        if self.motion_guidance > 0 and not self.net.text_velocity:
            raise ConfigError(f"motion guidance {self.motion_guidance:g} contrasts the network's velocity paths; {folder} "
                              "was trained without --text-velocity (use --motion-guidance 0)")
        self.noise_flow = _sampling_setting(meta, meta_path, "noise_flow", noise_flow, 1.0)
        if self.noise_flow > 0 and not self.net.text_velocity:
            raise ConfigError(f"flowing noise {self.noise_flow:g} moves along the velocity the network reads from the prompt; "
                              f"{folder} was trained without --text-velocity (use --noise-flow 0)")
        self.motion_projection = _sampling_setting(meta, meta_path, "motion_projection", motion_projection, 1.0)
        if self.motion_projection > 0 and not self.net.text_velocity:
            raise ConfigError(f"motion projection {self.motion_projection:g} moves frames along the velocity the network "
                              f"reads from the prompt; {folder} was trained without --text-velocity (use --motion-projection 0)")
        self.reader: ColourReader | None = None
        if self.reader_guidance > 0 or self.noise_candidates > 1:
            what = (f"reader guidance {self.reader_guidance:g}" if self.reader_guidance > 0
                    else f"noise selection from {self.noise_candidates} draws")
            off = "--reader-guidance 0" if self.reader_guidance > 0 else "--noise-candidates 1"
            if not self.net.attribute_classes:
                raise ConfigError(f"{what} takes the prompt's colours from the attribute pooling; {folder} "
                                  f"was trained without --text-attributes (use {off})")
            reader_path = folder / READER_FILE
            if not reader_path.is_file():
                raise ConfigError(f"{what} needs {reader_path}: train it with "
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
        (`reader.guide_x0`) towards the colours the prompt names, as the attribute pooling reads them.
        With `motion_guidance` G > 0, steps at sigma >= MOTION_MIN_SIGMA run the network on the batch
        twice over in one call, with the prompt's velocity and without, and take v + G * (v - v_still).
        With `motion_projection` A > 0, the x0 estimates of steps at sigma >= PROJECTION_MIN_SIGMA are
        last mixed, weight A, with their frames carried along the prompt's velocity
        (`networks.motion_projection`), where the prompt names one."""
        if tokens.ndim == 2:
            tokens = tokens[None]
        colours = self.prompt_colours(tokens) if self.reader_guidance > 0 else None
        velocity = None
        if self.motion_projection > 0:
            features = self.denoiser.attribute_features(tokens)  # the prompt read once for both
            velocity = self.denoiser.grid_velocity(tokens, *self.latent_shape()[3:], features)
            moving = self.denoiser.velocity(tokens, features).abs().amax(dim=1) >= PROJECTION_MIN_SPEED  # else a still prompt
        anchor = weight = None
        if context is not None and self.seam_anchor > 0:
            frames = self.net.frames_per_chunk
            anchor = self.seam_target(tokens, context, frames)
            if self.net.residual_context:  # such a net's x0 is the change from the context's last frame
                anchor = anchor - context[:, :, -1:]
            fade = (1 - torch.arange(frames, device=context.device) / max(1, frames // 2)).clamp(min=0)
            weight = (self.seam_anchor * fade).view(1, 1, frames, 1, 1)

        def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
            # one prompt and context serve a batch of draws (noise selection): expanded to x's batch
            tok = tokens.expand(x.shape[0], -1, -1) if tokens.shape[0] != x.shape[0] else tokens
            ctx = context
            if context is not None and context.shape[0] != x.shape[0]:
                ctx = context.expand(x.shape[0], -1, -1, -1, -1)
            b = x.shape[0]
            if self.motion_guidance > 0 and sigma >= MOTION_MIN_SIGMA:
                both = self.denoiser(torch.cat([x, x]), torch.full((2 * b,), sigma, device=x.device), torch.cat([tok, tok]),
                                     None if ctx is None else torch.cat([ctx, ctx]),
                                     velocity_scale=torch.cat([x.new_ones(b), x.new_zeros(b)]))
                v = both[:b] + self.motion_guidance * (both[:b] - both[b:])
            else:
                v = self.denoiser(x, torch.full((b,), sigma, device=x.device), tok, ctx)
            x0 = x - sigma * v
            if anchor is not None:
                x0 = torch.lerp(x0, anchor.expand_as(x0), weight)
            if colours is not None and sigma >= READER_MIN_SIGMA:
                x0 = guide_x0(self.reader, x0, *(c.expand(x0.shape[0], -1) for c in colours), self.reader_guidance)
            if velocity is not None and sigma >= PROJECTION_MIN_SIGMA:
                vel, keep = velocity.expand(b, 2), moving.expand(b)
                x0 = torch.where(keep[:, None, None, None, None], motion_projection(x0, vel, self.motion_projection), x0)
            return x0

        return denoise

    def prompt_colours(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The object's and the background's colour as the attribute pooling reads the prompt:
        class probabilities [B, colours] each."""
        logits = self.denoiser.attribute_logits(tokens)
        names = list(ATTRIBUTES)
        return logits[names.index("colour")].softmax(-1), logits[names.index("background_colour")].softmax(-1)

    def select_noise(self, generator: torch.Generator, tokens: torch.Tensor, den,
                     shared: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`noise_candidates` draws of a chunk's noise [N, C, T, h, w] taken through the first step
        together (`den`: this chunk's `denoiser_fn`, which takes any batch), each first x0 estimate scored by the reader
        (`reader.selection_scores`: the prompt's colours, and motion along its velocity where the
        network reads one). `shared`: the flowing part of the noise (`flowing_part`), the same for
        every draw. Returns the best draw [1, ...] and its x0 estimate, which the sampler reuses."""
        n = self.noise_candidates
        draws = torch.randn(self.latent_shape(n), generator=generator, device=self.device)
        if shared is not None:  # flowing noise: the draws differ in their fresh part only
            draws = noise_mix(draws, shared.expand_as(draws), self.noise_flow)
        x0 = den(draws, float(self.sigmas[0]))
        velocity = None
        if self.net.text_velocity:
            velocity = self.denoiser.grid_velocity(tokens, *self.latent_shape()[3:])
        scores = selection_scores(self.reader, x0, *self.prompt_colours(tokens), velocity)
        best = int(scores.argmax())
        return draws[best:best + 1], x0[best:best + 1]

    def flowing_part(self, state: StreamState, tokens: torch.Tensor) -> torch.Tensor:
        """The travelling part of this chunk's noise [1, C, T, h, w] (`noise.py`): the stream's field
        (drawn at its first chunk) moved on, frame by frame, along the velocity the prompt names;
        the stream remembers how far, so the noise flows on across chunks and prompt changes."""
        _, c, t, hh, ww = self.latent_shape()
        if state.noise_field is None:
            state.noise_field = noise_field(1, c, hh, ww, state.generator, self.device)
            state.noise_offset = torch.zeros(1, 2, dtype=torch.float64)
        velocity = self.denoiser.grid_velocity(tokens[:1], hh, ww)
        shared = field_frames(state.noise_field, state.noise_offset, velocity, t)
        state.noise_offset = advance(state.noise_offset, velocity, state.noise_field, t)
        return shared

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
        shared = self.flowing_part(state, tokens) if self.noise_flow > 0 else None
        if self.noise_candidates > 1:
            x_T, first_x0 = self.select_noise(state.generator, tokens, den, shared)
            den = _first_call_from(den, x_T, float(self.sigmas[0]), first_x0)
        else:
            x_T = torch.randn(self.latent_shape(), generator=state.generator, device=self.device)
            if shared is not None:
                x_T = noise_mix(x_T, shared, self.noise_flow)
        weights = self.ltc_weights if ltc else None
        refresh = ltc and self.online is not None and self.online.should_run_full(state.chunk_index)
        if refresh:
            latents, info = sample(den, x_T, self.sigmas, record=True)
            self.ltc_weights = self.online.update(info.trajectory)
        else:
            latents, info = sample(den, x_T, self.sigmas, weights)
        if self.net.residual_context and state.context is not None:  # sampled as the change from the context
            latents = latents + context_baseline(state.context, latents.shape[2])
        t1 = time.perf_counter()
        frames = self.decode(latents)
        t2 = time.perf_counter()
        state.context = latents[:, :, -self.net.context_frames:]
        state.chunk_index += 1
        # the first step ran on all the noise draws in one batch: it counts once, as a classifier-free-
        # guided batch does (ChunkResult.model_calls), so steps - calls stays what LTC saved
        return ChunkResult(frames=frames, model_calls=info.nfe, steps=self.steps, denoise_s=t1 - t0, decode_s=t2 - t1,
                           extra={"refresh": refresh})

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """[1, C, T, h, w] latents -> uint8 [T, H, W, 3]."""
        return from_unit(self.autoencoder.decode(latents[0].movedim(1, 0)))  # [T, C, h, w] -> frames

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(stage=self.stage, seam_anchor=self.seam_anchor, reader_guidance=self.reader_guidance,
                    noise_candidates=self.noise_candidates, motion_guidance=self.motion_guidance,
                    noise_flow=self.noise_flow, motion_projection=self.motion_projection,
                    ltc_calibrated=self.ltc_weights is not None,
                    ltc_model_calls=self.ltc_weights.model_calls if self.ltc_weights else self.steps)
        return info

    # --- LTC calibration ------------------------------------------------------------------------
    def ltc_key(self) -> dict[str, Any]:
        # the seam anchor changes the trajectories of chunks with a context (named only when on, so
        # calibrations made before it existed still match)
        anchor = {"seam_anchor": self.seam_anchor} if self.seam_anchor else {}
        # so does reader guidance. Noise selection does not name itself: it changes which draw runs,
        # not the denoiser or the schedule, and weights calibrated on selected draws and on plain ones
        # agree (the skipped step's w_g 0.988 / 0.989, the same skip; per chunk, LTC against the full
        # steps 37.6 / 37.4 dB; model card), so one calibration serves both
        if self.reader_guidance > 0:
            anchor.update(reader_guidance=self.reader_guidance, reader=self.reader_digest[:16])
        if self.motion_guidance > 0:  # and motion guidance (its first step is another denoiser)
            anchor.update(motion_guidance=self.motion_guidance)
        if self.noise_flow > 0:  # and flowing noise (another noise than the plain draws LTC was fitted on)
            anchor.update(noise_flow=self.noise_flow)
        if self.motion_projection > 0:  # and motion projection (it moves the first step's estimate)
            anchor.update(motion_projection=self.motion_projection)
        return make_key(model=f"ltc-stream-default:{self.weights_digest}", sampler="euler", steps=self.steps,
                        latent_shape=list(self.latent_shape()), guidance_scale=1.0, **anchor)

    @torch.no_grad()
    def calibrate_ltc(self, prompts: list[str], cfg: LTCConfig, seed: int = 0, contexts: torch.Tensor | None = None) -> LTCWeights:
        """Closed-form w_g over a batch of prompts (and, optionally, causal contexts), returned, not
        saved (`evaluate.calibrate_model`, behind `eval-default --calibrate`, saves them beside the
        weights). The key is that of a single-stream chunk (batch 1) since that is what runs."""
        gen = torch.Generator(device=self.device).manual_seed(seed)
        tokens = torch.stack([self.encode_prompt(p) for p in prompts])
        # calibrated on the noise that runs: flowing where it flows (each prompt a stream's first chunk),
        # each prompt's selected draw under noise selection
        shared = [self.flowing_part(StreamState(generator=gen), tokens[i:i + 1]) if self.noise_flow > 0 else None
                  for i in range(len(prompts))]
        if self.noise_candidates > 1:
            picks = []
            for i in range(len(prompts)):
                ctx = None if contexts is None else contexts[i:i + 1]
                picks.append(self.select_noise(gen, tokens[i:i + 1], self.denoiser_fn(tokens[i:i + 1], ctx), shared[i])[0])
            x_T = torch.cat(picks)
        else:
            x_T = torch.randn(self.latent_shape(len(prompts)), generator=gen, device=self.device)
            if self.noise_flow > 0:
                x_T = noise_mix(x_T, torch.cat(shared), self.noise_flow)
        weights = calibrate(self.denoiser_fn(tokens, contexts), x_T, self.sigmas, cfg)
        weights.key = self.ltc_key()
        return weights


def _first_call_from(den, x_T: torch.Tensor, sigma: float, x0: torch.Tensor):
    """`den`, except that its call on `x_T` itself at `sigma` returns `x0`, already computed."""
    def denoise(x: torch.Tensor, s: float) -> torch.Tensor:
        if x is x_T and float(s) == sigma:
            return x0
        return den(x, s)

    return denoise


def _sampling_setting(meta: dict, meta_path: Path, name: str, given: float | None, high: float,
                      default: float = 0.0) -> float:
    """A sampling setting: `given`, else the folder's `sampling.<name>` (`default` where it names
    none), checked to lie in [0, high]."""
    value = given
    if value is None:
        try:
            value = float(meta.get("sampling", {}).get(name, default))
        except (AttributeError, TypeError, ValueError):
            raise ModelNotFoundError(f"{meta_path}: sampling.{name} is malformed ({meta.get('sampling')!r})") from None
    if not 0.0 <= value <= high:  # also refuses NaN
        raise ConfigError(f"{name} must be between 0 and {high:g}, got {value}")
    return float(value)


def add_sampling_arguments(parser) -> None:
    """`--seam-anchor W`, `--reader-guidance G`, `--noise-candidates N`, `--motion-guidance G`, `--noise-flow A` and
    `--motion-projection A` for the commands that sample the default model (serve, render, eval-default)."""
    parser.add_argument("--seam-anchor", type=float, default=None, metavar="W",
                        help="default-format models: pull each chunk's first frames towards the previous chunk's "
                             "last frame carried on along the prompt's motion, weight W (0-1) at the first frame "
                             "(default: the model folder's sampling.seam_anchor; 0 where it names none)")
    parser.add_argument("--reader-guidance", type=float, default=None, metavar="G",
                        help="default-format models: step size (0-2) of reader guidance, which moves the first step's "
                             "x0 towards the colours the prompt names as the folder's colour reader sees them "
                             "(default: the model folder's sampling.reader_guidance; 0 where it names none)")
    parser.add_argument("--noise-candidates", type=int, default=None, metavar="N",
                        help="default-format models: start each chunk from the best of N noise draws (1-16; 1: off) as "
                             "the folder's colour reader scores their first estimates against the prompt's colours "
                             "and motion; the first step runs on all N in one batch (4: a fifth slower at 128x128 on 2 "
                             "CPU cores); with LTC on its gain on held-out prompts was within noise (model card) "
                             "(default: the model folder's sampling.noise_candidates; 1 where it names none)")
    parser.add_argument("--motion-guidance", type=float, default=None, metavar="G",
                        help="default-format models trained with --text-velocity: at each chunk's first step, run "
                             "the network with the prompt's velocity and without, and push the estimate G times "
                             "(0-8) further along the difference, as classifier-free guidance does for a prompt; "
                             "on the packaged model it did not help (model card) "
                             "(default: the model folder's sampling.motion_guidance; 0 where it names none)")
    parser.add_argument("--motion-projection", type=float, default=None, metavar="A",
                        help="default-format models trained with --text-velocity: at each chunk's first step, mix each "
                             "frame of the estimate, weight A (0-1), with the chunk's frames carried to it along the "
                             "motion the prompt names, so the object's centre travels the way the prompt says; on "
                             "the packaged model it trades object colour for direction (model card) "
                             "(default: the model folder's sampling.motion_projection; 0 where it names none)")
    parser.add_argument("--noise-flow", type=float, default=None, metavar="A",
                        help="default-format models trained with --noise-flow: a share A (0-1) of each chunk's noise is one "
                             "field moving along the motion the prompt names, flowing on from chunk to chunk "
                             "(default: the model folder's sampling.noise_flow; 0 where it names none)")


def sampling_options(args) -> dict[str, float]:
    """The load_model options for `--seam-anchor`, `--reader-guidance`, `--noise-candidates`,
    `--motion-guidance`, `--noise-flow` and `--motion-projection`, where given."""
    return {name: getattr(args, name) for name in SAMPLING_OPTIONS if getattr(args, name, None) is not None}


def load_default(path: str | Path | None = None, device: str = "auto", **options: Any) -> DefaultModel:
    folder = Path(path) if path is not None else PACKAGED
    if path is None and not (folder / "ltc_model.json").is_file():
        raise ModelNotFoundError(
            f"the packaged default model is missing from {folder}; train it with 'ltc-stream train-default'"
        )
    allowed = {"steps", "use_teacher", "online_refresh", *SAMPLING_OPTIONS}
    unknown = set(options) - allowed
    if unknown:
        raise ConfigError(f"unknown option(s) for the default model: {', '.join(sorted(unknown))}")
    return DefaultModel(folder, device=device, **options)
