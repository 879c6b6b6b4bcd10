"""One bounded JSON reader for every JSON document the package reads.

Registries, cache records, fine-tuning run records, session manifests and ``.mrk.json`` files
can all come from outside (a shared cache, a mailed file, a tampered download). Python's
``json`` module has no size or depth limit: a 100,000-deep nesting raises ``RecursionError``,
non-UTF-8 bytes ``UnicodeDecodeError``, a huge number ``OverflowError`` later on. Every reader
goes through :func:`read_json_bounded` / :func:`loads_bounded`, which turn each of these into
the caller's own error type with a message that says what is wrong.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Optional, Type

from .errors import FileFormatError, ISegFormerError

#: Deeper than any document the package writes or reads (Slicer's markups nest about 6 deep).
DEFAULT_MAX_DEPTH = 64
#: Larger than any registry, record or manifest; a markups file with 100,000 points is ~40 MB.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class JSONDocumentError(FileFormatError):
    """A JSON document that is not readable text, too large, too deep or not JSON at all."""


def _nesting_depth_exceeds(text: str, max_depth: int) -> bool:
    """True when brackets outside strings nest deeper than ``max_depth`` (no recursion)."""
    depth = 0
    in_string = False
    escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"the number {literal[:40]} is out of range")
    return value


def loads_bounded(
    data: bytes | str,
    what: str,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_bytes: int = DEFAULT_MAX_BYTES,
    error: Type[ISegFormerError] = JSONDocumentError,
    advice: str = "",
) -> Any:
    """Decode JSON text or UTF-8 bytes, refusing oversize, deep, non-UTF-8 and non-finite input.

    ``what`` names the document in messages ("the model registry /x/models.json"); ``advice``
    is appended to each message (what the user should do). Raises ``error``.
    """
    suffix = f" {advice}" if advice else ""
    size = len(data)
    if size > max_bytes:
        raise error(f"{what} is {size} bytes, more than the {max_bytes} bytes allowed.{suffix}")
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise error(f"{what} is not UTF-8 text (byte {err.start}).{suffix}") from None
    else:
        text = data
    if text.startswith("\ufeff"):
        text = text[1:]
    if _nesting_depth_exceeds(text, max_depth):
        raise error(f"{what} nests deeper than {max_depth} levels; no valid file does.{suffix}")
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except json.JSONDecodeError as err:
        raise error(f"{what} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})."
                    f"{suffix}") from None
    except (ValueError, RecursionError) as err:
        raise error(f"{what} is not valid JSON ({err}).{suffix}") from None


def read_json_bounded(
    path: str | os.PathLike[str],
    what: Optional[str] = None,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_bytes: int = DEFAULT_MAX_BYTES,
    error: Type[ISegFormerError] = JSONDocumentError,
    advice: str = "",
) -> Any:
    """Read a JSON file with :func:`loads_bounded`'s limits; never reads more than ``max_bytes``+1.

    A missing or unreadable file raises ``error`` too (``FileNotFoundError`` is left to callers
    that treat absence as normal: check ``Path.exists`` first or catch it).
    """
    path = Path(path)
    what = what or f"the file {path}"
    suffix = f" {advice}" if advice else ""
    try:
        with open(path, "rb") as stream:
            data = stream.read(max_bytes + 1)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise error(f"cannot read {what}: {err.strerror or err}.{suffix}") from None
    return loads_bounded(data, what, max_depth=max_depth, max_bytes=max_bytes, error=error,
                         advice=advice)


def require(condition: bool, error: Callable[[str], Exception], message: str) -> None:
    """Raise ``error(message)`` unless ``condition``: a one-line schema check for readers."""
    if not condition:
        raise error(message)
