"""Pool the default model's fidelity over several disjoint stretches of held-out prompts.

    python3 benchmarks/pool_fidelity.py REPORT[:KEY] [REPORT[:KEY] ...] [--output FILE]

Each REPORT is an `ltc-stream eval-default --output` report (its `fidelity.per_prompt`, from
`fidelity.first_prompt`), or, with `:KEY`, the arm KEY of a results file whose `arms` hold probe rows
(`first`, `per_prompt`). Prints, as JSON, every stretch's share of checks passed and the pooled share
with a 95% interval from resampling prompts (`evaluate.bootstrap_interval`); refuses stretches that
overlap or whose captions are not the held-out prompts they claim to be.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys

from ltc_stream.models.default.evaluate import bootstrap_interval, by_kind, held_out_scenes


def load_stretch(spec: str) -> tuple[int, list[dict]]:
    path, _, key = spec.partition(":")
    with open(path) as fh:
        data = json.load(fh)
    if key:
        arm = data["arms"][key]
        return int(arm["first"]), arm["per_prompt"]
    return int(data["fidelity"].get("first_prompt", 0)), data["fidelity"]["per_prompt"]


def summary(rows: list[dict]) -> dict:
    """Prompts, checks, share of checks passed with its 95% interval, and the share by kind of check."""
    checks = [v for r in rows for v in r["checks"].values()]
    return {"prompts": len(rows), "checks": len(checks), "accuracy": round(sum(checks) / len(checks), 4),
            "ci95": bootstrap_interval(rows), "by_kind": by_kind(rows)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", metavar="REPORT[:KEY]")
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    stretches, rows, taken = [], [], set()
    for spec in args.reports:
        first, part = load_stretch(spec)
        span = set(range(first, first + len(part)))
        if span & taken:
            print(f"pool_fidelity: {spec} overlaps an earlier stretch (prompts {first}-{first + len(part) - 1})", file=sys.stderr)
            return 2
        taken |= span
        for scene, row in zip(held_out_scenes(len(part), first), part):
            if scene.caption != row["caption"]:
                print(f"pool_fidelity: {spec}: prompt {first} onwards are not the held-out prompts "
                      f"({row['caption']!r} against {scene.caption!r})", file=sys.stderr)
                return 2
        stretches.append({"source": spec, "first": first, **summary(part)})
        rows += part
    out = {"stretches": stretches, "pooled": summary(rows),
           "command": shlex.join(["python3", "benchmarks/pool_fidelity.py", *(argv if argv is not None else sys.argv[1:])])}
    text = json.dumps(out, indent=1)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
