"""``isegformer download NAME|all``: fetch models into the verified cache, with a progress bar."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "download",
        help="download models into the cache (ISEGFORMER_HOME) and verify them",
        description="Download models of the registry into the cache and check their SHA256. "
                    "Files already cached and verified are not downloaded again. Proxies are "
                    "taken from HTTPS_PROXY / HTTP_PROXY / NO_PROXY. Without network access, "
                    "download each URL by hand (see `isegformer models --paths` for where to put "
                    "it) or pass weight files by path to the other commands.",
    )
    parser.add_argument("names", nargs="+", metavar="NAME",
                        help="model names (see `isegformer models`), or 'all'")
    parser.add_argument("--registry", type=Path, metavar="FILE",
                        help="a registry JSON to use instead of the bundled one")
    parser.add_argument("--force", action="store_true",
                        help="download again and forget the recorded hash (for a file that was "
                             "legitimately replaced upstream)")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="longest silence from the server before retrying (default 60); also "
                             "the window over which --min-rate is measured")
    parser.add_argument("--min-rate", type=float, default=1024.0, metavar="BYTES_PER_S",
                        help="an attempt slower than this over --timeout seconds is ended and "
                             "retried once; two in a row give up (default 1024; 0: no minimum)")
    parser.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                        help="give up on a URL after this long in all, retries included "
                             "(default: no deadline)")
    parser.add_argument("--retries", type=int, default=5,
                        help="retries after a failure that made no progress (default 5)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import CancelledError, ISegFormerError
    from ..progress import TqdmProgress
    from ..weights import DownloadOptions, download_model, load_registry

    registry = load_registry(args.registry)
    names = registry.names() if args.names == ["all"] else args.names
    for name in names:
        registry.get(name)  # unknown names fail before anything is downloaded
    if args.registry is not None:
        from ..output.paths import guard_outputs
        from ..weights.cache import ModelCache

        cache = ModelCache()  # the registry file must not be a file the download writes
        guard_outputs([args.registry], [cache.record_path] + [
            cache.model_path(name, registry.get(name).filename) for name in names], input_names=["--registry"])
    from ..errors import InvalidInputError

    import math

    finite = all(math.isfinite(v) for v in (args.timeout, args.min_rate, args.deadline or 1.0))
    if not (finite and args.timeout > 0 and args.min_rate >= 0 and (args.deadline is None
                                                                    or args.deadline > 0)):
        raise InvalidInputError("--timeout and --deadline must be positive and --min-rate at "
                                "least 0, all finite (seconds, seconds, bytes per second).")
    options = DownloadOptions(read_timeout=args.timeout, retries=max(args.retries, 0),
                              min_rate=args.min_rate, deadline=args.deadline)
    failed = []
    for name in names:
        bar = None if args.no_progress else TqdmProgress(desc=name, unit="B", unit_scale=True)
        try:
            path = download_model(name, registry=registry, force=args.force, progress=bar,
                                  options=options)
        except CancelledError:
            raise
        except ISegFormerError as err:
            if bar is not None:
                bar.close()
            print(f"error: {name}: {err}", file=sys.stderr)
            failed.append(name)
            continue
        if bar is not None:
            bar.close()
        print(f"{name}: {path}")
    if failed:
        print(f"{len(failed)} of {len(names)} failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
