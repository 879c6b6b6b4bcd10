"""The other files an image input consists of: the voxel files of a two-file format.

A detached NRRD header (``.nhdr``) names its voxel file(s) in ``data file:``, a MetaImage
header (``.mhd``) in ``ElementDataFile``, and an Analyze / NIfTI pair keeps its voxels in the
``.img`` beside the ``.hdr``. Writing an output over one of those files destroys the input as
surely as writing over the header, so the output guard (:mod:`isegformer.output.paths`) protects
every file :func:`data_files` lists.

Only headers are read (a bounded prefix of the file), never voxels; a file that cannot be read or
parsed simply names no data file (the volume reader reports what is wrong with it). The three
ways each format names its files are all understood: one file name, ``LIST`` (one name per line
after the field) and a numbered pattern (``slice%03d.raw 1 40 1``, printf style).

Format references: teem.sourceforge.net/nrrd/format.html ("data file") and the MetaIO
documentation (itk.org, "ElementDataFile").
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

#: The longest header read (a LIST of thousands of slice files fits easily).
MAX_HEADER_BYTES = 4 * 1024 * 1024
#: The most files a numbered pattern may expand to (a series of single slices is a few thousand).
MAX_PATTERN_FILES = 100_000

# "data file: x" or "datafile: x"; not a key/value pair "data file:=x".
_NRRD_DATA_FILE = re.compile(r"^data ?file:(?!=)\s*(.*?)\s*$", re.IGNORECASE)
_META_DATA_FILE = re.compile(r"^\s*ElementDataFile\s*=\s*(.*?)\s*$")
_META_KEY = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_\[\]]*\s*=")
# One printf conversion for an integer, e.g. %d, %03d, %5i (the forms ITK and teem accept).
_PRINTF_INTEGER = re.compile(r"%[-+ 0#]*\d*[diu]")


def data_files(path: str | os.PathLike) -> list[Path]:
    """The files besides ``path`` that hold its voxels (empty for a single-file format).

    Relative names are taken relative to the header's folder, as the formats define them.
    """
    p = Path(path).expanduser()
    try:
        if not p.is_file():
            return []
    except (OSError, ValueError):
        return []
    found: list[Path] = []
    head = _read_header(p)
    if head is not None:
        if head.startswith(b"NRRD000"):
            found += _nrrd_data_files(head, p)
        elif _looks_like_metaimage(head):
            found += _metaimage_data_files(head, p)
    found += _analyze_partners(p)
    return [f for f in dict.fromkeys(found) if f != p]


def _read_header(path: Path) -> Optional[bytes]:
    """The text header of a NRRD or MetaImage file (None for any other file, after 64 bytes).

    A NRRD header ends at its first blank line; a MetaImage header with ``LOCAL`` data at its
    ``ElementDataFile`` line; reading stops there, so a large single-file volume costs a block."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(64)
            if not (data.startswith(b"NRRD000") or _META_KEY.match(data.decode("latin-1"))):
                return None
            while len(data) < MAX_HEADER_BYTES:
                if b"\n\n" in data or b"\r\n\r\n" in data or re.search(
                        rb"ElementDataFile\s*=\s*LOCAL", data):
                    break
                block = handle.read(64 * 1024)
                if not block:
                    break
                data += block
    except OSError:
        return None
    for end in (b"\n\n", b"\r\n\r\n"):
        at = data.find(end)
        if at >= 0:
            data = data[:at]
    return data[:MAX_HEADER_BYTES]


def _lines(head: bytes) -> list[str]:
    # Only "\n" ends a header line in these formats; str.splitlines would also split a file name
    # at \x1c, \x85 or U+2028.
    text = head.decode("utf-8", errors="surrogateescape")
    return [line.rstrip("\r") for line in text.split("\n")]


def _nrrd_data_files(head: bytes, header: Path) -> list[Path]:
    # NRRD's keyword is "LIST" exactly; a LIST line holds one file name.
    return _listed_data_files(head, header, _NRRD_DATA_FILE, keyword=str, local=None, split_lines=False)


def _looks_like_metaimage(head: bytes) -> bool:
    first = _lines(head[:4096])[0] if head else ""
    return bool(_META_KEY.match(first)) and b"ElementDataFile" in head


def _metaimage_data_files(head: bytes, header: Path) -> list[Path]:
    # MetaImage's keywords in any case; a LIST line may hold several names separated by spaces
    # (one per slice column); LOCAL: the voxels follow the header in the same file.
    return _listed_data_files(head, header, _META_DATA_FILE, keyword=str.upper, local="LOCAL", split_lines=True)


def _listed_data_files(head: bytes, header: Path, key, keyword, local, split_lines) -> list[Path]:
    """The files a detached header's data-file line names: one name, a numbered pattern, or
    ``LIST`` with the names on the lines after it (``keyword`` normalises the keywords)."""
    lines = _lines(head)
    for number, line in enumerate(lines):
        match = key.match(line)
        if match is None:
            continue
        value = match.group(1)
        if local is not None and keyword(value) == local:
            return []
        if keyword(value) == "LIST" or keyword(value).startswith("LIST "):
            names = [name for name in lines[number + 1:] if name.strip()]
            if split_lines:
                names = [part for name in names for part in name.split()]
            return [_beside(header, name) for name in names]
        return _named_or_pattern(value, header)
    return []


def _named_or_pattern(value: str, header: Path) -> list[Path]:
    """One file name, or ``pattern min max step [subdim]`` with one printf integer in it."""
    parts = value.split()
    if len(parts) >= 4 and _PRINTF_INTEGER.search(parts[0]) and all(
            re.fullmatch(r"[-+]?\d+", part) for part in parts[1:4]):
        return _pattern_files(parts[0], *(int(part) for part in parts[1:4]), header=header)
    if not value:
        return []
    return [_beside(header, value)]


def _pattern_files(pattern: str, first: int, last: int, step: int, *, header: Path) -> list[Path]:
    if step == 0 or (last - first) * step < 0:
        log.debug("%s: the data file pattern %r %d %d %d names no file", header, pattern, first, last, step)
        return []
    count = (last - first) // step + 1
    if count > MAX_PATTERN_FILES:
        log.warning("%s: the data file pattern %r names %d files; only the first %d are protected "
                    "from being overwritten.", header, pattern, count, MAX_PATTERN_FILES)
        count = MAX_PATTERN_FILES
    try:
        return [_beside(header, pattern % (first + n * step)) for n in range(count)]
    except (TypeError, ValueError):
        log.debug("%s: cannot expand the data file pattern %r", header, pattern)
        return []


def _analyze_partners(path: Path) -> list[Path]:
    """``x.hdr`` <-> ``x.img`` (each possibly ``.gz``): an Analyze 7.5 or NIfTI pair."""
    name = path.name
    lower = name.lower()
    for mine, other in ((".hdr", ".img"), (".img", ".hdr")):
        for gz in ("", ".gz"):
            if lower.endswith(mine + gz):
                stem = name[: len(name) - len(mine + gz)]
                return [path.with_name(stem + ext + zipped)
                        for ext in (other, other.upper()) for zipped in ("", ".gz")]
    return []


def _beside(header: Path, name: str) -> Path:
    candidate = Path(name.strip())
    return candidate if candidate.is_absolute() else header.parent / candidate
