"""Reading a NRRD file's header and voxels with every field validated and every size bounded.

The ``.seg.nrrd`` reader reads files made elsewhere (mailed, downloaded, hand-edited), so
nothing in them is trusted:

- every header field the reader uses goes through one parser (:func:`parse_header`), which
  raises :class:`~isegformer.errors.FileFormatError` naming the field and what it should hold
  (``dimension: three`` or ``sizes: a b c`` included);
- the voxel payload is bounded by what the header declares: gzip data is inflated only up to the
  declared size (a small file that inflates to gigabytes is refused after the declared size,
  never inflated in full), and a declared size above :data:`MAX_VOXEL_BYTES` is refused before
  anything is allocated.

Format reference: the NRRD specification (teem.sourceforge.net/nrrd/format.html).
"""
from __future__ import annotations

import logging
import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import FileFormatError
from ..volume.geometry import LPS_TO_RAS

log = logging.getLogger(__name__)

#: Longer than any segmentation header (Slicer writes about 1 KB per segment).
MAX_HEADER_BYTES = 16 * 1024 * 1024
#: The largest voxel payload a header may declare: 8 GiB (a 512x512x1000 volume with 30
#: uint8 layers). Anything larger is refused before reading.
MAX_VOXEL_BYTES = 8 * 1024**3
#: The read block when inflating (bounds the transient memory besides the output).
_INFLATE_CHUNK = 1 << 20

