"""`ltc-stream`: one entry point, one subcommand per task (`bench` has its own: model, kernels, e2e).

Each subcommand lives beside the code it drives, in a module with `add_arguments(parser)` and
`main(args) -> int`; modules are imported only when their command runs, so `--help` is fast.
User errors (LTCStreamError) print one line and exit 2; Ctrl-C exits 130 without a traceback.

The options every command that runs a model shares (`--model`, `--size`, `--steps`, `--dtype`,
`--decoder`, `--device`, `--model-option`, `--no-ltc`) are defined once here
(`add_model_arguments`) and turned into a loaded model once (`load_model_from_args`).
"""
from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from typing import Any

from .errors import LTCStreamError

# name -> (module, one-line help); a name with a space is a subcommand ("bench model")
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("ltc_stream.server.app", "start the streaming server (web page, WebRTC, WebSocket API)"),
    "render": ("ltc_stream.render", "render a video file offline from timed prompts"),
    "calibrate": ("ltc_stream.calibrate", "calibrate LTC for a model; print model calls against PSNR"),
    "bench model": ("ltc_stream.bench", "a model's chunk generation, lever by lever (LTC, decoder, compile)"),
    "bench kernels": ("ltc_stream.kernels.bench", "the fused kernels against eager and compiled PyTorch"),
    "bench e2e": ("ltc_stream.server.bench_e2e", "a server and a WebRTC client on loopback: FPS and latency"),
    "bench load": ("ltc_stream.server.bench_load", "load, attack and fault scenarios against a server (loopback)"),
    "eval-ltc": ("ltc_stream.eval_ltc", "LTC against full-step, re-spaced and reuse sampling on an exact oracle"),
    "train-default": ("ltc_stream.models.default.train", "train and distil the built-in default model"),
    "eval-default": ("ltc_stream.models.default.evaluate", "measure the default model: speed, prompt fidelity, continuity, LTC"),
    "import": ("ltc_stream.models.importers", "make a model folder from a published checkpoint (Self-Forcing, CausVid, LongLive, ...)"),
    "check-model": ("ltc_stream.check_model", "say what a model folder is, load it, run one block, check its GPU memory"),
}

# how `ltc-stream --help` groups them; names not (yet) in COMMANDS are skipped, names in no section
# are listed last under "other"
SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("run a model", ("serve", "render")),
    ("prepare a model", ("import", "check-model", "calibrate")),
    ("measure", ("bench model", "bench kernels", "bench e2e", "eval-ltc")),
    ("the built-in default model", ("train-default", "eval-default")),
)

DTYPES = ("auto", "float32", "bfloat16", "float16")


def _command_list(names: list[str] | None = None) -> str:
    names = list(COMMANDS) if names is None else names
    placed = [n for _, section in SECTIONS for n in section]
    sections = [(title, [n for n in section if n in names]) for title, section in SECTIONS]
    sections.append(("other", [n for n in names if n not in placed]))
    width = max(len(n) for n in names) + 2
    return "\n\n".join(f"{title}:\n" + "\n".join(f"  {n:<{width}}{COMMANDS[n][1]}" for n in group)
                       for title, group in sections if group)


def _top_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="ltc-stream", usage="ltc-stream COMMAND [options]",
        description="Real-time streaming video generation accelerated by LTC-Accel.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_command_list() + "\n\nRun 'ltc-stream COMMAND --help' for a command's options.",
    )


def _group_help(group: str) -> str:
    names = [n for n in COMMANDS if n.startswith(group + " ")]
    return (f"usage: ltc-stream {group} {{{','.join(n.split()[1] for n in names)}}} [options]\n\n"
            + _command_list(names) + f"\n\nRun 'ltc-stream {group} SUBCOMMAND --help' for its options.")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    groups = {n.split()[0] for n in COMMANDS if " " in n}
    if name in groups:
        if not rest or rest[0] in ("-h", "--help"):
            print(_group_help(name), file=sys.stdout if rest else sys.stderr)
            return 0 if rest else 2
        if f"{name} {rest[0]}" not in COMMANDS:
            subs = [n.split()[1] for n in COMMANDS if n.startswith(name + " ")]
            print(f"ltc-stream {name}: error: unknown subcommand {rest[0]!r} (choose from {', '.join(subs)})",
                  file=sys.stderr)
            return 2
        name, rest = f"{name} {rest[0]}", rest[1:]
    elif name not in COMMANDS:
        print(f"usage: {top.usage}", file=sys.stderr)
        listed = sorted({n.split()[0] for n in COMMANDS})
        print(f"ltc-stream: error: unknown command {name!r} (choose from {', '.join(listed)})", file=sys.stderr)
        return 2
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"ltc-stream {name}", usage=f"ltc-stream {name} [options]",
                                     description=help_text, formatter_class=_formatter)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    args.command_line = shlex.join(["ltc-stream", *name.split(), *rest])  # as given, for reports that record it
    try:
        return int(module.main(args) or 0)
    except LTCStreamError as exc:
        print(f"ltc-stream {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nltc-stream {name}: interrupted", file=sys.stderr)
        return 130


def _formatter(prog: str) -> argparse.HelpFormatter:
    # help texts start at a fixed column so that one option takes one line at 100 columns
    return argparse.HelpFormatter(prog, max_help_position=32)


# --- the options shared by every command that runs a model -------------------------------------
def parse_size(text: str) -> tuple[int, int]:
    """`--size WxH` -> (width, height)."""
    w, sep, h = text.lower().partition("x")
    try:
        width, height = int(w), int(h)
    except ValueError:
        width = height = 0
    if not sep or width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"wants WIDTHxHEIGHT in pixels (e.g. 832x480), got {text!r}")
    return width, height


def add_model_arguments(parser: argparse.ArgumentParser, *, ltc: bool = True) -> argparse._ArgumentGroup:
    """`--model`, `--size`, `--steps`, `--dtype`, `--decoder`, `--device`, `--model-option` in a
    "model" group (returned, for a command's own model-side options), and `--no-ltc` in an "LTC" group."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="default", metavar="NAME|DIR",
                       help="default, a built-in name, or a local model folder")
    group.add_argument("--size", type=parse_size, default=None, metavar="WxH",
                       help="frame size, where the model allows (default: the model's)")
    group.add_argument("--steps", type=int, default=None, metavar="N",
                       help="sampling steps per chunk (default: the model's)")
    group.add_argument("--dtype", choices=DTYPES, default="auto", metavar="DTYPE",
                       help="auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16")
    group.add_argument("--decoder", default=None, metavar="NAME",
                       help="auto, vae, tiny (TAEHV for Wan, TAESD for AnimateDiff)")
    group.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda where present")
    group.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                       help="a setting the model declares (repeatable; a wrong KEY lists them)")
    if ltc:
        parser.add_argument_group("LTC").add_argument(
            "--no-ltc", action="store_true", help="run every sampling step (LTC-Accel off)")
    return group


def model_settings(args: argparse.Namespace) -> dict[str, Any]:
    """load_model's keyword arguments for the options of `add_model_arguments`."""
    from .models.base import split_option

    width, height = args.size if args.size else (None, None)
    return dict(device=args.device, steps=args.steps, height=height, width=width,
                dtype=None if args.dtype == "auto" else args.dtype, decoder=args.decoder,
                options=dict(split_option(text) for text in args.model_option))


def load_model_from_args(args: argparse.Namespace, **extra: Any):
    """The model `add_model_arguments`' options name, loaded (`extra` overrides a setting)."""
    from .models import load_model

    return load_model(args.model, **{**model_settings(args), **extra})
