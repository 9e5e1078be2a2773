"""Command-line interface: ``python -m dva_model <command> [options]``.

Each command lives in ``dva_model/cli/<name>.py`` and exposes ``add_parser(subparsers)``
(which registers its options and sets ``func``) and the function it sets, ``run(args) -> int``.
Errors a user can fix (``UserError``, ``ValueError``, ``FileNotFoundError``) are printed as one sentence
with exit status 2, an operating-system error (disk full, read-only folder) as one sentence with status 1,
never as a traceback; ``--debug`` shows the traceback. Ctrl-C (130) and SIGTERM (143) stop the command
by unwinding it like an error, so every temporary output file is removed on the way out.
"""

import argparse
import importlib
import logging
import signal
import sys
from typing import Optional, Sequence

from dva_model.errors import UserError

# Module names under dva_model/cli, in the order ``--help`` lists them.
COMMANDS = ("download", "encode", "decode", "convert", "align", "edit", "clip_edit", "train_direction", "train", "metrics")
EXIT_USER_ERROR = 2
EXIT_OS_ERROR = 1
EXIT_INTERRUPTED = 128 + signal.SIGINT  # the shell's code for a command stopped by Ctrl-C
EXIT_TERMINATED = 128 + signal.SIGTERM

log = logging.getLogger("dva_model")


class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM (a BaseException, like Ctrl-C's, so
    nothing on the way out mistakes it for an ordinary error; ``finally`` blocks and writers clean up)."""


def _raise_terminated(signum, _frame) -> None:
    raise Terminated(signum)


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


def _check_common_options(args: argparse.Namespace) -> None:
    """Checks shared by every command, before any work: the torch device exists here."""
    if getattr(args, "device", None) is not None:
        from dva_model.cli.options import check_device

        check_device(args.device)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv``, run the command and return the process exit status."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread (an embedding host): signals stay the host's business
        previous = None
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        return _run(argv)
    except KeyboardInterrupt:  # also while the parser imports torch, before any command started
        if debug:
            raise
        sys.stderr.write("cancelled\n")
        return EXIT_INTERRUPTED
    except Terminated:
        if debug:
            raise
        sys.stderr.write("stopped by SIGTERM\n")
        return EXIT_TERMINATED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(argv: Optional[Sequence[str]]) -> int:
    """Parse and run one command; user and OS errors become one sentence on stderr."""
    from dva_model.formats.files import describe_os_error

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        _check_common_options(args)
        return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError) as error:
        if args.debug:
            raise
        message = describe_os_error(error) if isinstance(error, FileNotFoundError) else str(error)
        sys.stderr.write(f"error: {message}\n")
        return EXIT_USER_ERROR
    except OSError as error:  # a full disk, a folder made read-only mid-run, a vanished network share
        if args.debug:
            raise
        sys.stderr.write(f"error: {describe_os_error(error)}\n")
        return EXIT_OS_ERROR
