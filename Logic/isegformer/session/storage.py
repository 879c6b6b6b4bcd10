"""Saving and loading a whole session: one ``.npz`` file with a JSON manifest, written atomically.

The manifest (entry ``manifest``, a JSON string) says what the arrays are:

- ``format``: ``"isegformer-session"``; ``version``: :data:`FORMAT_VERSION`, raised whenever the
  layout changes. A file from a newer version is refused with a clear message, never misread;
- the volume: its shape, dtype, IJK-to-RAS matrix, source path and SHA-256 of its voxels, and
  whether the voxels are in the file (entry ``volume``);
- the segments: name, colour, label value, the axis of their propagated result (entry
  ``segN_propagated``, bit-packed) and, optional, its ``propagation_record`` (the method, a
  digest of each annotated slice it was computed from and one of the networks' weights, so that
  a loaded session propagates only what changed since), and their annotated slices with clicks
  (entries ``segN_annM``, bit-packed masks).

Only numpy arrays and plain JSON are stored, so loading never unpickles anything. Loading reads
the manifest through the bounded JSON reader, checks all of it (:mod:`.manifest`), and reads
only the array entries it names, each after its ``.npy`` header matched the shape and dtype
the manifest implies: nothing is allocated that the volume's own size does not justify.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Optional

import numpy as np

from .. import __version__
from ..errors import InvalidInputError, SessionFileError
from ..json_io import loads_bounded
from ..output.atomic import atomic_write
from ..segments.segment import Segment, SliceAnnotation, SliceClick
from ..volume import Volume
from .manifest import FORMAT_NAME, FORMAT_VERSION, ArraySpec, Manifest, SegmentEntry, VolumeEntry, check_manifest

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger(__name__)

#: The manifest is a few kB per segment; 16 M characters is far beyond any real one.
MAX_MANIFEST_CHARS = 16 * 1024 * 1024


def volume_digest(array: np.ndarray) -> str:
    """SHA-256 of the voxels (C order) with their shape and dtype, to recognise the volume."""
    digest = hashlib.sha256()
    digest.update(f"{array.shape}|{array.dtype.str}|".encode())
    digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def _pack(mask: np.ndarray) -> np.ndarray:
    return np.packbits(np.asarray(mask, bool).reshape(-1))


def _unpack(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    count = int(np.prod(shape))
    return np.unpackbits(packed, count=count).astype(bool).reshape(shape)


def save_session(session: "Session", path: str | os.PathLike, include_volume: bool) -> Path:
    volume = session.volume
    arrays: dict[str, np.ndarray] = {"ijk_to_ras": volume.ijk_to_ras}
    if include_volume:
        arrays["volume"] = volume.array
    segments = []
    for n, segment in enumerate(session.segments):
        annotations = []
        for m, (axis, index, annotation) in enumerate(segment.iter_annotations()):
            key = f"seg{n}_ann{m}"
            arrays[key] = _pack(annotation.mask)
            annotations.append({
                "axis": axis,
                "index": index,
                "order": annotation.order,
                "array": key,
                "shape": list(annotation.mask.shape),
                "clicks": [[c.row, c.col, c.positive] for c in annotation.clicks],
            })
        entry: dict[str, Any] = {
            "name": segment.name,
            "color": list(segment.color),
            "label_value": segment.label_value,
            "annotations": annotations,
            "propagation_axis": segment.propagation_axis,
            "propagated": None,
        }
        if segment.propagated is not None:
            entry["propagated"] = f"seg{n}_propagated"
            arrays[entry["propagated"]] = _pack(segment.propagated)
            record = segment.propagation_record
            if record is not None:
                entry["propagation_record"] = {
                    "axis": record.axis,
                    "method": record.method,
                    "annotations": [[index, digest] for index, digest in record.digests],
                }
                if record.overlaid:
                    entry["propagation_record"]["overlaid"] = list(record.overlaid)
                if record.networks:
                    entry["propagation_record"]["networks"] = record.networks
        segments.append(entry)
    current = session.current_segment
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "isegformer_version": __version__,
        "volume": {
            "shape": list(volume.shape),
            "dtype": volume.array.dtype.str,
            "ijk_to_ras": volume.ijk_to_ras.tolist(),
            "sha256": volume_digest(volume.array),
            "source": session.source,
            "included": include_volume,
        },
        "default_axis": session.default_axis,
        "window": list(session._window) if session._window is not None else None,
        "segments": segments,
        "current_segment": current.name if current is not None else None,
        "order": session._order,
    }
    arrays["manifest"] = np.array(json.dumps(manifest))
    with atomic_write(path) as tmp:
        _write_npz(tmp, arrays)
    log.info("Saved the session (%d segments) to %s", len(segments), path)
    return Path(path)


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An ``.npz`` that ``np.load`` reads. The masks are deflated; the volume is stored as is:
    deflating a noisy 384x384x160 volume took seconds per save for little gain."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for key, array in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED if key == "volume" else zipfile.ZIP_DEFLATED
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def load_session(cls: type, path: str | os.PathLike, volume: Any, options: dict) -> "Session":
    path = Path(path)
    if not path.is_file():
        raise SessionFileError(f"No session file at {path}.")
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
            manifest = _read_manifest(archive, members, path)
            arrays = {spec.key: _read_entry(archive, members, spec, path) for spec in manifest.array_specs()}
    except (OSError, ValueError, zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as err:
        raise SessionFileError(
            f"{path} cannot be read as an isegformer session ({err}). It may be damaged or of another kind."
        ) from err

    session_volume, source = _session_volume(manifest.volume, arrays, volume, path)
    options.setdefault("axis", manifest.default_axis)
    if manifest.window is not None:
        options.setdefault("window", manifest.window)
    # The manifest's values are checked already: an error here is one of the caller's options.
    session = cls(session_volume, source=source, **options)
    if manifest.volume.source is not None and manifest.volume.source != source:
        # The volume was read elsewhere (a moved folder, a copy): the first one is the user's too.
        session._input_files.append(("the volume this session was first opened from", manifest.volume.source))
    try:
        for entry in manifest.segments:
            session._segments.append(_segment(entry, arrays, session_volume.shape))
    except InvalidInputError as err:
        raise SessionFileError(f"{path}: {err}") from err
    session._current = next((s for s in session._segments if s.name == manifest.current_segment), None)
    session._order = manifest.order
    session._session_file = str(path)
    log.info("Loaded a session (%d segments) from %s", len(session._segments), path)
    return session


def _member(members: dict, key: str, path: Path) -> zipfile.ZipInfo:
    info = members.get(f"{key}.npy")
    if info is None:
        raise SessionFileError(f"{path} is damaged: the entry {key!r} that its manifest names is missing.")
    return info


def _read_manifest(archive: zipfile.ZipFile, members: dict, path: Path) -> Manifest:
    if "manifest.npy" not in members:
        raise SessionFileError(
            f"{path} is not an isegformer session (no manifest). Open sessions saved with Session.save."
        )
    info = members["manifest.npy"]
    # A unicode .npy stores 4 bytes per character, plus its header.
    if info.file_size > 4 * MAX_MANIFEST_CHARS + 4096:
        raise SessionFileError(f"{path}: the session manifest is {info.file_size} bytes, far more than any session's.")
    with archive.open(info) as stream:
        shape, dtype = _npy_header(stream, path, "manifest")
        if shape != () or dtype.kind != "U":
            raise SessionFileError(f"{path}: the session manifest is not a text entry.")
        data = _read_exact(stream, dtype.itemsize, path, "manifest")
    text = np.frombuffer(data, dtype=dtype)[0]
    document = loads_bounded(str(text), f"the manifest of {path}", max_bytes=MAX_MANIFEST_CHARS,
                             error=SessionFileError, advice="The session file is damaged.")
    return check_manifest(document, path)


def _npy_header(stream: BinaryIO, path: Path, key: str) -> tuple[tuple, np.dtype]:
    """(shape, dtype) of a ``.npy`` stream, refusing Fortran order and pickled object arrays."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise SessionFileError(f"{path}: the entry {key!r} has an unknown array format {version}.")
    if fortran or dtype.hasobject:
        raise SessionFileError(f"{path}: the entry {key!r} is not an array this package writes.")
    return tuple(shape), dtype


