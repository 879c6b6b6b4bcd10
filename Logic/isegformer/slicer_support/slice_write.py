"""Writing one slice of a segment the way Slicer's Segment Editor would, on plain arrays.

The Segment Editor has two settings that every edit must honour (its "Masking" section):

- the *editable area* (``MaskMode``, plus an optional source-intensity range): outside it the
  edited segment keeps what it had;
- the *overwrite mode* (``OverwriteMode``): which other segments lose the voxels the edited
  segment now covers.

The rules follow Slicer's own ``vtkMRMLSegmentationNode::GenerateEditMask`` and the "set" mode of
the segment editor logic: inside-modes include the edited segment itself, outside-modes exclude
it; the intensity range is inclusive at both ends and its bounds are first converted to the source
volume's voxel type as ``vtkImageThreshold`` does (on an int16 volume 58.5 becomes 58: truncation
toward zero, clamped to the type's range); other segments are erased only where the edited
segment is set after the edit. The numbers of the enums are Slicer's constants
(``vtkMRMLSegmentationNode.EditAllowed*``, ``vtkMRMLSegmentEditorNode.Overwrite*``).

Only the one slice is read and written: the result is a dict of the slices that changed.
:func:`compose_block` applies the same rules to blocks of any shape (a slab of slices at once).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Mapping, MutableMapping, Optional, Tuple

import numpy as np

from ..errors import InvalidInputError
from .transforms import take_slice


class MaskMode(IntEnum):
    """Where editing is allowed (vtkMRMLSegmentationNode.EditAllowed* values)."""

    EVERYWHERE = 0
    INSIDE_ALL_SEGMENTS = 1
    INSIDE_VISIBLE_SEGMENTS = 2
    OUTSIDE_ALL_SEGMENTS = 3
    OUTSIDE_VISIBLE_SEGMENTS = 4
    INSIDE_SEGMENT = 5


class OverwriteMode(IntEnum):
    """Which other segments lose voxels (vtkMRMLSegmentEditorNode.Overwrite* values)."""

    ALL_SEGMENTS = 0
    VISIBLE_SEGMENTS = 1
    NONE = 2  # "allow overlap"


@dataclass(frozen=True)
class EditRules:
    """The Segment Editor's masking settings for one write.

    ``visible_segments``: the IDs shown in the views (None: every segment is visible).
    ``intensity_range``: (low, high), inclusive, on the source volume; None: no intensity mask.
    The default never changes another segment (overlap allowed), the safe choice for scripts.
    """

    mask_mode: MaskMode = MaskMode.EVERYWHERE
    overwrite_mode: OverwriteMode = OverwriteMode.NONE
    mask_segment: Optional[str] = None
    intensity_range: Optional[Tuple[float, float]] = None
    visible_segments: Optional[frozenset] = None

    def is_visible(self, segment_id: str) -> bool:
        return self.visible_segments is None or segment_id in self.visible_segments


def _binary(value: np.ndarray, what: str, ndim: Optional[int] = 2) -> np.ndarray:
    arr = np.asarray(value)
    if ndim is not None and arr.ndim != ndim:
        raise InvalidInputError(f"{what} must be a {ndim}D array, got shape {arr.shape}.")
    return arr if arr.dtype == bool else arr != 0


def intensity_bounds(dtype, low: float, high: float) -> Tuple[np.generic, np.generic]:
    """``(low, high)`` as Slicer's ``vtkImageThreshold`` uses them on a volume of ``dtype``.

    It casts each bound to the voxel type: integer types clamp to the type's range and truncate
    toward zero (58.5 -> 58, -3.5 -> -3), float types round to the type's precision. Comparing
    in the voxel type with these bounds gives the same editable voxels as the Segment Editor.
    """
    kind = np.dtype(dtype)
    if np.issubdtype(kind, np.integer):
        info = np.iinfo(kind)

        def cast(value: float):
            if value < info.min:
                return kind.type(info.min)
            if value > info.max:
                return kind.type(info.max)
            return kind.type(int(value))  # int() truncates toward zero, as a C cast does

        return cast(float(low)), cast(float(high))
    if np.issubdtype(kind, np.floating):
        return kind.type(low), kind.type(high)
    raise InvalidInputError(f"The source volume's voxel type {kind} is not a number type.")


def editable_area(
    target: str,
    slices: Mapping[str, np.ndarray],
    rules: EditRules,
    source_slice: Optional[np.ndarray] = None,
    ndim: Optional[int] = 2,
) -> np.ndarray:
    """The boolean area of one slice (of any block when ``ndim`` is None) where the edited
    segment ``target`` may change."""
    if target not in slices:
        raise InvalidInputError(f"Segment {target!r} is not among the segments {sorted(slices)}.")
    shape = np.shape(slices[target])
    mode = MaskMode(rules.mask_mode)
    if mode == MaskMode.EVERYWHERE:
        area = np.ones(shape, dtype=bool)
    else:
        if mode == MaskMode.INSIDE_SEGMENT:
            if rules.mask_segment is None:
                raise InvalidInputError(
                    "Editing is limited to inside one segment, but no mask segment is chosen: "
                    "pick it in the Segment Editor's Masking section, or allow editing everywhere."
                )
            if rules.mask_segment not in slices:
                raise InvalidInputError(
                    f"The mask segment {rules.mask_segment!r} does not exist in this segmentation: "
                    "choose another one in the Segment Editor's Masking section."
                )
            members = [rules.mask_segment]
        elif mode in (MaskMode.INSIDE_ALL_SEGMENTS, MaskMode.OUTSIDE_ALL_SEGMENTS):
            members = list(slices)
        else:
            members = [s for s in slices if rules.is_visible(s)]
        inside = mode in (
            MaskMode.INSIDE_ALL_SEGMENTS,
            MaskMode.INSIDE_VISIBLE_SEGMENTS,
            MaskMode.INSIDE_SEGMENT,
        )
        if not inside:
            members = [s for s in members if s != target]
        covered = np.zeros(shape, dtype=bool)
        for segment_id in members:
            covered |= _binary(slices[segment_id], f"Segment {segment_id!r}", ndim)
        area = covered if inside else ~covered
    if rules.intensity_range is not None:
        if source_slice is None:
            raise InvalidInputError(
                "An intensity range is set for editing, but no source image was given."
            )
        source = np.asarray(source_slice)
        if source.shape != shape:
            raise InvalidInputError(
                f"The source slice has shape {source.shape}, the segments {shape}."
            )
        low, high = intensity_bounds(source.dtype, *sorted(float(v) for v in rules.intensity_range))
        area &= (source >= low) & (source <= high)
    return area


def compose_slice(
    new_mask: np.ndarray,
    target: str,
    slices: Mapping[str, np.ndarray],
    rules: EditRules = EditRules(),
    source_slice: Optional[np.ndarray] = None,
) -> dict[str, np.ndarray]:
    """Set ``target``'s slice to ``new_mask`` under ``rules``; return only the slices that change.

    ``slices`` maps every segment ID of the segmentation (the target included) to its current 2D
    slice (0 outside, non-zero inside). The inputs are not modified; each returned array has the
    dtype of the segment's input slice and holds 0/1.
    """
    return _compose(new_mask, target, slices, rules, source_slice, ndim=2)


def compose_block(
    new_mask: np.ndarray,
    target: str,
    blocks: Mapping[str, np.ndarray],
    rules: EditRules = EditRules(),
    source_block: Optional[np.ndarray] = None,
) -> dict[str, np.ndarray]:
    """:func:`compose_slice` on blocks of any (equal) shape, e.g. a slab of consecutive slices.

    Every rule is per voxel, so a slab gives the same result as its slices one by one. Returned
    arrays have the dtype of the inputs (bool in, bool out).
    """
    return _compose(new_mask, target, blocks, rules, source_block, ndim=None)


def _compose(new_mask, target, slices, rules, source_slice, ndim):
    if target not in slices:
        raise InvalidInputError(f"Segment {target!r} is not among the segments {sorted(slices)}.")
    old_target = _binary(slices[target], f"Segment {target!r}", ndim)
    mask = _binary(new_mask, "The new mask", ndim)
    if mask.shape != old_target.shape:
        raise InvalidInputError(
            f"The new mask has shape {mask.shape}, but the slice has shape {old_target.shape}."
        )
    for segment_id, value in slices.items():
        if np.shape(value) != old_target.shape:
            raise InvalidInputError(
                f"Segment {segment_id!r}'s slice has shape {np.shape(value)}, expected {old_target.shape}."
            )
    area = editable_area(target, slices, rules, source_slice, ndim)
    new_target = np.where(area, mask, old_target)

    changed: dict[str, np.ndarray] = {}
    if not np.array_equal(new_target, old_target):
        changed[target] = new_target.astype(np.asarray(slices[target]).dtype)

    overwrite = OverwriteMode(rules.overwrite_mode)
    if overwrite != OverwriteMode.NONE:
        for segment_id, value in slices.items():
            if segment_id == target:
                continue
            if overwrite == OverwriteMode.VISIBLE_SEGMENTS and not rules.is_visible(segment_id):
                continue
            old = _binary(value, f"Segment {segment_id!r}", ndim)
            new = old & ~new_target
            if not np.array_equal(new, old):
                changed[segment_id] = new.astype(np.asarray(value).dtype)
    return changed


def write_slice(
    new_mask: np.ndarray,
    target: str,
    segments: Mapping[str, np.ndarray],
    axis: int,
    index: int,
    rules: EditRules = EditRules(),
    source_volume: Optional[np.ndarray] = None,
) -> dict[str, np.ndarray]:
    """:func:`compose_slice` for slice ``index`` along ``axis`` of 3D (k, j, i) segment arrays.

    Returns the changed 2D slices only; apply them with :func:`apply_slice_changes`.
    """
    slices = {segment_id: take_slice(np.asarray(arr), axis, index) for segment_id, arr in segments.items()}
    source = None if source_volume is None else take_slice(np.asarray(source_volume), axis, index)
    return compose_slice(new_mask, target, slices, rules, source)


def apply_slice_changes(
    segments: MutableMapping[str, np.ndarray],
    axis: int,
    index: int,
    changes: Mapping[str, np.ndarray],
) -> None:
    """Write the changed slices into the 3D arrays in place (other slices are not touched)."""
    for segment_id, new_slice in changes.items():
        take_slice(segments[segment_id], axis, index)[...] = new_slice
