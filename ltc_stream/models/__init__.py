"""Model registry: `--model default|wan-causal-1.3b|animatediff-lightning|PATH` -> a VideoModel.

Every model, the built-in one included, loads through `load_model`; a local folder is
recognised by its files:
- `ltc_model.json`: a folder in the default model's format (the built-in weights are one);
- `stream.json`: a published streaming model imported by `ltc-stream import`;
- `model_index.json`: a diffusers pipeline folder (causal Wan or AnimateDiff-Lightning).
Nothing is ever downloaded.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ModelNotFoundError
from .base import ChunkResult, VideoModel

__all__ = ["ChunkResult", "VideoModel", "load_model", "MODEL_NAMES"]

# Names that need no path. The real-model names build the architecture at full size with
# random weights, for throughput benchmarks only (label their output as such).
MODEL_NAMES = ("default", "wan-causal-1.3b", "animatediff-lightning")


def load_model(spec: str, device: str = "auto", **options: Any) -> VideoModel:
    """Resolve a model name or a local folder to a ready VideoModel on `device`."""
    if spec == "default":
        from .default import load_default

        return load_default(device=device, **options)
    if spec in ("wan-causal-1.3b", "animatediff-lightning"):
        from .adapters import load_random_full_size

        return load_random_full_size(spec, device=device, **options)

    path = Path(spec).expanduser()
    if not path.exists():
        raise ModelNotFoundError(
            f"model {spec!r} is neither a built-in name ({', '.join(MODEL_NAMES)}) nor an existing folder"
        )
    if not path.is_dir():
        raise ModelNotFoundError(f"model path {str(path)!r} is a file; give the folder that holds the model")
    if (path / "ltc_model.json").is_file():
        from .default import load_default

        return load_default(path=path, device=device, **options)
    if (path / "stream.json").is_file():  # a folder written by `ltc-stream import`
        from .stream_folder import load_stream_folder

        return load_stream_folder(path, device=device, **options)
    index = path / "model_index.json"
    if index.is_file():
        try:
            meta = json.loads(index.read_text())
        except json.JSONDecodeError as exc:
            raise ModelNotFoundError(f"{index} is not valid JSON: {exc}") from None
        from .adapters import load_diffusers_folder

        return load_diffusers_folder(path, meta, device=device, **options)
    raise ModelNotFoundError(
        f"{str(path)!r} holds neither ltc_model.json (default-model format), stream.json (ltc-stream import) "
        "nor model_index.json (a diffusers pipeline folder)"
    )
