"""Entry point of the ``isegformer`` command.

Each subcommand lives in its own module of this package and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` (called with the parsed args, returns an exit code).
"""
from __future__ import annotations

import argparse
import importlib
import logging
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


def main(argv: list[str] | None = None) -> int:
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
    except OSError as err:
        # The machine's answer (permissions, a vanished file, a full disk) in one line: a
        # traceback says nothing more to the user, and --verbose logging still has the details.
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        print(f"error: {err.strerror or err}{where}. Check the path, its permissions and the disk space.",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
