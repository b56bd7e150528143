"""Model registry: `--model default|wan-causal-1.3b|animatediff-lightning|PATH` -> a VideoModel.

Every model, the built-in one included, loads through `load_model`; a local folder is
recognised by its files:
- `ltc_model.json`: a folder in the default model's format (the built-in weights are one);
- `stream.json`: a published streaming model imported by `ltc-stream import`;
- `model_index.json`: a diffusers pipeline folder (causal Wan or AnimateDiff-Lightning).
Nothing is ever downloaded.

Each model family declares the settings an operator may override in its module's `OPTIONS`
(name -> `base.ModelOption`); `load_model(..., options={KEY: VALUE})` (the CLI's repeatable
`--model-option KEY=VALUE`) is checked against them before a single weight is read.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelNotFoundError
from .base import ChunkResult, VideoModel, parse_model_options

__all__ = ["ChunkResult", "VideoModel", "load_model", "model_family", "declared_options", "MODEL_NAMES"]

# Names that need no path. The real-model names build the architecture at full size with
# random weights, for throughput benchmarks only (label their output as such).
MODEL_NAMES = ("default", "wan-causal-1.3b", "animatediff-lightning")

# family -> (module that declares its OPTIONS, how messages name it)
FAMILIES = {
    "default": ("ltc_stream.models.default", "the default model"),
    "WanPipeline": ("ltc_stream.models.causal_wan", "causal Wan"),
    "AnimateDiffPipeline": ("ltc_stream.models.animatediff", "AnimateDiff"),
    # folders written by `ltc-stream import` (stream.json): they sample as their authors do
    "stream": ("ltc_stream.models.stream_folder", "an imported streaming model"),
    "stream-animatediff": ("ltc_stream.models.animatediff", "an imported AnimateDiff-Lightning model"),
}
_RANDOM = {"wan-causal-1.3b": "WanPipeline", "animatediff-lightning": "AnimateDiffPipeline"}


def declared_options(family: str) -> dict:
    """The settings a family declares for `--model-option` (its module's OPTIONS; none if it has none)."""
    return getattr(importlib.import_module(FAMILIES[family][0]), "OPTIONS", {})


def model_family(spec: str) -> str:
    """Which of FAMILIES `spec` loads as (reads no weights)."""
    return _resolve(spec)[1]


def load_model(spec: str, device: str = "auto", *, steps: int | None = None, height: int | None = None,
               width: int | None = None, dtype: str | None = None, decoder: str | None = None,
               options: dict[str, Any] | None = None, **settings: Any) -> VideoModel:
    """Resolve a model name or a local folder to a ready VideoModel on `device`.

    steps, height/width, dtype ("float32", "bfloat16", "float16"; None: the device's choice) and
    decoder apply to every family that supports them (a clear error where one does not);
    `options` are the family's declared settings (values typed or as text); `settings` are
    family-specific keyword arguments for code and tests, passed on as they are."""
    if steps is not None and steps < 1:
        raise ConfigError(f"steps must be at least 1, got {steps}")
    path, family, meta = _resolve(spec)
    given = parse_model_options(declared_options(family), dict(options or {}), FAMILIES[family][1])
    if family == "default":
        from .default import load_default

        _refuse_for_default(height, width, dtype, decoder)
        if steps is not None:
            settings["steps"] = steps
        if given:  # only where the family declares options, so load_default takes them
            settings["options"] = given
        return load_default(path, device=device, **settings)
    if family.startswith("stream") and steps is not None:
        raise ConfigError("an imported model samples at its authors' timesteps (its stream.json); --steps does not "
                          "apply to it")
    generic = dict(steps=steps, height=height, width=width, dtype=dtype, decoder=decoder)
    kwargs = {**settings, **given, **{k: v for k, v in generic.items() if v is not None}}
    if family.startswith("stream"):
        from .stream_folder import load_stream_folder

        return load_stream_folder(path, device=device, **kwargs)
    if path is None:
        from .adapters import load_random_full_size

        return load_random_full_size(spec, device=device, **kwargs)
    from .adapters import load_diffusers_folder

    return load_diffusers_folder(path, meta, device=device, **kwargs)


def _resolve(spec: str) -> tuple[Path | None, str, dict]:
    """(folder or None for a built-in name, family, model_index.json's contents)."""
    if spec == "default":
        return None, "default", {}
    if spec in _RANDOM:
        return None, _RANDOM[spec], {}
    path = Path(spec).expanduser()
    if not path.exists():
        raise ModelNotFoundError(
            f"model {spec!r} is neither a built-in name ({', '.join(MODEL_NAMES)}) nor an existing folder"
        )
    if not path.is_dir():
        raise ModelNotFoundError(f"model path {str(path)!r} is a file; give the folder that holds the model")
    if (path / "ltc_model.json").is_file():
        return path, "default", {}
    if (path / "stream.json").is_file():  # a folder written by `ltc-stream import`
        from .stream_folder import read_manifest

        manifest = read_manifest(path)
        return path, "stream-animatediff" if manifest.get("family") == "animatediff" else "stream", manifest
    index = path / "model_index.json"
    if index.is_file():
        try:
            meta = json.loads(index.read_text())
        except json.JSONDecodeError as exc:
            raise ModelNotFoundError(f"{index} is not valid JSON: {exc}") from None
        cls = meta.get("_class_name") if isinstance(meta, dict) else None
        if cls not in FAMILIES:
            from .adapters import SUPPORTED

            raise ModelNotFoundError(f"{path} is a {cls!r} pipeline; supported: "
                                     + ", ".join(f"{k} ({v})" for k, v in SUPPORTED.items()))
        return path, cls, meta
    raise ModelNotFoundError(
        f"{str(path)!r} holds neither ltc_model.json (default-model format), stream.json (ltc-stream import) "
        "nor model_index.json (a diffusers pipeline folder)"
    )


def _refuse_for_default(height, width, dtype, decoder) -> None:
    if height is not None or width is not None:
        raise ConfigError("the default model draws at the size its weights were trained at (128x128 for the "
                          "packaged one); --size is for diffusers models")
    if dtype not in (None, "auto", "float32"):
        raise ConfigError(f"the default model runs in float32 only, not {dtype}")
    if decoder not in (None, "auto"):
        raise ConfigError("the default model has one decoder, its own autoencoder; --decoder is for diffusers "
                          "models with a choice (vae, tiny)")
