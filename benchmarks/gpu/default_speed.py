"""The built-in default model's generation speed on a GPU, at its own 128x128 and larger sizes.

The GPU machine has no copy of the 90 MB text-encoder package (nothing can be installed there from
the network, and a call carries at most 64 MiB), so the prompt's token states are computed on a
CPU machine beforehand (`--save-embedding`) and read from the file there. Speed does not depend on
the prompt; the embedding is the real encoder's.

    python3 benchmarks/gpu/default_speed.py --save-embedding benchmarks/gpu/prompt.safetensors   # CPU
    python3 benchmarks/gpu/default_speed.py --embedding benchmarks/gpu/prompt.safetensors \\
        --device cuda --sizes 128 256 512 --output OUT.json                                        # GPU
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

PROMPT = "a red ball moving left on a blue background"  # generation_speed's prompt


class _FixedEncoder:
    """Stands in for the text encoder: the one prompt's precomputed token states."""

    def __init__(self, states: torch.Tensor):
        self.states = states

    def encode(self, text: str) -> torch.Tensor:
        if text != PROMPT:
            raise KeyError(f"no precomputed embedding for {text!r}")
        return self.states


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save-embedding", help="write the prompt's token states here and exit (needs the encoder)")
    parser.add_argument("--embedding", help="read the prompt's token states from here instead of the encoder")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--chunks", type=int, default=24)
    parser.add_argument("--output")
    args = parser.parse_args()
    from safetensors.torch import load_file, save_file

    from ltc_stream.models.default import text as text_module

    if args.save_embedding:
        states = text_module.shared_text_encoder().encode(PROMPT)
        save_file({"states": states.contiguous()}, args.save_embedding, metadata={"prompt": PROMPT})
        return 0
    if args.embedding:
        states = load_file(args.embedding)["states"]
        text_module._shared[states.shape[0]] = _FixedEncoder(states)
    from ltc_stream.models import load_model
    from ltc_stream.models.default.evaluate import generation_speed

    model = load_model("default", device=args.device)
    dev = model.device
    rows = []
    for size in args.sizes:
        row = {"size": size}
        for ltc in (True, False):
            fps = generation_speed(model, ltc, args.chunks, size)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            row["fps_ltc" if ltc else "fps_full"] = round(fps, 1)
        rows.append(row)
        print(f"[default-speed] {row}", file=sys.stderr, flush=True)
    result = {"model": "default", "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
              "torch": torch.__version__, "chunks": args.chunks, "frames_per_chunk": model.frames_per_chunk,
              "note": "generate_chunk (denoise + decode) FPS after one warm-up chunk; sizes above 128 measure "
                      "throughput only (the model was trained at 128x128)",
              "by_size": rows}
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