_TYPES: dict[str, np.dtype] = {}
for _names, _dtype in (
    (("uchar", "unsigned char", "uint8", "uint8_t"), np.uint8),
    (("signed char", "int8", "int8_t"), np.int8),
    (("short", "short int", "signed short", "signed short int", "int16", "int16_t"), np.int16),
    (("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), np.uint16),
    (("int", "signed int", "int32", "int32_t"), np.int32),
    (("uint", "unsigned int", "uint32", "uint32_t"), np.uint32),
    (("longlong", "long long", "long long int", "signed long long", "signed long long int",
      "int64", "int64_t"), np.int64),
    (("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"), np.uint64),
):
    for _name in _names:
        _TYPES[_name] = np.dtype(_dtype)

_SPACES = {
    "left-posterior-superior": LPS_TO_RAS, "lps": LPS_TO_RAS,
    "right-anterior-superior": np.eye(4), "ras": np.eye(4),
}
# Fields that change how the voxels are laid out and that this reader does not implement.
_UNSUPPORTED = {"data file", "datafile", "line skip", "lineskip", "byte skip", "byteskip"}


@dataclass
class NrrdHeader:
    """A validated NRRD header: sizes fastest axis first, as in the file."""

    dimension: int
    sizes: tuple[int, ...]
    dtype: np.dtype
    encoding: str  # "raw" or "gzip"
    kinds: tuple[str, ...]
    space_to_ras: np.ndarray
    #: one 3-vector per axis, None for a non-spatial axis ("none" in the file)
    directions: tuple[Optional[tuple[float, float, float]], ...]
    origin: tuple[float, float, float]
    keyvalues: dict[str, str] = field(default_factory=dict)

    @property
    def voxel_bytes(self) -> int:
        return math.prod(self.sizes) * self.dtype.itemsize

    def ijk_to_ras(self) -> np.ndarray:
        """The 4x4 IJK-to-RAS matrix of the spatial axes (i, j, k in file order)."""
        spatial = [d for d in self.directions if d is not None]
        matrix = np.eye(4)
        for axis, vector in enumerate(spatial):
            matrix[:3, axis] = vector
        matrix[:3, 3] = self.origin
        return self.space_to_ras @ matrix


def read_nrrd(path: Path) -> tuple[NrrdHeader, np.ndarray]:
    """Header and voxels of a single-file NRRD; voxels shaped with the fastest axis last (C order)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as err:
        raise FileFormatError(f"Cannot read {path}: {err.strerror or err}.") from err
    text, body = _split_header(raw, path)
    header = parse_header(text, path)
    data = _voxel_bytes(header, body, path)
    voxels = np.frombuffer(data, dtype=header.dtype).reshape(header.sizes[::-1])
    return header, voxels


def _split_header(raw: bytes, path: Path) -> tuple[str, memoryview]:
    if not raw.startswith(b"NRRD000"):
        raise FileFormatError(
            f"{path} is not a NRRD file (it does not start with 'NRRD000'). Export the "
            "segmentation from Slicer as .seg.nrrd."
        )
    window = raw[: MAX_HEADER_BYTES + 4]
    ends = [(window.find(sep), len(sep)) for sep in (b"\n\n", b"\r\n\r\n")]
    ends = [(at, size) for at, size in ends if at >= 0]
    if not ends:
        raise FileFormatError(
            f"{path}: the NRRD header never ends (no blank line before the voxel data within "
            f"{MAX_HEADER_BYTES} bytes)."
        )
    at, size = min(ends)
    try:
        text = raw[:at].decode("utf-8")
    except UnicodeDecodeError:
        # Older writers used Latin-1 for segment names; every byte is a Latin-1 character.
        log.warning("%s: the NRRD header is not UTF-8; reading it as Latin-1.", path)
        text = raw[:at].decode("latin-1")
    return text, memoryview(raw)[at + size:]


def parse_header(text: str, path: Path) -> NrrdHeader:
    """The one parser of NRRD header fields; raises FileFormatError naming the bad field."""
    fields: dict[str, str] = {}
    keyvalues: dict[str, str] = {}
    # Only "\n" ends a NRRD header line (a trailing "\r" is stripped below); str.splitlines
    # would also split inside a value at \x1c-\x1e, \x85, U+2028 or U+2029.
    for number, line in enumerate(text.split("\n")[1:], start=2):
        line = line.rstrip("\r")
        if not line or line.startswith("#"):
            continue
        if ":=" in line:
            key, value = line.split(":=", 1)
            if key in keyvalues:
                raise FileFormatError(f"{path}: the header field {key!r} appears twice.")
            keyvalues[key] = _unescape(value)
        elif ": " in line:
            key, value = line.split(": ", 1)
            key = key.strip().lower()
            if key in fields:
                raise FileFormatError(f"{path}: the header field {key!r} appears twice.")
            fields[key] = value.strip()
        else:
            raise FileFormatError(f"{path}: cannot parse NRRD header line {number}: {line[:80]!r}.")

    for key in _UNSUPPORTED & fields.keys():
        raise FileFormatError(
            f"{path} uses the NRRD field {key!r} (a detached or offset voxel block), which is not "
            "supported; save the segmentation from Slicer as a single .seg.nrrd file."
        )
    dimension = _integer(_required(fields, "dimension", path), "dimension", path)
    if dimension not in (3, 4):
        raise FileFormatError(
            f"{path} is a {dimension}D NRRD; a segmentation is 3D (one layer) or 4D (layers)."
        )
    sizes = _integers(_required(fields, "sizes", path), "sizes", path)
    if len(sizes) != dimension or min(sizes) < 1:
        raise FileFormatError(
            f"{path}: 'sizes: {fields['sizes']}' must give {dimension} positive whole numbers "
            f"(one per axis of the {dimension}D file)."
        )
    type_name = _required(fields, "type", path)
    if type_name not in _TYPES:
        raise FileFormatError(f"{path} has voxel type {type_name!r}, which is not an integer label type.")
    dtype = _TYPES[type_name]
    if dtype.itemsize > 1:
        endian = fields.get("endian", "little")
        if endian not in ("little", "big"):
            raise FileFormatError(f"{path}: 'endian: {endian}' must be 'little' or 'big'.")
        dtype = dtype.newbyteorder("<" if endian == "little" else ">")
    encoding = _required(fields, "encoding", path)
    if encoding in ("gzip", "gz"):
        encoding = "gzip"
    elif encoding != "raw":
        raise FileFormatError(
            f"{path} uses NRRD encoding {encoding!r}; only raw and gzip are supported (Slicer "
            "writes gzip)."
        )
    kinds = tuple(fields.get("kinds", "").split())
    if kinds and len(kinds) != dimension:
        raise FileFormatError(f"{path}: 'kinds' gives {len(kinds)} entries for {dimension} axes.")
    space = fields.get("space", "").lower()
    if space not in _SPACES:
        raise FileFormatError(
            f"{path} has space {space or 'none'!r}; a segmentation needs left-posterior-superior "
            "or right-anterior-superior geometry."
        )
    directions = _directions(_required(fields, "space directions", path), dimension, path)
    origin = _vector(fields.get("space origin", "(0,0,0)"), "space origin", path)
    header = NrrdHeader(dimension, tuple(sizes), dtype, encoding, kinds, _SPACES[space],
                        directions, origin, keyvalues)
    if header.voxel_bytes > MAX_VOXEL_BYTES:
        raise FileFormatError(
            f"{path} declares {header.voxel_bytes} bytes of voxels (sizes {sizes}), more than the "
            f"{MAX_VOXEL_BYTES} this reader accepts."
        )
    return header


def _voxel_bytes(header: NrrdHeader, body: memoryview, path: Path):
    expected = header.voxel_bytes
    if header.encoding == "raw":
        data = body
    else:
        data = _inflate(body, expected, path)
    if len(data) < expected:
        raise FileFormatError(
            f"{path} is truncated: {len(data)} bytes of voxel data for the {expected} its header "
            f"declares (sizes {list(header.sizes)})."
        )
    if len(data) > expected:
        raise FileFormatError(
            f"{path} holds more voxel data than its header declares ({expected} bytes for sizes "
            f"{list(header.sizes)}): the file is corrupt or was edited."
        )
    return data


def _inflate(body, expected: int, path: Path) -> bytearray:
    """gzip (or zlib) data inflated to at most ``expected`` + 1 bytes, whatever it holds.

    The input is fed in blocks and the output grows only as data really inflates, so neither a
    header declaring a huge size over a tiny body nor a tiny body inflating to gigabytes makes
    the reader allocate more than the data present and the size declared allow.
    """
    out = bytearray()
    limit = expected + 1
    source = memoryview(body)
    position = 0
    pending = b""
    inflater = zlib.decompressobj(wbits=47)  # gzip or zlib stream
    try:
        while len(out) < limit:
            if not pending:
                if position >= len(source):
                    break
                pending = source[position: position + _INFLATE_CHUNK]
                position += len(pending)
            out += inflater.decompress(pending, limit - len(out))
            pending = inflater.unconsumed_tail
            if inflater.eof:  # a further gzip member may follow (concatenated gzip)
                pending = inflater.unused_data
                if not pending and position >= len(source):
                    break
                inflater = zlib.decompressobj(wbits=47)
    except zlib.error as err:
        raise FileFormatError(f"{path}: the compressed voxel data is corrupt ({err}).") from err
    return out


def _required(fields: dict[str, str], key: str, path: Path) -> str:
    value = fields.get(key)
    if value is None or value == "":
        raise FileFormatError(f"{path}: the NRRD header has no '{key}' field; it is not a valid NRRD.")
    return value


def _integer(text: str, key: str, path: Path) -> int:
    if not re.fullmatch(r"[0-9]{1,9}", text.strip()):
        raise FileFormatError(f"{path}: '{key}: {text[:40]}' must be a whole number.")
    return int(text)


def _integers(text: str, key: str, path: Path) -> list[int]:
    return [_integer(part, key, path) for part in text.split()]


_NUMBER = r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"


def _vector(text: str, key: str, path: Path) -> tuple[float, float, float]:
    match = re.fullmatch(rf"\(\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\)", text.strip())
    if not match:
        raise FileFormatError(f"{path}: '{key}: {text[:80]}' must be a vector of 3 numbers, (x,y,z).")
    values = tuple(float(v) for v in match.groups())
    if not all(math.isfinite(v) for v in values):
        raise FileFormatError(f"{path}: '{key}: {text[:80]}' holds a number out of range.")
    return values  # type: ignore[return-value]


def _directions(text: str, dimension: int, path: Path):
    parts = re.findall(r"\([^)]*\)|none", text)
    if len(parts) != dimension or "".join(parts).replace(" ", "") != re.sub(r"\s", "", text):
        raise FileFormatError(
            f"{path}: 'space directions: {text[:120]}' must give one (x,y,z) vector or 'none' per "
            f"axis ({dimension})."
        )
    directions = [None if part == "none" else _vector(part, "space directions", path) for part in parts]
    spatial = [d for d in directions if d is not None]
    if len(spatial) != 3 or (dimension == 4 and directions[0] is not None):
        raise FileFormatError(
            f"{path}: 'space directions: {text[:120]}' must give 3 spatial vectors (and 'none' "
            "first for the layer axis of a 4D segmentation)."
        )
    if abs(float(np.linalg.det(np.array(spatial)))) < 1e-12:
        raise FileFormatError(f"{path}: 'space directions' are degenerate (zero spacing or parallel axes).")
    return tuple(directions)


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)