def _read_exact(stream: BinaryIO, nbytes: int, path: Path, key: str) -> bytearray:
    buffer = bytearray(nbytes)
    view = memoryview(buffer)
    done = 0
    while done < nbytes:
        count = stream.readinto(view[done:])
        if not count:
            raise SessionFileError(f"{path} is truncated: the entry {key!r} ends early.")
        done += count
    if stream.read(1):  # also reaches the end, where the zip checks the entry's CRC
        raise SessionFileError(f"{path}: the entry {key!r} is longer than its header says.")
    return buffer


def _read_entry(archive: zipfile.ZipFile, members: dict, spec: ArraySpec, path: Path) -> np.ndarray:
    info = _member(members, spec.key, path)
    nbytes = int(np.prod(spec.shape, dtype=np.int64)) * spec.dtype.itemsize
    if info.file_size < nbytes:
        raise SessionFileError(f"{path} is truncated: the entry {spec.key!r} is too short.")
    with archive.open(info) as stream:
        shape, dtype = _npy_header(stream, path, spec.key)
        if shape != spec.shape or dtype != spec.dtype:
            raise SessionFileError(
                f"{path} is damaged: the entry {spec.key!r} holds {dtype} {list(shape)}, but its manifest "
                f"implies {spec.dtype} {list(spec.shape)}."
            )
        buffer = _read_exact(stream, nbytes, path, spec.key)
    return np.frombuffer(buffer, dtype=spec.dtype).reshape(spec.shape)


