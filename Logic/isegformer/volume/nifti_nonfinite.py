"""Where a NIfTI or Analyze file stores NaN or infinite voxels, which ITK's reader turns into 0.

ITK's NIfTI reader (niftilib) replaces every non-finite float voxel with 0 while it reads, without
an error or a warning, so the array SimpleITK hands over cannot tell a NaN from a true 0. The
package's one volume reader (:func:`isegformer.volume.read_volume`) puts them back from the
stored voxels, so that a NIfTI is seen as stored, exactly as an NRRD or MetaImage is (those
readers keep NaN), and each consumer applies its own rule (a Session refuses a volume with NaN,
the evaluation names the slice).

The same reader handles every layout that can hold such voxels: a single-file NIfTI-1/-2
(``.nii``, ``.nii.gz``), a NIfTI-1/-2 pair (``.hdr`` + ``.img``/``.img.gz``, magic ``ni1``/
``ni2``) and an Analyze 7.5 pair (no magic), each of float32 or float64 scalars. Its header is
read first, so any other file costs one header read. A restored voxel gets the value the reader
would have given it: the file's ``scl_slope``/``scl_inter`` applied as ITK applies them (so a
negative slope turns a stored +inf into -inf; NaN stays NaN). Only positions the file stores as
non-finite are touched, and only after the reader's array is found to be exactly the stored
voxels, scaled, with those positions at the scaled 0: anything else (a header this module does
not follow, a layout read otherwise) gives "not known", and the array stays as read.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Optional

import numpy as np

from .nifti_header import HEADER_BYTES, NiftiHeader, parse_nifti_header

_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI/Analyze datatype codes: FLOAT32, FLOAT64
_DOUBLE_EPSILON = float(np.finfo(np.float64).eps)  # ITK's threshold for "no slope"


def _open(path: Path):
    with open(path, "rb") as handle:
        compressed = handle.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if compressed else open(path, "rb")


def _one_sibling(stem: Path, extension: str) -> Optional[Path]:
    """The one existing file ``stem`` + ``extension`` (any case, optionally gzipped), else None:
    with two candidates (``a.img`` and ``a.img.gz``) it is not known which the reader took."""
    found: list[Path] = []
    for ext in {extension.lower(), extension.upper()}:
        for gz in ("", ".gz", ".GZ"):
            candidate = stem.with_name(stem.name + ext + gz)
            if candidate.is_file() and not any(_same_file(candidate, f) for f in found):
                found.append(candidate)
    return found[0] if len(found) == 1 else None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def _header_file(path: Path) -> Optional[tuple[Path, Optional[Path]]]:
    """(header file, stem of a pair's files or None for a single file) for ``path``, else None."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return path, None
    for ext in (".hdr", ".img"):
        for full in (ext, ext + ".gz"):
            if name.endswith(full):
                stem = path.with_name(path.name[: len(path.name) - len(full)])
                header = path if ext == ".hdr" else _one_sibling(stem, ".hdr")
                return None if header is None else (header, stem)
    return None


def _read_stored(path: Path, shape: tuple[int, ...]) -> Optional[tuple[NiftiHeader, np.ndarray]]:
    located = _header_file(path)
    if located is None:
        return None
    header_file, pair_stem = located
    try:
        with _open(header_file) as stream:
            fields = parse_nifti_header(stream.read(HEADER_BYTES))
        if fields is None or fields.paired != (pair_stem is not None):
            return None  # e.g. a .nii holding a pair's header: the reader looks elsewhere
        if fields.datatype not in _FLOAT_TYPES or not 3 <= fields.dims[0] <= 7:
            return None
        # a single file's voxels follow its header (the reader moves a smaller offset)
        minimum_offset = 0 if fields.paired else (544 if fields.nifti2 else 352)
        if fields.vox_offset < minimum_offset:
            return None
        sizes = [max(int(d), 1) for d in fields.dims[1: fields.dims[0] + 1]]
        if any(size != 1 for size in sizes[3:]) or tuple(reversed(sizes[:3])) != tuple(shape):
            return None  # a vector or 4D image: SimpleITK's array is laid out otherwise
        voxel_file = header_file if pair_stem is None else _one_sibling(pair_stem, ".img")
        if voxel_file is None:
            return None
        dtype = np.dtype(fields.endian + _FLOAT_TYPES[fields.datatype])
        count = int(np.prod(sizes[:3]))
        with _open(voxel_file) as stream:
            stream.seek(fields.vox_offset)
            data = stream.read(count * dtype.itemsize)
    except (OSError, EOFError, ValueError, struct.error):
        return None  # the reader before this one reports unreadable files
    if len(data) < count * dtype.itemsize:
        return None
    # the file's order is i fastest, then j, then k: SimpleITK's (k, j, i) array in C order
    return fields, np.frombuffer(data, dtype=dtype, count=count).reshape(shape)


def _reader_scaling(fields: NiftiHeader) -> Optional[tuple[float, float]]:
    """(slope, intercept) ITK's reader applies, or None when it applies none.

    niftilib turns a non-finite slope or intercept into 0, and ITK takes a slope within double
    epsilon of 0 as 1 (the NIfTI standard would scale nothing; only the reader's rule keeps a
    restored voxel consistent with the finite ones it returned). Analyze 7.5 is never scaled."""
    if fields.analyze:
        return None
    slope = float(fields.slope) if np.isfinite(fields.slope) else 0.0
    inter = float(fields.inter) if np.isfinite(fields.inter) else 0.0
    if abs(slope) < _DOUBLE_EPSILON:
        slope = 1.0
    if abs(slope - 1.0) <= _DOUBLE_EPSILON and abs(inter) <= _DOUBLE_EPSILON:
        return None
    return slope, inter


def _as_read(voxels: np.ndarray, bad: np.ndarray, scaling, dtype: np.dtype) -> np.ndarray:
    """What ITK's reader gives for ``voxels``: non-finite ones as 0, then scaled (in double)."""
    zeroed = np.where(bad, 0, voxels)
    if scaling is None:
        return zeroed.astype(dtype, copy=False)
    slope, inter = scaling
    return (zeroed.astype(np.float64) * slope + inter).astype(dtype)


def restore_nonfinite(path: str | Path, array: np.ndarray) -> np.ndarray:
    """``array`` as read from ``path``, with the NaN and infinite voxels the file stores put back,
    scaled as the reader scales, where ITK's reader wrote 0 (a copy then; else ``array`` itself)."""
    if not np.issubdtype(array.dtype, np.floating):
        return array
    stored = _read_stored(Path(path), array.shape)
    if stored is None:
        return array
    fields, voxels = stored
    bad = ~np.isfinite(voxels)
    if not bad.any():
        return array
    scaling = _reader_scaling(fields)
    # One slice at a time, so that checking a large volume needs no second full-size copy.
    for k in range(array.shape[0]):
        if not np.array_equal(_as_read(voxels[k], bad[k], scaling, array.dtype), array[k]):
            return array  # the reader read this file otherwise than modelled here: not known
    restored = np.array(array, copy=True)
    values = voxels[bad].astype(np.float64)
    if scaling is not None:
        values = values * scaling[0] + scaling[1]
    restored[bad] = values.astype(array.dtype)
    return restored
