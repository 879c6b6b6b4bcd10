"""Entry point of the ``isegformer`` command.

Each subcommand lives in its own module of this package and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` (called with the parsed args, returns an exit code).

A reader that stops early (``isegformer models | head -1``) ends the command quietly with exit
status 141, as a process killed by SIGPIPE reports in the shell. SIGPIPE itself keeps Python's
setting (ignored): restoring its default would let a server that closes a socket mid-request kill
a download without a word.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import select
import stat
import sys

from ..errors import ISegFormerError

# Module names under isegformer.cli, in the order `isegformer --help` lists them.
COMMANDS: tuple[str, ...] = (
    "demo",
    "models",
    "download",
    "evaluate_propagation",
    "evaluate_clicks",
    "finetune",
    "segment",
    "propagate",
)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="isegformer",
        description="Interactive segmentation of 3D medical images with iSegFormer and STCN.",
    )
    parser.add_argument("--version", action="version", version=f"isegformer {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the library does")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__package__}.{name}").register(subparsers)
    return parser


# 128 + SIGPIPE: what the shell shows for a command whose reader went away.
EXIT_BROKEN_PIPE = 128 + 13


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _run(argv)
        finally:
            # Output still buffered would otherwise meet the closed pipe at interpreter exit,
            # where Python can only print "Exception ignored ... BrokenPipeError".
            if sys.stdout is not None:
                sys.stdout.flush()
    except BrokenPipeError as err:
        if not _stdout_reader_gone():
            return _report_os_error(err)  # some other pipe broke: that is a real error
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as err:  # only the final flush gets here (_run reports its own): a full disk
        _discard_stdout()  # keeps the interpreter's exit flush from failing again, with a traceback
        return _report_os_error(err)


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ISegFormerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        raise  # main() tells a closed stdout from other pipes
    except OSError as err:
        return _report_os_error(err)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _report_os_error(err: OSError) -> int:
    # The machine's answer (permissions, a vanished file, a full disk) in one line: a traceback
    # says nothing more to the user, and --verbose logging still has the details.
    where = f" ({err.filename})" if getattr(err, "filename", None) else ""
    print(f"error: {err.strerror or err}{where}. Check the path, its permissions and the disk "
          "space.", file=sys.stderr)
    return 1


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe or socket with no reader left (True where it cannot be told)."""
    try:
        fd = sys.stdout.fileno()
        if not stat.S_ISFIFO(os.fstat(fd).st_mode) and not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return False
        poller = select.poll()
    except (AttributeError, OSError, ValueError):  # no real stdout, or no poll (Windows)
        return True
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _discard_stdout() -> None:
    """Point stdout at the null device, so that nothing written later (and no flush at exit)
    meets the closed pipe again (the recipe of Python's signal module documentation)."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