def _session_volume(info: VolumeEntry, arrays: dict, given: Any, path: Path) -> tuple[Volume, Optional[str]]:
    """The session's volume and its source: the file it was read from (``given`` as a path, or
    the manifest's source), else the manifest's source (the file the session was opened from)."""
    from .. import arguments

    source = info.source
    if given is not None:
        from .session import Session

        if isinstance(given, Volume):
            candidate = given
        else:
            opened = Session.open(given)
            candidate = opened.volume
            source = opened.source if opened.source is not None else info.source
        where = "the volume given"
    elif info.included:
        candidate = Volume(arrays["volume"], info.ijk_to_ras)
        where = "the volume in the file"
    elif info.source and (Path(info.source).is_file() or Path(info.source).is_dir()):
        from ..volume import read_volume

        candidate = read_volume(info.source)
        source = str(Path(info.source).expanduser().resolve())
        where = f"the volume at {info.source}"
    else:
        raise SessionFileError(
            f"{path} was saved without its volume, and the original ({info.source}) is not "
            "there: pass it with Session.load(path, volume=...)."
        )
    try:
        # In the type the session stores (and its digest was taken of): a big-endian copy of
        # the volume is the same volume.
        voxels = arguments.voxels(candidate.array)
    except InvalidInputError as err:
        if where == "the volume in the file":
            raise SessionFileError(f"{path} is damaged: {err}") from err
        raise
    if voxels is not candidate.array:
        candidate = Volume(voxels, candidate.ijk_to_ras)
    if candidate.shape != info.shape or volume_digest(candidate.array) != info.sha256:
        raise SessionFileError(
            f"{where} is not the one this session was made on (shape {candidate.shape}, expected "
            f"{info.shape}, or other voxel values). Give the original volume."
        )
    if not np.allclose(candidate.ijk_to_ras, info.ijk_to_ras, atol=1e-6):
        log.warning("The volume's geometry differs from the saved one; using the saved geometry.")
        candidate = Volume(candidate.array, info.ijk_to_ras)
    return candidate, source


def _segment(entry: SegmentEntry, arrays: dict, shape: tuple[int, int, int]) -> Segment:
    segment = Segment(name=entry.name, color=entry.color, label_value=entry.label_value)
    for item in entry.annotations:
        mask = _unpack(arrays[item.packed.key], item.mask_shape)
        clicks = tuple(SliceClick(row, col, positive) for row, col, positive in item.clicks)
        segment.set_annotation(item.axis, item.index, SliceAnnotation(mask, clicks, item.order))
    if entry.propagated is not None:
        segment.propagated = _unpack(arrays[entry.propagated.key], shape)
        segment.propagation_axis = entry.propagation_axis
        segment.propagation_record = entry.propagation_record
    return segment
