"""`ltc-stream`: one entry point, one subcommand per task.

Each subcommand lives beside the code it drives, in a module with `add_arguments(parser)` and
`main(args) -> int`; modules are imported only when their command runs, so `--help` is fast.
User errors (LTCStreamError) print one line and exit 2; Ctrl-C exits 130 without a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import shlex
import sys

from .errors import LTCStreamError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("ltc_stream.server.app", "start the streaming server (web client, WebRTC, WebSocket)"),
    "render": ("ltc_stream.render", "render a video file offline from timed prompts"),
    "eval-ltc": ("ltc_stream.eval_ltc", "measure LTC-Accel against full-step, re-spaced and reuse sampling"),
    "bench-kernels": ("ltc_stream.kernels.bench", "benchmark the fused kernels against eager and compiled PyTorch"),
    "bench-e2e": ("ltc_stream.server.bench_e2e", "start a server, connect a WebRTC client, report FPS and latency"),
    "bench": ("ltc_stream.bench", "benchmark a model's chunk generation (denoise, decode, end-to-end FPS)"),
    "train-default": ("ltc_stream.models.default.train", "train and distil the built-in default model"),
    "eval-default": ("ltc_stream.models.default.evaluate", "measure the default model: speed, prompt fidelity, continuity, LTC"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ltc-stream",
        description="Real-time streaming video generation accelerated by LTC-Accel.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {n:<15} {h}" for n, (_, h) in COMMANDS.items())
        + "\n\nRun 'ltc-stream COMMAND --help' for a command's options.",
    )
    parser.add_argument("command", nargs="?", help="one of the commands below")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        top.print_usage(sys.stderr)
        print(f"ltc-stream: error: unknown command {name!r} (choose from {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"ltc-stream {name}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    args.command_line = shlex.join(["ltc-stream", name, *rest])  # as given, for the reports that record their command
    try:
        return int(module.main(args) or 0)
    except LTCStreamError as exc:
        print(f"ltc-stream {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nltc-stream {name}: interrupted", file=sys.stderr)
        return 130
