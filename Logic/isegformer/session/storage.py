"""Saving and loading a whole session: one ``.npz`` file with a JSON manifest, written atomically.

The manifest (entry ``manifest``, a JSON string) says what the arrays are:

- ``format``: ``"isegformer-session"``; ``version``: :data:`FORMAT_VERSION`, raised whenever the
  layout changes. A file from a newer version is refused with a clear message, never misread;
- the volume: its shape, dtype, IJK-to-RAS matrix, source path and SHA-256 of its voxels, and
  whether the voxels are in the file (entry ``volume``);
- the segments: name, colour, label value, the axis of their propagated result (entry
  ``segN_propagated``, bit-packed), and their annotated slices with clicks (entries ``segN_annM``,
  bit-packed masks).

Only numpy arrays and plain JSON are stored, so loading never unpickles anything.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import __version__
from ..errors import InvalidInputError, SessionFileError
from ..output.atomic import atomic_write
from ..segments.segment import Segment, SliceAnnotation, SliceClick
from ..volume import Volume

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger(__name__)

FORMAT_NAME = "isegformer-session"
FORMAT_VERSION = 1


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
        with np.load(path, allow_pickle=False) as data:
            if "manifest" not in data.files:
                raise SessionFileError(
                    f"{path} is not an isegformer session (no manifest). Open sessions saved with Session.save."
                )
            manifest = _read_manifest(data["manifest"], path)
            arrays = {key: data[key] for key in data.files if key != "manifest"}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise SessionFileError(
            f"{path} cannot be read as an isegformer session ({err}). It may be damaged or of another kind."
        ) from err

    try:
        session_volume = _session_volume(manifest["volume"], arrays, volume, path)
        options.setdefault("axis", int(manifest.get("default_axis", 0)))
        if manifest.get("window") is not None:
            options.setdefault("window", tuple(manifest["window"]))
        session = cls(session_volume, source=manifest["volume"].get("source"), **options)
        for entry in manifest["segments"]:
            session._segments.append(_segment(entry, arrays, session_volume.shape, path))
        current = manifest.get("current_segment")
        session._current = next((s for s in session._segments if s.name == current), None)
        session._order = int(manifest.get("order", 0))
        session._session_file = str(path)
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, InvalidInputError):
            raise SessionFileError(f"{path}: {err}") from err
        raise SessionFileError(f"{path} is damaged: {type(err).__name__} {err}.") from err
    log.info("Loaded a session (%d segments) from %s", len(session._segments), path)
    return session


def _read_manifest(raw: np.ndarray, path: Path) -> dict:
    try:
        manifest = json.loads(str(raw))
    except json.JSONDecodeError as err:
        raise SessionFileError(f"{path}: the session manifest is not valid JSON ({err}).") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise SessionFileError(f"{path} is not an isegformer session file.")
    version = manifest.get("version")
    if not isinstance(version, int):
        raise SessionFileError(f"{path}: the session format version is missing.")
    if version > FORMAT_VERSION:
        raise SessionFileError(
            f"{path} was saved by a newer isegformer (session format {version}, isegformer "
            f"{manifest.get('isegformer_version', '?')}); this is isegformer {__version__}, which "
            f"reads format {FORMAT_VERSION} and older. Update isegformer to open it."
        )
    return manifest


def _session_volume(info: dict, arrays: dict, given: Any, path: Path) -> Volume:
    matrix = np.asarray(info["ijk_to_ras"], dtype=np.float64)
    shape = tuple(int(v) for v in info["shape"])
    if given is not None:
        from .session import Session

        candidate = Session.open(given).volume if not isinstance(given, Volume) else given
        where = "the volume given"
    elif info.get("included") and "volume" in arrays:
        candidate = Volume(arrays["volume"], matrix)
        where = "the volume in the file"
    elif info.get("source") and Path(info["source"]).exists():
        from ..volume import read_volume

        candidate = read_volume(info["source"])
        where = f"the volume at {info['source']}"
    else:
        raise SessionFileError(
            f"{path} was saved without its volume, and the original ({info.get('source')}) is not "
            "there: pass it with Session.load(path, volume=...)."
        )
    if candidate.shape != shape or volume_digest(candidate.array) != info["sha256"]:
        raise SessionFileError(
            f"{where} is not the one this session was made on (shape {candidate.shape}, expected "
            f"{shape}, or other voxel values). Give the original volume."
        )
    if not np.allclose(candidate.ijk_to_ras, matrix, atol=1e-6):
        log.warning("The volume's geometry differs from the saved one; using the saved geometry.")
        candidate = Volume(candidate.array, matrix)
    return candidate


def _segment(entry: dict, arrays: dict, shape: tuple[int, int, int], path: Path) -> Segment:
    segment = Segment(
        name=entry["name"], color=tuple(entry["color"]), label_value=int(entry["label_value"])
    )
    for item in entry["annotations"]:
        mask = _unpack(arrays[item["array"]], tuple(item["shape"]))
        clicks = tuple(SliceClick(float(r), float(c), bool(p)) for r, c, p in item["clicks"])
        segment.set_annotation(int(item["axis"]), int(item["index"]),
                               SliceAnnotation(mask, clicks, int(item["order"])))
    if entry.get("propagated"):
        segment.propagated = _unpack(arrays[entry["propagated"]], shape)
        segment.propagation_axis = entry.get("propagation_axis")
    return segment
