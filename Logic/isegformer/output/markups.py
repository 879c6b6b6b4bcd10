"""Clicks as Slicer markups JSON (``.mrk.json``): a point list Slicer loads as its own, and back.

**Which points are negative.** For each control point, in this order:

1. its ``description``, whose first word ``"positive"`` / ``"pos"`` / ``"+"`` makes it positive,
   ``"negative"`` / ``"neg"`` / ``"-"`` negative (case-insensitive). This package writes one of
   the two full words on every point, and Slicer keeps a point's description when it loads and
   saves the list again, so the signs survive renaming the file or the list;
2. otherwise (a point placed in Slicer has an empty description) the point list's name: a list
   whose name has a word starting with ``neg``
   (``negative``, ``Neg-clicks``, ``clicks_negative``) holds negative clicks. Slicer does not write
   the list's name into the file; when it is missing, the file's name stands for it (``F_neg.mrk.json``),
   which is also the name Slicer gives the list when it loads the file;
3. otherwise the point is positive.

Only ``Fiducial`` lists are read (other markup types are skipped), and only points whose
``positionStatus`` is ``defined``. Positions may be in ``LPS`` (Slicer's default when writing)
or ``RAS``; they come back in RAS. Points written by this package also carry an ``isegformer``
object (segment name and slice axis); Slicer ignores it, and drops it if it saves the list again.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import FileFormatError, InvalidInputError
from ..json_io import read_json_bounded
from ..arguments import name as segment_name
from .atomic import atomic_write

log = logging.getLogger(__name__)

#: The schema ID Slicer writes (its value, not a reachable URL; see vtkMRMLMarkupsJsonStorageNode).
MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
    "Resources/Schema/markups-schema-v1.0.3.json#"
)
# What Slicer accepts when reading: any 1.x.y markups schema.
_ACCEPTED_SCHEMA = re.compile(r".*markups-schema-v1\.[0-9]+\.[0-9]+\.json#*$", re.IGNORECASE)

_POSITIVE_WORDS = {"positive", "pos", "+"}
_NEGATIVE_WORDS = {"negative", "neg", "-"}


@dataclass(frozen=True)
class ClickPoint:
    """A click as a markups file holds it: an RAS position, its sign, and optional context.

    ``segment`` (a segment name) and ``axis`` (0 = k, 1 = j, 2 = i) are None when the file does
    not say (files made in Slicer); the reader of the clicks then picks its defaults.
    """

    position_ras: tuple[float, float, float]
    positive: bool = True
    segment: str | None = None
    axis: int | None = None
    label: str = ""


def write_clicks(
    path: str | os.PathLike,
    clicks: Sequence[ClickPoint],
    *,
    name: str = "iSegFormer clicks",
    coordinate_system: str = "LPS",
) -> Path:
    """Write ``clicks`` as one Slicer point list, in order. Written atomically; returns the path."""
    if not isinstance(coordinate_system, str) or coordinate_system.upper() not in ("LPS", "RAS"):
        raise InvalidInputError(
            f"coordinate_system must be 'LPS' or 'RAS', got {coordinate_system!r}."
        )
    coordinate_system = coordinate_system.upper()
    flip = np.array([-1.0, -1.0, 1.0]) if coordinate_system == "LPS" else np.ones(3)
    # The identity orientation in RAS, expressed as Slicer does in the chosen system.
    orientation = [float(v) for v in np.diag(np.append(flip, 1.0))[:3, :3].ravel()]
    points = []
    for number, click in enumerate(clicks, start=1):
        position = np.asarray(click.position_ras, dtype=np.float64)
        if position.shape != (3,) or not np.all(np.isfinite(position)):
            raise InvalidInputError(
                f"Click {number} has position {click.position_ras!r}; it needs 3 finite numbers."
            )
        point: dict[str, Any] = {
            "id": str(number),
            "label": click.label or f"{'pos' if click.positive else 'neg'}-{number}",
            "description": "positive" if click.positive else "negative",
            "associatedNodeID": "",
            "position": [_plain(v) for v in position * flip],
            "orientation": [_plain(v) for v in orientation],
            "selected": True,
            "locked": False,
            "visibility": True,
            "positionStatus": "defined",
        }
        extra = {}
        if click.segment is not None:
            extra["segment"] = str(click.segment)
        if click.axis is not None:
            extra["axis"] = int(click.axis)
        if extra:
            point["isegformer"] = extra
        points.append(point)
    document = {
        "@schema": MARKUPS_SCHEMA,
        "markups": [
            {
                "type": "Fiducial",
                "name": name,
                "coordinateSystem": coordinate_system,
                "coordinateUnits": "mm",
                "locked": False,
                "fixedNumberOfControlPoints": False,
                "labelFormat": "%N-%d",
                "lastUsedControlPointNumber": len(points),
                "controlPoints": points,
                "measurements": [],
            }
        ],
    }
    text = json.dumps(document, indent=4) + "\n"
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    log.info("Wrote %d click(s) to %s", len(points), path)
    return Path(path)


def read_clicks(path: str | os.PathLike) -> list[ClickPoint]:
    """Read the clicks of every point list in a ``.mrk.json`` file, in file order.

    Raises FileFormatError when the file is not Slicer markups JSON.
    """
    path = Path(path)
    try:
        # Bounded: a hostile file (100,000 nested lists, 1 GB) is refused, not a RecursionError.
        document = read_json_bounded(path, "its text", error=FileFormatError)
    except FileNotFoundError:
        raise FileFormatError(f"Cannot read the clicks file {path}: no such file.") from None
    except FileFormatError as err:
        raise _not_markups(path, str(err).rstrip(".")) from None
    if not isinstance(document, dict):
        raise _not_markups(path, "its top level is not a JSON object")
    schema = document.get("@schema")
    if not isinstance(schema, str) or not _ACCEPTED_SCHEMA.match(schema):
        raise _not_markups(path, f"its '@schema' is {schema!r}, not a Slicer markups schema")
    markups = document.get("markups")
    if not isinstance(markups, list):
        raise _not_markups(path, "it has no 'markups' list")

    clicks: list[ClickPoint] = []
    fiducial_lists = 0
    for number, markup in enumerate(markups):
        if not isinstance(markup, dict):
            raise _not_markups(path, f"markup {number} is not a JSON object")
        if markup.get("type") != "Fiducial":
            log.warning("%s: skipping markup %d of type %r (only point lists hold clicks)",
                        path, number, markup.get("type"))
            continue
        fiducial_lists += 1
        clicks.extend(_read_point_list(markup, path, default_name=_stem(path)))
    if fiducial_lists == 0:
        raise FileFormatError(
            f"{path} holds no point list (markups of type 'Fiducial'): place the clicks with "
            "Slicer's point list tool and save them as .mrk.json."
        )
    return clicks


def is_negative_name(name: str) -> bool:
    """Whether a point list's name marks negative clicks (a word starting with ``neg``)."""
    return any(word.startswith("neg") for word in re.findall(r"[a-z]+", name.lower()))


