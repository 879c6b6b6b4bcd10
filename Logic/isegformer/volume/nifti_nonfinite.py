"""Where a NIfTI file stores NaN or infinite voxels, which ITK's reader turns into 0 unannounced.

ITK's NIfTI reader (niftilib) replaces every non-finite float voxel with 0 while it reads, without
an error or a warning, so the array SimpleITK hands over cannot tell a NaN from a true 0. The
package's one volume reader (:func:`isegformer.volume.read_volume`) puts them back from the
stored voxels, so that a NIfTI is seen as stored, exactly as an NRRD or MetaImage is (those
readers keep NaN), and each consumer applies its own rule (a Session refuses a volume with NaN,
the evaluation names the slice). Only a single-file NIfTI-1/-2 (``.nii``, ``.nii.gz``) of float32
or float64 scalars can hold them; its header is read first, so any other file costs one header
read. A header this module does not follow gives "not known", and the array stays as read.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Optional

import numpy as np

_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes: FLOAT32, FLOAT64


def _header_fields(header: bytes) -> Optional[tuple[str, list[int], int, int]]:
    """(byte order, dims, datatype, vox_offset) of a single-file NIfTI-1/-2 header, else None."""
    for endian in "<>":
        if len(header) >= 352 and struct.unpack(endian + "i", header[:4])[0] == 348:
            if header[344:348] != b"n+1\x00":
                return None
            dims = list(struct.unpack(endian + "8h", header[40:56]))
            datatype = struct.unpack(endian + "h", header[70:72])[0]
            vox_offset = struct.unpack(endian + "f", header[108:112])[0]
            return endian, dims, datatype, int(vox_offset)
        if len(header) >= 544 and struct.unpack(endian + "i", header[:4])[0] == 540:
            if header[4:8] != b"n+2\x00":
                return None
            datatype = struct.unpack(endian + "h", header[12:14])[0]
            dims = list(struct.unpack(endian + "8q", header[16:80]))
            vox_offset = struct.unpack(endian + "q", header[168:176])[0]
            return endian, dims, datatype, int(vox_offset)
    return None


def _open(path: Path):
    with open(path, "rb") as handle:
        compressed = handle.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if compressed else open(path, "rb")


def stored_float_voxels(path: str | Path, shape: tuple[int, ...]) -> Optional[np.ndarray]:
    """The (k, j, i) float voxels ``path`` stores, for an array of ``shape``; ``None`` when the
    file is not a float NIfTI this module reads, or its layout does not match ``shape`` (then
    nothing is claimed). A float file is read once more; any other costs a header read."""
    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return None
    try:
        with _open(path) as stream:
            fields = _header_fields(stream.read(544))
            if fields is None:
                return None
            endian, dims, datatype, vox_offset = fields
            if datatype not in _FLOAT_TYPES or not 3 <= dims[0] <= 7 or vox_offset < 0:
                return None
            sizes = [max(int(d), 1) for d in dims[1: dims[0] + 1]]
            if any(size != 1 for size in sizes[3:]) or tuple(reversed(sizes[:3])) != tuple(shape):
                return None  # a vector or 4D image: SimpleITK's array is laid out otherwise
            dtype = np.dtype(endian + _FLOAT_TYPES[datatype])
            count = int(np.prod(sizes[:3]))
            stream.seek(vox_offset)
            data = stream.read(count * dtype.itemsize)
    except (OSError, EOFError, ValueError):
        return None  # the reader before this one reports unreadable files
    if len(data) < count * dtype.itemsize:
        return None
    # the file's order is i fastest, then j, then k: SimpleITK's (k, j, i) array in C order
    return np.frombuffer(data, dtype=dtype, count=count).reshape(shape)


def stored_nonfinite(path: str | Path, shape: tuple[int, ...]) -> Optional[np.ndarray]:
    """A bool (k, j, i) mask of the voxels ``path`` stores as NaN/inf (``None``: not known)."""
    voxels = stored_float_voxels(path, shape)
    return None if voxels is None else ~np.isfinite(voxels)


def restore_nonfinite(path: str | Path, array: np.ndarray) -> np.ndarray:
    """``array`` as read from ``path``, with the NaN and infinite voxels the file stores put back
    where ITK's reader wrote 0 (a copy then; else ``array`` itself)."""
    if not np.issubdtype(array.dtype, np.floating):
        return array
    voxels = stored_float_voxels(path, array.shape)
    if voxels is None:
        return array
    bad = ~np.isfinite(voxels)
    if not bad.any():
        return array
    restored = np.array(array, copy=True)
    restored[bad] = voxels[bad]
    return restored
