"""File names handed to SimpleITK: they must be valid UTF-8, or the process aborts.

SimpleITK's Python layer converts a path to UTF-8 text. A name holding bytes that are not UTF-8
(a Latin-1 name from an old file share reaches Python as "surrogate escapes") cannot be
converted: SWIG passes a null pointer and the C++ library aborts the whole process (SIGABRT, no
message), after whatever work came before. Every SimpleITK read and write of this package passes
its path through :func:`sitk_path` first, and the command line checks its inputs and outputs
with :func:`check_sitk_name` before any slow work.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import InvalidInputError

#: Files this package reads or writes itself (never through SimpleITK): their names may be anything
#: the file system takes.
OWN_FORMAT_SUFFIXES = (".seg.nrrd", ".mrk.json", ".json", ".isegsession", ".pth", ".pt", ".png")


def sitk_path(path: str | os.PathLike, what: str = "The file") -> str:
    """``path`` as the text SimpleITK takes; InvalidInputError when its name is not valid UTF-8."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
        raise InvalidInputError(
            f"{what} {shown!r}: its name is not valid UTF-8 (bytes of another encoding, e.g. a "
            "Latin-1 name from an old share), which the image library cannot open. Rename the "
            "file (or its folder) to a UTF-8 name and try again."
        ) from None
    return text


def goes_through_sitk(path: str | os.PathLike) -> bool:
    """True when this package reads or writes ``path`` with SimpleITK (by its name)."""
    return not Path(os.fspath(path)).name.lower().endswith(OWN_FORMAT_SUFFIXES)


def check_sitk_name(path: str | os.PathLike, what: str = "The file") -> None:
    """Refuse early a path that SimpleITK will be given and could not open (see :func:`sitk_path`)."""
    if goes_through_sitk(path):
        sitk_path(path, what)
