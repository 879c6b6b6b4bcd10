"""The fields of a NIfTI-1/-2 or Analyze 7.5 header that this package reads itself.

Two readers look at a NIfTI file before or after SimpleITK does: the truncation check (does the
file hold the voxel bytes its header declares?) and the restoring of the NaN that ITK's NIfTI
reader writes as 0. Both take the header from :func:`parse_nifti_header`, so that they agree on
what a NIfTI is.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Optional

#: Bytes to read for any of the headers (NIfTI-2 is 540, plus its 4-byte extension flag).
HEADER_BYTES = 544


@dataclass(frozen=True)
class NiftiHeader:
    endian: str
    dims: list[int]
    datatype: int
    bitpix: int
    vox_offset: int
    slope: float
    inter: float
    paired: bool  # voxels in a separate .img file
    nifti2: bool
    analyze: bool  # Analyze 7.5: no magic, and ITK applies no scaling


def is_nifti_magic(magic: bytes) -> bool:
    """niftilib's test for a NIfTI magic of any version (anything else in a 348-byte header is
    Analyze 7.5 to it)."""
    return len(magic) == 4 and magic[:1] == b"n" and magic[1:2] in (b"+", b"i") \
        and magic[2:3].isdigit() and magic[3:] == b"\x00"


def parse_nifti_header(header: bytes) -> Optional[NiftiHeader]:
    """The fields of a NIfTI-1/-2 or Analyze 7.5 header (either byte order), else None."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            magic = header[344:348]
            if magic in (b"n+1\x00", b"ni1\x00"):
                analyze = False
            elif is_nifti_magic(magic):
                return None  # another NIfTI version in a NIfTI-1 sized header
            else:
                analyze = True
            dims = list(struct.unpack(endian + "8h", header[40:56]))
            datatype, bitpix = struct.unpack(endian + "2h", header[70:74])
            vox_offset, slope, inter = struct.unpack(endian + "3f", header[108:120])
            if not math.isfinite(vox_offset):
                return None
            return NiftiHeader(endian, dims, datatype, bitpix, int(vox_offset), slope, inter,
                               paired=magic != b"n+1\x00", nifti2=False, analyze=analyze)
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            magic = header[4:8]
            if magic not in (b"n+2\x00", b"ni2\x00"):
                return None
            datatype, bitpix = struct.unpack(endian + "2h", header[12:16])
            dims = list(struct.unpack(endian + "8q", header[16:80]))
            vox_offset = struct.unpack(endian + "q", header[168:176])[0]
            slope, inter = struct.unpack(endian + "2d", header[176:192])
            return NiftiHeader(endian, dims, datatype, bitpix, int(vox_offset), slope, inter,
                               paired=magic == b"ni2\x00", nifti2=True, analyze=False)
    return None
