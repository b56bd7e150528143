"""Which prompts the packaged default model draws recognisably, as the server shows them.

For each prompt: streams as served (the packaged folder's settings, LTC on, seeds 0..SEEDS-1, four
chunks = 2 s each), read by eval-default's pixel reader (`evaluate.read_video`): its checks on chunks
2-4 (background colour, object colour, direction for left/right/up/down), as eval-default judges
them, and the share of all frames, the first chunk's included, in which an object stands out from
the background (more than 40 pixels). Writes the JSON and, with --sheet, a contact sheet of seed 0:
one row per prompt, frames 0, 10, 20 and 31.

    python benchmarks/default_prompts.py --output benchmarks/results/default-model-prompts-cpu.json \
        --sheet benchmarks/results/default-model-prompts-cpu.png
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys

import numpy as np
import torch

from ltc_stream.models.default import load_default
from ltc_stream.models.default.evaluate import read_video
from ltc_stream.models.default.world import LINEAR_MOTIONS, parse_caption

# the start prompt and the page's examples (DefaultModel.example_prompts), then other candidates and the
# start prompt and examples they replaced (the red ball, the star, the triangle, the green circle)
PROMPTS = (
    "a yellow circle moving left on a blue background",
    "a red circle moving left on a blue background",
    "a yellow square moving up on a purple background",
    "a yellow circle moving right on a red background",
    "a white square moving up on a green background",
    "a white circle bouncing on a blue background",
    "a red ball moving right on a blue background",
    "a yellow star spinning on a purple background",
    "a pink triangle bouncing on a cyan background",
    "a green circle growing on a black background",
)
VISIBLE_PIXELS = 40
CHUNKS = 4
SHEET_FRAMES = (0, 10, 20, 31)


def measure(model, prompt: str, seeds: int) -> tuple[dict, np.ndarray]:
    truth = parse_caption(prompt)
    embedding = model.encode_prompt(prompt)
    passed = checks = visible = first_visible = frames_seen = 0
    sheet_row = None
    for seed in range(seeds):
        state = model.new_stream(seed)
        frames = np.concatenate([model.generate_chunk(state, embedding, ltc=True).frames for _ in range(CHUNKS)])
        seen = read_video(frames[model.frames_per_chunk:])  # as eval-default: after the first chunk
        results = [seen["background"] == truth["background"], seen["object"] == truth["colour"]]
        if truth["motion"] in LINEAR_MOTIONS:
            results.append(seen["direction"] == truth["motion"])
        passed, checks = passed + sum(results), checks + len(results)
        for k, frame in enumerate(frames):
            shown = read_video(frame[None])["object_pixels"] > VISIBLE_PIXELS
            visible += shown
            first_visible += shown and k < model.frames_per_chunk
            frames_seen += 1
        if seed == 0:
            sheet_row = np.concatenate([frames[i] for i in SHEET_FRAMES], axis=1)
    row = {"prompt": prompt, "checks_passed": passed, "checks": checks, "accuracy": round(passed / checks, 3),
           "frames_with_object": round(visible / frames_seen, 3),
           "first_chunk_frames_with_object": round(first_visible / (seeds * model.frames_per_chunk), 3)}
    return row, sheet_row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", required=True)
    parser.add_argument("--sheet", help="also write seed 0's frames as a PNG contact sheet")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_default(device="cpu")
    rows, sheet = [], []
    for prompt in PROMPTS:
        row, frames = measure(model, prompt, args.seeds)
        rows.append(row)
        sheet.append(frames)
        print(f"{row['checks_passed']:3d}/{row['checks']:3d}  object in {row['frames_with_object']:.0%} of frames "
              f"({row['first_chunk_frames_with_object']:.0%} of the first chunk's)  {prompt}", file=sys.stderr)
    report = {"model": model.describe(), "seeds": args.seeds, "chunks": CHUNKS, "visible_pixels": VISIBLE_PIXELS,
              "rows": rows, "command": shlex.join(["python", "benchmarks/default_prompts.py", *sys.argv[1:]])}
    with open(args.output, "w") as fh:
        fh.write(json.dumps(report, indent=1) + "\n")
    if args.sheet:
        from PIL import Image

        # 64 colours: a tenth of the bytes, and the model draws flat colours
        Image.fromarray(np.concatenate(sheet, axis=0)).quantize(64).save(args.sheet, optimize=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
