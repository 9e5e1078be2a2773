"""Command-line interface: ``python -m dva_model <command> [options]``.

Each command lives in ``dva_model/cli/<name>.py`` and exposes ``add_parser(subparsers)``
(which registers its options and sets ``func``) and the function it sets, ``run(args) -> int``.
Errors a user can fix (``UserError``, ``ValueError``, ``FileNotFoundError``) are printed as one sentence
with exit status 2, never as a traceback; ``--debug`` shows the traceback.
"""

import argparse
import importlib
import logging
import sys
from typing import Optional, Sequence

from dva_model.errors import UserError

# Module names under dva_model/cli, in the order ``--help`` lists them.
COMMANDS = ("download", "encode", "decode", "convert", "align", "edit", "clip_edit", "train_direction", "train", "metrics")

log = logging.getLogger("dva_model")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per available command."""
    parser = argparse.ArgumentParser(
        prog="python -m dva_model",
        description="Diffusion Video Autoencoders: encode, edit and decode face videos.",
    )
    _add_global_options(parser, default=False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"dva_model.cli.{name}")
        except ModuleNotFoundError as error:
            if not error.name or not error.name.startswith("dva_model.cli"):
                raise
            continue  # command not built yet in this checkout
        module.add_parser(subparsers)
    for command_parser in subparsers.choices.values():
        # Also accepted after the command; SUPPRESS keeps the top-level value when absent there.
        _add_global_options(command_parser, default=argparse.SUPPRESS)
    return parser


def _add_global_options(parser: argparse.ArgumentParser, *, default) -> None:
    parser.add_argument("--debug", action="store_true", default=default, help="show full tracebacks on errors")
    parser.add_argument("--quiet", action="store_true", default=default, help="no progress bars, warnings only")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv``, run the command and return the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError) as error:
        if args.debug:
            raise
        sys.stderr.write(f"error: {error}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("cancelled\n")
        return 130
