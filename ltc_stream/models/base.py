"""The interface every video model implements, so the streaming generator, the server and the
benchmarks treat the default model, causal Wan and AnimateDiff-Lightning alike.

A model turns a prompt embedding plus its own causal context (previous latents, a KV cache)
into the next chunk of RGB frames. It owns its sampler and its LTC weights; the caller only
says whether LTC is on.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError


@dataclass
class ChunkResult:
    """One generated chunk and what it cost."""

    frames: np.ndarray  # uint8 RGB, shape [T, H, W, 3]
    model_calls: int  # denoiser evaluations made (one classifier-free-guided batch counts once)
    steps: int  # steps of the sampling schedule; steps - model_calls were estimated by LTC
    denoise_s: float = 0.0  # wall seconds spent sampling latents
    decode_s: float = 0.0  # wall seconds spent decoding latents to frames
    extra: dict[str, Any] = field(default_factory=dict)  # model-specific figures (angles, w_g, ...)

    @property
    def skipped(self) -> int:
        return self.steps - self.model_calls


class VideoModel(ABC):
    """A chunk-wise (causal) video generator.

    Embeddings returned by `encode_prompt` have a fixed shape for a given model, so the
    streaming generator can blend an old and a new prompt linearly.
    """

    name: str
    height: int
    width: int
    fps: float
    frames_per_chunk: int
    steps: int  # sampling steps per chunk (before LTC skips any)
    device: torch.device
    # how a stream takes up a new prompt by default (ltc_stream.stream.Steering): "blend" keeps the
    # causal context and morphs the embedding; "cut" starts a fresh context (a scene cut)
    prompt_change: str = "blend"

    @abstractmethod
    def encode_prompt(self, text: str) -> torch.Tensor:
        """Prompt text -> conditioning embedding (fixed shape; implementations cache it)."""

    @abstractmethod
    def new_stream(self, seed: int = 0) -> Any:
        """A fresh causal context (no previous chunks) whose noise is drawn from `seed`."""

    @abstractmethod
    def generate_chunk(self, state: Any, embedding: torch.Tensor, *, ltc: bool = True) -> ChunkResult:
        """Generate the next chunk after the ones already in `state`, updating `state` in place."""

    def cached_embedding(self, text: str, encode, limit: int = 256) -> torch.Tensor:
        """`encode(text)` on this model's device and dtype, cached per prompt (booths repeat
        prompts; a text encoder call costs more than a chunk on small models)."""
        cache = self.__dict__.setdefault("_embed_cache", {})
        if text not in cache:
            if len(cache) >= limit:
                cache.clear()
            cache[text] = encode(text).to(self.device, getattr(self, "dtype", None))
        return cache[text]

    # prompts this model draws well, offered to viewers as ideas (the web client shows them as
    # buttons and its kiosk idle loop cycles through them); empty: the client's own general ones
    example_prompts: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        """What /health and the benchmarks print about the model."""
        return {
            "name": self.name,
            "height": self.height,
            "width": self.width,
            "fps": self.fps,
            "frames_per_chunk": self.frames_per_chunk,
            "steps": self.steps,
            "prompt_change": self.prompt_change,
            "device": str(self.device),
            "example_prompts": list(self.example_prompts),
        }


@dataclass(frozen=True)
class ModelOption:
    """A setting one model family declares. The model folder's config gives its value; an operator
    overrides it for an experiment with `--model-option KEY=VALUE` (serve, render, bench)."""

    type: type  # int, float, str or bool
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None

    def parse(self, key: str, value: Any) -> Any:
        """`value` (a command-line string, or already typed) as this option's type; ConfigError if it
        is not one or is out of range."""
        try:
            if self.type is bool and isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                parsed = value.lower() in ("1", "true", "yes", "on")
            else:
                parsed = self.type(value)
        except (TypeError, ValueError):
            raise ConfigError(f"model option {key}={value!r} is not a {self.type.__name__}") from None
        if self.type is float and parsed != parsed:
            raise ConfigError(f"model option {key} is NaN")
        if self.choices is not None and parsed not in self.choices:
            raise ConfigError(f"model option {key}={parsed!r}: choose from {', '.join(map(str, self.choices))}")
        if self.minimum is not None and parsed < self.minimum:
            raise ConfigError(f"model option {key}={parsed} is below its minimum {self.minimum}")
        if self.maximum is not None and parsed > self.maximum:
            raise ConfigError(f"model option {key}={parsed} is above its maximum {self.maximum}")
        return parsed


def parse_model_options(declared: dict[str, ModelOption], given: dict[str, Any], model: str) -> dict[str, Any]:
    """Validate `given` (KEY -> value) against a family's `declared` options: unknown keys and bad
    values are one ConfigError naming what is allowed. Returns only the given keys, typed."""
    unknown = sorted(set(given) - set(declared))
    if unknown:
        allowed = ", ".join(sorted(declared)) or "none"
        raise ConfigError(f"unknown model option(s) for {model}: {', '.join(unknown)} (declared: {allowed})")
    return {key: declared[key].parse(key, value) for key, value in given.items()}


def split_option(text: str) -> tuple[str, str]:
    """`KEY=VALUE` from the command line -> (KEY, VALUE)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--model-option wants KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()
