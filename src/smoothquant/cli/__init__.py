"""The ``smoothquant`` command line.

Each subcommand lives in its own module exposing ``register(subparsers)``; heavy imports happen
inside the command functions so ``smoothquant --help`` stays fast. Errors the user can fix
(:class:`SmoothQuantError`) are printed as one line, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = (
    "smoothquant.cli.demo",
    "smoothquant.cli.quantize",
    "smoothquant.cli.evaluate",
    "smoothquant.cli.bench",
    "smoothquant.cli.info",
)


def build_parser() -> argparse.ArgumentParser:
    from smoothquant.version import __version__

    parser = argparse.ArgumentParser(
        prog="smoothquant",
        description="SmoothQuant W8A8 quantization for large language models.",
    )
    parser.add_argument("--version", action="version", version=f"smoothquant {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from smoothquant import interrupt
    from smoothquant.errors import SmoothQuantError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if argv is None:  # the command line itself, not a caller inside Python (tests, notebooks)
        interrupt.install()
    try:
        return int(args.func(args) or 0)
    except SmoothQuantError as e:
        if args.verbose:
            raise
        print(f"smoothquant: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return interrupt.leave()
