"""Refusing a truncated image file before SimpleITK reads it as if it were whole.

ITK's NIfTI reader fills whatever is missing at the end of a short file with zeros, without an
error or a warning: an interrupted copy or download would be segmented as a volume whose last
slices are black (and whose intensity window is computed over those zeros). The NRRD and
MetaImage readers do raise. So before every file read (:func:`isegformer.volume.read_volume`):

- a gzip file (``.nii.gz``, ``.img.gz``, ...) is inflated to its end, without keeping the data:
  its stream must end with the gzip trailer, whose CRC and length zlib checks;
- a NIfTI-1 or NIfTI-2 file must hold ``vox_offset`` + the voxel bytes its header declares
  (for a ``.hdr`` / ``.img`` pair, the ``.img`` must hold the voxel bytes).

A header this module does not understand is left to SimpleITK, which reports its own error.
"""
from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path
from typing import Optional

from ..errors import FileFormatError
from .nifti_header import HEADER_BYTES, parse_nifti_header

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
_AGAIN = "Copy or download it again from its source."


def check_not_truncated(path: Path) -> None:
    """Raise FileFormatError when the image file ``path`` is visibly incomplete."""
    try:
        with open(path, "rb") as handle:
            compressed = handle.read(2) == _GZIP_MAGIC
    except OSError:
        return  # SimpleITK reports the unreadable file
    if compressed:
        data_bytes, header = _gzip_length(path, keep=HEADER_BYTES)
    else:
        data_bytes = path.stat().st_size
        with open(path, "rb") as handle:
            header = handle.read(HEADER_BYTES)
    layout = _nifti_layout(header)
    if layout is None:
        return
    voxel_bytes, vox_offset, single_file = layout
    if single_file:
        _require(path, data_bytes, vox_offset + voxel_bytes)
        return
    image = _pair_image(path)
    if image is not None:
        _check_pair_image(image, voxel_bytes)


def _check_pair_image(image: Path, voxel_bytes: int) -> None:
    """The ``.img`` of a NIfTI pair must hold ``voxel_bytes`` (its own gzip stream complete)."""
    with open(image, "rb") as handle:
        compressed = handle.read(2) == _GZIP_MAGIC
    size = _gzip_length(image)[0] if compressed else image.stat().st_size
    _require(image, size, voxel_bytes)


def _require(path: Path, have: int, need: int) -> None:
    if have < need:
        raise FileFormatError(
            f"{path} is truncated or damaged: it holds {have} bytes (uncompressed), but its header "
            f"declares {need} (header and voxels); an interrupted copy or download? {_AGAIN}"
        )


def _gzip_length(path: Path, keep: int = 0) -> tuple[int, bytes]:
    """The inflated length of the whole gzip file (every member), and its first ``keep``
    inflated bytes (a header, read in the same pass); raises FileFormatError when it is cut
    short or corrupt. The other inflated bytes are counted in blocks, never kept."""
    total, head = 0, b""
    try:
        with gzip.open(path, "rb") as stream:
            while True:
                block = stream.read(_CHUNK)
                if not block:
                    return total, head
                if total < keep:
                    head += block[:keep - total]
                total += len(block)
    except EOFError:
        raise FileFormatError(
            f"{path} is truncated: its compressed data ends before the end of the gzip stream (an "
            f"interrupted copy or download?). {_AGAIN}"
        ) from None
    except (gzip.BadGzipFile, zlib.error) as err:
        raise FileFormatError(f"{path} is damaged: its compressed data is corrupt ({err}). {_AGAIN}") from None
    except OSError as err:
        raise FileFormatError(f"Cannot read {path}: {err.strerror or err}.") from None


def _nifti_layout(header: bytes) -> Optional[tuple[int, int, bool]]:
    """(voxel bytes, vox_offset, single file) from a NIfTI-1/-2 header, or None if it is not one."""
    fields = parse_nifti_header(header)
    if fields is None or fields.analyze:
        return None
    return _layout(fields.dims, fields.bitpix, fields.vox_offset, not fields.paired)


def _layout(dims, bitpix: int, vox_offset: float, single_file: bool) -> Optional[tuple[int, int, bool]]:
    count = dims[0]
    if not 1 <= count <= 7 or bitpix <= 0 or bitpix % 8 or not math.isfinite(vox_offset) or vox_offset < 0:
        return None  # an odd header: SimpleITK judges it
    sizes = [max(int(d), 1) for d in dims[1: count + 1]]
    offset = int(vox_offset) if single_file else 0
    return math.prod(sizes) * (bitpix // 8), offset, single_file


def _pair_image(header: Path) -> Optional[Path]:
    """The ``.img`` (or ``.img.gz``) beside a ``.hdr`` header, if it exists."""
    from .data_files import data_files

    for candidate in data_files(header):
        if candidate.name.lower().endswith((".img", ".img.gz")) and candidate.is_file():
            return candidate
    return None

