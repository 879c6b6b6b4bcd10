"""``isegformer models``: the registry's models, and whether each is cached and verified."""
from __future__ import annotations

import argparse
from pathlib import Path

_VERIFIED = {
    "registry": "yes",
    "first-use": "yes (first use)",
    "pending": "on first use",
    "mismatch": "NO: hash differs",
    "unreadable": "NO: unreadable",
    "": "-",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the models of the registry, and whether each is cached and verified",
        description="List the registry's models with their kind, size, and whether the cache "
                    "(ISEGFORMER_HOME) holds a verified copy. 'yes (first use)' means the file "
                    "matches the SHA256 recorded at its first download (the registry has none).",
    )
    parser.add_argument("--registry", type=Path, metavar="FILE",
                        help="a registry JSON to use instead of the bundled one "
                             "(default: $ISEGFORMER_REGISTRY, else the bundled registry)")
    parser.add_argument("--no-verify", action="store_true",
                        help="do not hash the cached files (faster; shows the recorded state)")
    parser.add_argument("--paths", action="store_true", help="also show each file's cache path")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..weights import cache_home, load_registry, model_status

    registry = load_registry(args.registry)
    rows = [("NAME", "KIND", "SIZE", "CACHED", "VERIFIED") + (("PATH",) if args.paths else ())]
    for entry in registry:
        status = model_status(entry, verify=not args.no_verify)
        row = (entry.name, entry.kind, human_size(status.size), "yes" if status.cached else "no",
               _VERIFIED.get(status.verified, status.verified))
        rows.append(row + ((str(status.path),) if args.paths else ()))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    from ..finetune.runs import list_finetuned

    for n, tuned in enumerate(list_finetuned()):
        noc = "" if tuned.last_noc85 is None else f", NoC@85 {tuned.last_noc85:.2f}"
        print(("\nFINE-TUNED (isegformer finetune)\n" if n == 0 else "")
              + f"{tuned.name}  {human_size(tuned.size)}  {tuned.status}, {tuned.epochs_done} "
              f"epochs{noc}  {tuned.checkpoint}")
    print(f"\nregistry: {registry.source}\ncache:    {cache_home()}")
    return 0


def human_size(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"