def _read_point_list(markup: dict, path: Path, default_name: str) -> Iterable[ClickPoint]:
    system = str(markup.get("coordinateSystem", "LPS")).upper()
    if system not in ("LPS", "RAS"):
        raise FileFormatError(f"{path}: coordinateSystem {system!r} is neither 'LPS' nor 'RAS'.")
    units = markup.get("coordinateUnits", "mm")
    if isinstance(units, list) and units:
        units = units[0]
    if units not in ("mm", "", None):
        raise FileFormatError(
            f"{path}: the points are in {units!r}; only millimetres are supported. Save the "
            "points from a scene whose length unit is mm."
        )
    flip = np.array([-1.0, -1.0, 1.0]) if system == "LPS" else np.ones(3)
    name = markup.get("name")
    list_is_negative = is_negative_name(name if isinstance(name, str) and name else default_name)
    points = markup.get("controlPoints", [])
    if not isinstance(points, list):
        raise FileFormatError(f"{path}: 'controlPoints' must be a list.")
    for number, point in enumerate(points, start=1):
        if not isinstance(point, dict):
            raise FileFormatError(f"{path}: control point {number} is not a JSON object.")
        if point.get("positionStatus", "defined") != "defined":
            log.info("%s: skipping control point %d (position %s)", path, number,
                     point.get("positionStatus"))
            continue
        try:
            raw = point["position"]
            # JSON numbers only: np.asarray would also take "1.5" or true as a coordinate
            if not isinstance(raw, list) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw):
                raise ValueError
            position = np.asarray(raw, dtype=np.float64) * flip
            if position.shape != (3,) or not np.all(np.isfinite(position)):
                raise ValueError
        except (KeyError, TypeError, ValueError, OverflowError):  # a 400-digit integer too
            raise FileFormatError(
                f"{path}: control point {number} has no valid 'position' (3 numbers)."
            ) from None
        positive = _sign_from_description(point.get("description"))
        if positive is None:
            positive = not list_is_negative
        extra = point.get("isegformer") if isinstance(point.get("isegformer"), dict) else {}
        axis = extra.get("axis")
        # an integer only: 1.0 == 1 would pass "in (0, 1, 2)" and fail later, in mid-replay
        if axis is not None and (type(axis) is not int or axis not in (0, 1, 2)):
            raise FileFormatError(f"{path}: control point {number} has axis {axis!r}; use 0, 1 or 2.")
        segment = extra.get("segment")
        if segment is not None:
            try:  # the Session's own rule for names, here where the file and point can be named
                segment_name(segment)
            except InvalidInputError as err:
                raise FileFormatError(
                    f"{path}: control point {number} names the segment {segment!r}, which cannot "
                    f"be a segment name: {err}") from None
        yield ClickPoint(
            position_ras=tuple(float(v) for v in position),  # type: ignore[arg-type]
            positive=positive,
            segment=str(segment) if segment is not None else None,
            axis=axis,
            label=str(point.get("label", "")),
        )


def _sign_from_description(description: Any) -> bool | None:
    """The sign a point's description names by its first word ("negative", "Pos: edge"), or None."""
    if not isinstance(description, str):
        return None
    words = description.strip().lower().replace(":", " ").replace(",", " ").split()
    if not words:
        return None
    if words[0] in _POSITIVE_WORDS:
        return True
    if words[0] in _NEGATIVE_WORDS:
        return False
    return None


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".mrk.json", ".json"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _not_markups(path: Path, why: str) -> FileFormatError:
    return FileFormatError(
        f"{path} is not a Slicer markups file: {why}. Save the clicks from Slicer as a point "
        "list in Markups JSON (.mrk.json)."
    )


def _plain(value: float) -> float:
    value = float(value)
    return 0.0 if value == 0.0 else value  # no "-0.0" in the file
