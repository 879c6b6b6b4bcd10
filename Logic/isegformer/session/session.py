"""The segmentation session: one volume, its segments, and every click, correction and propagation.

This is the object a console user, a batch script, the CLI and the Slicer module all drive::

    session = Session.open("knee.nii.gz", click_model="isegformer.pth", stcn_weights="stcn.pth")
    femur = session.add_segment("femur")
    session.click((12.0, -30.5, 41.0), positive=True)     # RAS mm, on a slice along axis 0
    session.propagate()                                    # STCN through the volume
    session.undo(); session.redo()
    session.save_segmentation("knee.seg.nrrd")
    session.save("knee.isegsession")                       # everything, to continue later

Coordinates: a volume array is indexed ``[k, j, i]``; ``axis`` 0, 1, 2 means slices along k, j,
i (see :mod:`isegformer.volume.slicing` for which array axes are a slice's rows and columns).
Every method that changes the state is one undoable action, and a method that fails leaves
the session as it was.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np

from ..errors import InvalidInputError
from ..progress import ProgressCallback
from ..segments.history import Action, History, VolumeDiff
from ..segments.segment import (DEFAULT_COLORS, MASK_DIGEST_LENGTH, PropagationRecord, Segment, SliceAnnotation,
                                SliceClick, is_mask_digest, mask_digest)
from ..volume import Volume, geometry, slicing
from .. import arguments
from . import storage

log = logging.getLogger(__name__)

#: How many propagators (each with whole-volume state) stay alive between calls; a segment
#: whose propagator was dropped gets a new one, seeded from its propagated result where its
#: propagation record allows (only new or changed annotations are propagated), else one that
#: propagates all its annotations again.
MAX_LIVE_PROPAGATORS = 2

#: The registry's click model used when none is given (the paper's Swin-B, OAI-ZIB).
DEFAULT_CLICK_MODEL = "isegformer_swin_base_oaizib"

VolumeSource = Union[str, os.PathLike, Volume, tuple]
SegmentRef = Union[Segment, str, None]


class Session:
    """A segmentation session over one volume; create it with :meth:`open` or :meth:`load`."""

    def __init__(
        self,
        volume: Volume,
        *,
        click_model: Any = None,
        stcn_weights: Any = None,
        fusion_weights: Any = None,
        propagator_factory: Optional[Callable[..., Any]] = None,
        device: str = "auto",
        axis: int = 0,
        window: Optional[tuple[float, float]] = None,
        source: Optional[str] = None,
        click_precision: str = "float32",
        warm_up: bool = False,
    ) -> None:
        if not isinstance(volume, Volume):
            raise InvalidInputError(f"Session needs a Volume, got {type(volume).__name__}; use Session.open.")
        voxels = arguments.voxels(volume.array)
        if voxels is not volume.array:  # converted to a type the session file stores: a copy
            volume = Volume(voxels, volume.ijk_to_ras)
        arguments.optional_callable(propagator_factory, "propagator_factory")
        self.volume = volume
        self.default_axis = arguments.axis(axis)
        self.device = arguments.device(device)
        self.source = source
        self._window = _checked_window(window)
        self._click_model = click_model
        if click_precision != "float32":
            # Checked now, not at the first click: a typo, or int8 on a GPU, should not cost the
            # click model's download and load first.
            from ..click_engine.predictor import ClickPredictor, check_click_precision

            check_click_precision(click_precision, self.device)
            if isinstance(click_model, ClickPredictor) and click_model.precision != click_precision:
                raise InvalidInputError(
                    f"click_precision={click_precision!r} applies to a click model the session loads, "
                    f"but the ClickPredictor given runs in {click_model.precision}: build it with "
                    f"precision={click_precision!r}, or leave click_precision out.")
        self._click_precision = click_precision
        self._predictor = None
        # The click model's loading (and warm-up), shared by warm_up_click_model and the first
        # click; the lock makes sure only one of them loads it.
        self._click_loading = None
        self._click_loading_lock = threading.Lock()
        self._stcn_weights = stcn_weights
        self._fusion_weights = fusion_weights
        self._networks_digest_of: Optional[tuple] = None  # (the networks' ids and versions, their digest)
        self._propagator_factory = propagator_factory
        self._segments: list[Segment] = []
        self._current: Optional[Segment] = None
        self._order = 0
        self.history = History()
        # The click session of the slice clicked last, reused while its clicks match the state.
        self._live: Optional[tuple[Segment, int, int, Any]] = None
        # Live propagators, most recently used last:
        # (segment, axis, method) -> (propagator, {index: annotation order consumed}).
        self._propagators: OrderedDict[tuple[Segment, int, str], tuple[Any, dict[int, int]]] = OrderedDict()
        # Files this session read (what, path): no writer of the session may replace them.
        self._input_files: list[tuple[str, str]] = []
        if source is not None:
            self._input_files.append(("the volume this session was opened from", str(source)))
        # The .isegsession it was loaded from: save() may update it, the other writers may not.
        self._session_file: Optional[str] = None
        if warm_up:
            self.warm_up_click_model(background=True)

    # ----------------------------------------------------------------------------- opening
    @classmethod
    def open(cls, volume: VolumeSource, **options: Any) -> "Session":
        """Start a session on ``volume``: a path (any SimpleITK format, or a DICOM folder), a
        :class:`~isegformer.volume.Volume`, or ``(array (k, j, i), ijk_to_ras 4x4)``.

        Options:

        - ``click_model``: a registry name, a checkpoint path, a loaded iSegFormer, or a
          ClickPredictor (default: the paper's Swin-B from the registry);
        - ``stcn_weights`` / ``fusion_weights``: registry names, paths, state dicts or loaded
          networks for STCN propagation (default: the registry's ``stcn``, and no FusionNet);
        - ``device``: "auto", "cpu", "cuda" or "cuda:N";
        - ``axis``: the default slice axis (0 = k);
        - ``window``: (low, high) intensities the click model sees as 0..1 (default: the 0.1 and
          99.9 percentiles of the volume; STCN normalises as the reference did);
        - ``propagator_factory``: replaces :func:`isegformer.propagation.factory.create_propagator`;
        - ``click_precision``: "float32" (default), "float16"/"bfloat16" (CUDA autocast) or
          "int8" (the opt-in fast CPU mode, not the reference's exact numbers);
        - ``warm_up``: True loads and warms up the click model in the background right away
          (see :meth:`warm_up_click_model`).
        """
        arguments.options(options, cls._option_names(), "Session.open")
        source = None
        if isinstance(volume, (str, os.PathLike)):
            from ..volume import read_volume

            source = str(Path(volume).expanduser().resolve())
            volume = read_volume(volume)
        elif isinstance(volume, tuple):
            if len(volume) != 2:
                raise InvalidInputError("Give the volume as (array, ijk_to_ras): two items.")
            volume = Volume(arguments.voxels(volume[0]), arguments.matrix(volume[1]))
        elif not isinstance(volume, Volume):
            raise InvalidInputError(
                f"Session.open needs a path, a Volume or (array, ijk_to_ras), got {type(volume).__name__}."
            )
        return cls(volume, source=source, **options)

    @classmethod
    def load(cls, path: str | os.PathLike, *, volume: VolumeSource | None = None, **options: Any) -> "Session":
        """Load a session saved by :meth:`save`. ``volume`` is needed only when the file was
        saved without its volume and the original file has moved. ``options`` as for :meth:`open`."""
        arguments.options(options, cls._option_names(), "Session.load")
        return storage.load_session(cls, arguments.path(path, "A session file"), volume, options)

    @classmethod
    def _option_names(cls) -> list[str]:
        """The keyword options of open and load: those of the constructor."""
        import inspect

        return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "volume", "source")]

    def save(self, path: str | os.PathLike, *, include_volume: bool = True) -> Path:
        """Save everything (segments, annotated slices with their clicks, propagated results) to
        one file, atomically. Without the volume the file is small, but needs the volume to load.
        The undo history is not saved."""
        self._guard_output(path, include_session_file=False)
        return storage.save_session(self, path, arguments.boolean(include_volume, "include_volume"))

    def _guard_output(self, path: str | os.PathLike, *, include_session_file: bool = True) -> None:
        """Refuse to write over a file this session read (its volume, a click or label file)."""
        from ..output.paths import guard_outputs

        arguments.path(path, "An output path")
        inputs = list(self._input_files)
        if include_session_file and self._session_file is not None:
            inputs.append(("the session file this session was loaded from", self._session_file))
        guard_outputs([p for _, p in inputs], [path], input_names=[w for w, _ in inputs])

    # ----------------------------------------------------------------------------- segments
    @property
    def segments(self) -> list[Segment]:
        return list(self._segments)

    @property
    def current_segment(self) -> Optional[Segment]:
        """The segment clicks go to when none is named: the last one added or used."""
        return self._current

    def segment(self, ref: SegmentRef = None) -> Segment:
        """A segment by name (or the Segment itself); None gives the current segment."""
        if ref is None:
            if self._current is None:
                raise InvalidInputError("There is no segment yet: call add_segment(name) first.")
            return self._current
        if not isinstance(ref, (Segment, str)):
            raise InvalidInputError(f"A segment is given by its name (text) or as a Segment, got {ref!r}.")
        if isinstance(ref, Segment):
            if ref not in self._segments:
                raise InvalidInputError(f"Segment {ref.name!r} is not part of this session.")
            return ref
        for segment in self._segments:
            if segment.name == ref:
                return segment
        names = ", ".join(repr(s.name) for s in self._segments) or "none"
        raise InvalidInputError(f"No segment named {ref!r} (segments: {names}).")

    def add_segment(
        self, name: str, color: Optional[Sequence[float]] = None, label_value: Optional[int] = None
    ) -> Segment:
        """Add a segment; it becomes the current one. Colours are RGB in [0, 1]."""
        name = arguments.name(name)
        color = None if color is None else arguments.color(color)
        label_value = None if label_value is None else arguments.label_value(label_value)
        if any(s.name == name for s in self._segments):
            raise InvalidInputError(f"A segment named {name!r} exists already; choose another name.")
        used = {s.label_value for s in self._segments}
        if label_value is None:
            label_value = next((v for v in range(1, 256) if v not in used), None)
            if label_value is None:
                raise InvalidInputError("A session holds at most 255 segments.")
        elif label_value in used:
            raise InvalidInputError(f"Label value {label_value} is used by another segment.")
        if color is None:
            color = DEFAULT_COLORS[len(self._segments) % len(DEFAULT_COLORS)]
        segment = Segment(name=name, color=tuple(color), label_value=label_value)  # type: ignore[arg-type]
        previous = self._current

        def redo() -> None:
            self._segments.append(segment)
            self._current = segment

        def undo() -> None:
            self._segments.remove(segment)
            self._current = previous
            self._forget_caches(segment)

        redo()
        self.history.push(Action(f"add segment {name!r}", undo, redo))
        return segment

    def remove_segment(self, ref: SegmentRef) -> None:
        segment = self.segment(ref)
        position = self._segments.index(segment)
        previous = self._current

        def redo() -> None:
            self._segments.remove(segment)
            if self._current is segment:
                self._current = self._segments[-1] if self._segments else None
            self._forget_caches(segment)

        def undo() -> None:
            self._segments.insert(position, segment)
            self._current = previous

        redo()
        self.history.push(Action(f"remove segment {segment.name!r}", undo, redo))

    # ----------------------------------------------------------------------------- clicks
    def click(
        self,
        ras_point: Sequence[float],
        positive: bool = True,
        segment: SegmentRef = None,
        axis: Optional[int] = None,
    ) -> np.ndarray:
        """A click at an RAS point (mm) on the slice along ``axis`` (default: the session's) that
        contains it. Returns that slice's new mask (rows, cols) bool.

        The click continues the clicks already made on that slice. On a slice that was only
        drawn (:meth:`set_slice_mask`) or propagated, it starts a new click sequence whose mask
        replaces the slice: the click model starts from an empty previous mask."""
        positive = arguments.boolean(positive, "positive")
        ijk = self.volume.ras_to_ijk_points(_point3(ras_point, "An RAS point"))
        return self._click_at_ijk(ijk, positive, segment, axis, f"RAS {tuple(np.round(ras_point, 2).tolist())}")

    def click_ijk(
        self,
        ijk: Sequence[float],
        positive: bool = True,
        segment: SegmentRef = None,
        axis: Optional[int] = None,
    ) -> np.ndarray:
        """A click at continuous voxel coordinates ``(i, j, k)`` (Slicer's IJK order; the array
        index is ``[k, j, i]``). Returns the slice's new mask."""
        positive = arguments.boolean(positive, "positive")
        ijk = _point3(ijk, "An IJK point")
        return self._click_at_ijk(ijk, positive, segment, axis, f"IJK {tuple(ijk.tolist())}")

    def click_slice(
        self,
        axis: int,
        index: int,
        row: float,
        col: float,
        positive: bool = True,
        segment: SegmentRef = None,
    ) -> np.ndarray:
        """A click at (row, col) of slice ``index`` along ``axis``. Returns the slice's new mask."""
        axis = arguments.axis(axis)
        index = arguments.index(self.volume.shape, axis, index)
        rows, cols = slicing.slice_shape(self.volume.shape, axis)
        positive = arguments.boolean(positive, "positive")
        row, col = arguments.real(row, "A click's row"), arguments.real(col, "A click's col")
        if not (np.isfinite(row) and np.isfinite(col) and -0.5 <= row <= rows - 0.5 and -0.5 <= col <= cols - 0.5):
            raise InvalidInputError(
                f"The click (row {row:g}, col {col:g}) is outside slice {index} along axis {axis}, "
                f"which has {rows} rows and {cols} columns."
            )
        # The outer half of a border pixel counts as its centre (as the click engine does), so
        # the stored click is the one the network saw.
        row, col = min(max(row, 0.0), rows - 1.0), min(max(col, 0.0), cols - 1.0)
        # One undo step, and nothing left behind on failure (not even an auto-created segment).
        with self.history.transaction("click"):
            return self._click(self.segment_or_new(segment), axis, index, row, col, bool(positive))

    def segment_or_new(self, ref: SegmentRef) -> Segment:
        """The segment named ``ref``; a first click without any segment creates ``Segment_1``."""
        if ref is None and self._current is None:
            return self.add_segment("Segment_1")
        return self.segment(ref)

    def _click_at_ijk(
        self, ijk: np.ndarray, positive: bool, segment: SegmentRef, axis: Optional[int], where: str
    ) -> np.ndarray:
        axis = self.default_axis if axis is None else arguments.axis(axis)
        if not geometry.is_inside(ijk, self.volume.shape):
            k, j, i = self.volume.shape
            raise InvalidInputError(
                f"The click at {where} is outside the volume (voxel {tuple(np.round(ijk, 2).tolist())} in "
                f"(i, j, k); the volume has {i} x {j} x {k} voxels). Click inside the image."
            )
        index, row, col = slicing.ijk_to_slice_point(axis, ijk)
        index = int(np.floor(index + 0.5))
        return self.click_slice(axis, index, row, col, positive, segment)

    def _click(self, segment: Segment, axis: int, index: int, row: float, col: float, positive: bool) -> np.ndarray:
        # Rounding removes the float noise of RAS round trips, so that replayed clicks
        # (from a .mrk.json) give the network exactly the same coordinates.
        row, col = round(row, 6), round(col, 6)
        before = segment.annotation(axis, index)
        clicks = before.clicks if before is not None else ()
        click_session = self._click_session(segment, axis, index, clicks)
        _, mask = click_session.add_click(row, col, positive)
        after = SliceAnnotation(mask, clicks + (SliceClick(row, col, positive),), self._next_order())
        self._set_annotation(segment, axis, index, before, after, f"{'positive' if positive else 'negative'} click")
        self._current = segment
        return after.mask.copy()

    def _click_session(self, segment: Segment, axis: int, index: int, clicks: tuple[SliceClick, ...]):
        """The click session of this slice, holding exactly ``clicks`` (replayed if needed)."""
        if self._live is not None:
            live_segment, live_axis, live_index, live = self._live
            if (live_segment, live_axis, live_index) == (segment, axis, index) and _same_clicks(live.clicks, clicks):
                return live
        from ..click_engine.session import ClickSession

        image = slicing.extract_slice(self.volume.array, axis, index)
        live = ClickSession(self.predictor, image, window=self.window)
        for click in clicks:
            live.add_click(click.row, click.col, click.positive)
        self._live = (segment, axis, index, live)
        return live

    def set_slice_mask(
        self, axis: int, index: int, mask: np.ndarray, segment: SegmentRef = None
    ) -> None:
        """Make ``mask`` (rows, cols) the annotation of a slice, e.g. a correction drawn in an
        editor. It replaces that slice's clicks, and propagation never overwrites it."""
        axis = arguments.axis(axis)
        index = arguments.index(self.volume.shape, axis, index)
        expected = slicing.slice_shape(self.volume.shape, axis)
        mask = arguments.slice_mask(mask, expected, f"of slice {index} along axis {axis}")
        with self.history.transaction("set slice mask"):
            target = self.segment_or_new(segment)
            before = target.annotation(axis, index)
            after = SliceAnnotation(mask.astype(bool), (), self._next_order())
            self._set_annotation(target, axis, index, before, after, "set slice mask")
            self._current = target

    def annotate_from_label_map(
        self,
        labels: Union[str, os.PathLike, Volume, np.ndarray],
        axis: Optional[int] = None,
        indices: Optional[Sequence[int]] = None,
        names: Optional[dict[int, str]] = None,
    ) -> list[int]:
        """Take annotated slices from a label map drawn elsewhere (a file, a Volume or a
        (k, j, i) array on this volume's grid), as one undoable action.

        Each nonzero value becomes a segment (``names[value]``, else an existing segment with
        that label value, else ``Label_<value>``); values that go to one segment (the same name
        twice) annotate it with their union. The slices taken are ``indices`` along
        ``axis``, by default every slice where the label map has a nonzero voxel. A label map on
        another grid is refused. Returns the slice indices annotated.
        """
        axis = self.default_axis if axis is None else arguments.axis(axis)
        if isinstance(labels, (str, os.PathLike)) and str(labels).lower().endswith(".seg.nrrd"):
            return self._annotate_from_segmentation(labels, axis, indices, names)
        array = self._label_array(labels)
        if indices is None:
            other = tuple(a for a in range(3) if a != axis)
            indices = [int(i) for i in np.flatnonzero(array.any(axis=other))]
            if not indices:
                raise InvalidInputError("The label map is empty: draw at least one slice.")
        indices = arguments.indices(self.volume.shape, axis, indices)
        values = [int(v) for v in np.unique(array) if v != 0]
        if any(not 1 <= v <= 255 for v in values):
            raise InvalidInputError(f"Label values must be 1..255, got {values}.")
        names = arguments.label_names(names)
        with self.history.transaction(f"annotate {len(indices)} slices from a label map"):
            # Values that go to one segment (one name twice in ``names``, or a name and a label
            # value of one segment) are one annotation: one mask each after another would keep
            # only the last value's.
            groups: dict[int, tuple[Segment, list[int]]] = {}
            for value in values:
                target = self._segment_for_label(value, names.get(value))
                groups.setdefault(id(target), (target, []))[1].append(value)
            for target, group in groups.values():
                _log_merged(target, [f"label value {v}" for v in group])
                for index in indices:
                    self.set_slice_mask(axis, index, np.isin(slicing.extract_slice(array, axis, index), group), target)
        return indices

    def _annotate_from_segmentation(self, path, axis: int, indices, names) -> list[int]:
        """annotate_from_label_map for a ``.seg.nrrd``: each segment on its own, so overlapping
        segments keep their overlap; names and colours come from the file (``names[n]`` renames
        the n-th segment, counting from 1), and segments of one name are merged (their union);
        Slicer's flipped or cropped grids are placed exactly."""
        from ..output.seg_nrrd import read_seg_nrrd

        segmentation = read_seg_nrrd(path).on_grid(self.volume, what=f"segmentation {Path(path).name}")
        self._input_files.append(("a label map this session read", str(path)))
        if indices is None:
            other = tuple(a for a in range(3) if a != axis)
            present = np.zeros(self.volume.shape[axis], bool)
            for mask in segmentation.masks:
                present |= mask.any(axis=other)
            indices = [int(i) for i in np.flatnonzero(present)]
            if not indices:
                raise InvalidInputError(f"The segmentation {Path(path).name} is empty: draw at least one slice.")
        indices = arguments.indices(self.volume.shape, axis, indices)
        names = arguments.label_names(names)
        with self.history.transaction(f"annotate {len(indices)} slices from a segmentation"):
            # Segments of the file that go to one session segment (Slicer allows two segments of
            # one name; ``names`` may give two the same) are one annotation: their union.
            groups: dict[str, tuple[Segment, list[int]]] = {}
            for number, info in enumerate(segmentation.segments, start=1):
                name = names.get(number, info.name)
                if name not in groups:
                    target = next((s for s in self._segments if s.name == name), None)
                    if target is None:
                        target = self.add_segment(name, color=info.color)
                    groups[name] = (target, [])
                groups[name][1].append(number)
            for target, numbers in groups.values():
                _log_merged(target, [f"segment {n} of the file" for n in numbers])
                members = [segmentation.masks[n - 1] for n in numbers]
                for index in indices:
                    mask = slicing.extract_slice(members[0], axis, index)
                    for member in members[1:]:
                        mask = mask | slicing.extract_slice(member, axis, index)
                    self.set_slice_mask(axis, index, mask, target)
        return indices

    def _segment_for_label(self, value: int, name: Optional[str]) -> Segment:
        """The segment a label value goes to: by name if one is given, else by label value."""
        if name is None:
            existing = next((s for s in self._segments if s.label_value == value), None)
            if existing is not None:
                return existing
            name = f"Label_{value}"
        existing = next((s for s in self._segments if s.name == name), None)
        if existing is not None:
            return existing
        free = all(s.label_value != value for s in self._segments)
        return self.add_segment(name, label_value=value if free else None)

    def _label_array(self, labels: Union[str, os.PathLike, Volume, np.ndarray]) -> np.ndarray:
        if isinstance(labels, (str, os.PathLike)):
            from ..output.labelmap import read_label_map

            array = read_label_map(labels, self.volume)
            self._input_files.append(("a label map this session read", str(labels)))
            return array
        if isinstance(labels, Volume):
            array = self.volume.label_on_grid(labels).array
        else:
            array = np.asarray(labels)
            if array.shape != self.volume.shape:
                raise InvalidInputError(
                    f"The label map has shape {array.shape} but the volume {self.volume.shape}: "
                    "it was drawn on another grid."
                )
        from ..volume.labels import as_label_array

        return as_label_array(array)  # checked before any cast: int64 2**32 + 1 must not become 1

    def clear_slice(self, axis: int, index: int, segment: SegmentRef = None) -> None:
        """Remove a slice's annotation (its clicks and mask); the propagated result shows again."""
        axis = arguments.axis(axis)
        index = arguments.index(self.volume.shape, axis, index)
        target = self.segment(segment)
        before = target.annotation(axis, index)
        if before is not None:
            self._set_annotation(target, axis, index, before, None, "clear slice")

    def annotated_slices(self, segment: SegmentRef = None, axis: Optional[int] = None) -> list[int]:
        """Indices of the annotated slices of a segment along ``axis`` (default: the session's)."""
        return self.segment(segment).annotated_indices(self.default_axis if axis is None else arguments.axis(axis))

    def _set_annotation(
        self,
        segment: Segment,
        axis: int,
        index: int,
        before: Optional[SliceAnnotation],
        after: Optional[SliceAnnotation],
        label: str,
    ) -> None:
        def redo() -> None:
            segment.set_annotation(axis, index, after)

        def undo() -> None:
            segment.set_annotation(axis, index, before)
            self._rewind_live(segment, axis, index, before)

        redo()
        nbytes = sum(a.nbytes for a in (before, after) if a is not None)
        self.history.push(Action(f"{label} on slice {index} (axis {axis}) of {segment.name!r}", undo, redo, nbytes))

    def _rewind_live(self, segment: Segment, axis: int, index: int, state: Optional[SliceAnnotation]) -> None:
        """After an undo, step the live click session back one click when that matches the state."""
        if self._live is None or self._live[:3] != (segment, axis, index):
            return
        live = self._live[3]
        clicks = state.clicks if state is not None else ()
        if len(live.clicks) == len(clicks) + 1 and _same_clicks(live.clicks[:-1], clicks):
            live.undo()

    # ----------------------------------------------------------------------------- propagation
    def propagate(
        self,
        segment: SegmentRef = None,
        method: str = "stcn",
        axis: Optional[int] = None,
        progress: Optional[ProgressCallback] = None,
    ) -> np.ndarray:
        """Carry a segment's annotated slices through the volume along ``axis`` (default: the axis
        of its latest annotation). Only this segment changes; its annotated slices stay exactly
        as annotated. Returns the segment's new (k, j, i) mask. A cancel (CancelledError from
        ``progress``) leaves the segment as it was.

        Only what changed is recomputed: the slices between a new or corrected annotation and
        its annotated neighbours. That holds in one process (the segment's live propagator)
        and also after :meth:`load` or a resumed Slicer scene: the segment's propagation record
        says which annotations its propagated result came from, and a new propagator is seeded
        with that result. Seeded, the slices next to a new annotation are fused with the
        previous *binary* result instead of the soft probabilities a never-saved session
        holds, so they may differ slightly from that session's; every other slice is kept
        exactly. An annotation of the record that is no longer annotated (cleared, undone)
        makes the propagation start afresh, as in one process."""
        target = self.segment(segment)
        if not isinstance(method, str):
            raise InvalidInputError(f"A propagation method is a name ('stcn' or 'interpolation'), got {method!r}.")
        arguments.optional_callable(progress, "progress")
        method = method.strip().lower()
        if axis is None:
            latest = list(target.iter_annotations())
            axis = latest[-1][0] if latest else self.default_axis
        axis = arguments.axis(axis)
        annotated = target.annotations[axis]
        if not annotated:
            raise InvalidInputError(
                f"Segment {target.name!r} has no annotated slice along axis {axis}: click or draw "
                "at least one slice first."
            )
        from ..propagation.factory import METHODS

        if method not in METHODS and self._propagator_factory is None:  # a factory names its own
            raise InvalidInputError(f"Unknown propagation method {method!r}: use one of {', '.join(METHODS)}.")
        empty = all(a.empty for a in annotated.values())
        if empty:
            # Every annotated slice says "not here": the object is nowhere. No propagator is
            # asked (STCN would still paint its guesses from an all-background memory).
            result = np.zeros(self.volume.shape, bool)
            step = _overall(progress, 0, 1, "no object on the annotated slices")
            if step is not None:
                step(1, 1)
        else:
            result = self._propagated_result(target, axis, method, annotated, progress)
        # What the result was computed from; an empty result is computed by nobody, so a later
        # propagation from it starts afresh.
        record = None if empty else PropagationRecord.of(axis, method, annotated, self._networks_digest(method))
        if target.propagation_axis == axis and target.propagated is not None \
                and np.array_equal(result, target.propagated):
            # Nothing changed: no undo step. The record still says what this result comes from.
            target.propagation_record = record
            return target.mask(self.volume.shape)
        self._set_propagated(target, result, axis, record, f"propagate {target.name!r} ({method}, axis {axis})")
        self._current = target
        return target.mask(self.volume.shape)

    def _set_propagated(self, target: Segment, result: np.ndarray, axis: int, record: Optional[PropagationRecord],
                        label: str, forget_propagators: bool = False) -> None:
        """Give ``target`` the propagated ``result`` along ``axis`` with its ``record``, as one
        undo step that restores all three. ``forget_propagators``: the segment's live
        propagator does not hold ``result`` (nor, after an undo, what it replaced), so undo and
        redo drop it as well."""
        before, before_axis, before_record = target.propagated, target.propagation_axis, target.propagation_record
        diff = VolumeDiff(before, result, axis)

        def apply(reverse: bool) -> None:
            target.propagated = diff.apply(target.propagated, reverse=reverse)
            target.propagation_axis = before_axis if reverse else axis
            target.propagation_record = before_record if reverse else record
            if forget_propagators:
                self._forget_propagators(target)

        target.propagated = result
        target.propagation_axis = axis
        target.propagation_record = record
        if forget_propagators:
            self._forget_propagators(target)
        self.history.push(Action(label, lambda: apply(True), lambda: apply(False), diff.nbytes))

    def restore_propagated(self, segment: SegmentRef, result: np.ndarray, record: PropagationRecord) -> bool:
        """Give a segment a propagated result kept elsewhere (the Slicer module keeps it in the
        scene: the segment's voxels) with the record of the annotations it came from, as
        :meth:`load` does for a session file: the next propagation recomputes only around the
        annotations that are new or changed since (see :meth:`propagate`). One undo step.

        ``result`` may show annotations the record does not count (made after that
        propagation): along the record's axis they are noted as ``overlaid``, and clearing one
        of them later makes the next propagation recompute everything. Annotations along
        another axis cross every slice of ``result`` and cannot be told from it: then nothing
        is restored and False is returned (the next propagation recomputes everything)."""
        target = self.segment(segment)
        if not isinstance(record, PropagationRecord):
            raise InvalidInputError(f"A propagation record is a PropagationRecord, got {type(record).__name__}.")
        axis = arguments.axis(record.axis)
        if not isinstance(record.method, str) or not record.method.strip():
            raise InvalidInputError(f"A propagation record names its method, got {record.method!r}.")
        if not isinstance(record.digests, (tuple, list)):
            raise InvalidInputError(f"A propagation record's digests are (slice index, digest) pairs, got {record.digests!r}.")
        for pair in record.digests:
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise InvalidInputError(f"A propagation record's digests are (slice index, digest) pairs, got {pair!r}.")
            index, digest = pair
            arguments.index(self.volume.shape, axis, index)
            if not is_mask_digest(digest):
                raise InvalidInputError(f"A propagation record's digest is {MASK_DIGEST_LENGTH} hex digits, got {digest!r}.")
        if len({int(index) for index, _ in record.digests}) != len(record.digests):
            raise InvalidInputError("A propagation record names one slice twice.")
        if record.networks != "" and not is_mask_digest(record.networks):
            raise InvalidInputError(
                f"A propagation record's networks digest is empty or {MASK_DIGEST_LENGTH} hex digits, got {record.networks!r}.")
        result = np.asarray(result)
        if result.shape != self.volume.shape:
            raise InvalidInputError(
                f"The propagated result has shape {result.shape}, the volume {self.volume.shape}: give "
                "the segment's (k, j, i) mask on the volume's grid."
            )
        if result.dtype != bool:
            if result.dtype.kind not in "iu" or (result.size and not np.isin(result, (0, 1)).all()):
                raise InvalidInputError("The propagated result is a mask: true/false or 0/1 values only.")
        result = np.array(result, dtype=bool, copy=True)
        crossing = [a for a in range(3) if a != axis and target.annotations[a]]
        if crossing:
            log.info("The propagated result of %r is not restored: annotations along axis %s cross its "
                     "slices; its next propagation recomputes every slice.", target.name, crossing[0])
            return False
        counted = {int(index) for index, _ in record.digests}
        overlaid = tuple(sorted(i for i in target.annotations[axis] if i not in counted))
        record = PropagationRecord(axis, record.method.strip().lower(),
                                   tuple(sorted((int(i), d) for i, d in record.digests)), overlaid, record.networks)
        self._set_propagated(target, result, axis, record,
                             f"restore the propagated result of {target.name!r} (axis {axis})", forget_propagators=True)
        return True

    def _forget_propagators(self, segment: Segment) -> None:
        for key in [k for k in self._propagators if k[0] is segment]:
            del self._propagators[key]

    def _propagated_result(self, target: Segment, axis: int, method: str, annotated: dict,
                           progress: Optional[ProgressCallback]) -> np.ndarray:
        """The (k, j, i) bool result of the segment's propagator after its pending annotations.

        The propagator is the segment's live one; without one (a loaded session, a resumed
        scene, one dropped to bound memory), a new one seeded from the segment's propagated
        result and its record (see :meth:`_recorded_consumption`), else a new one that
        propagates every annotation."""
        propagator, consumed = self._propagator_for(target, axis, method)
        if propagator is None:  # the recorded result is the one these annotations give
            return target.propagated.copy()
        pending = sorted(
            (a for i, a in annotated.items() if consumed.get(i) != a.order),
            key=lambda a: a.order,
        )
        index_of = {id(a): i for i, a in annotated.items()}
        items = [(index_of[id(a)], a.mask.astype(np.uint8)) for a in pending]
        # all at once: the propagator skips work that a later annotation overwrites
        propagator.annotate_many(items, progress=_overall(progress, 0, 1, f"{len(items)} slices"))
        for annotation in pending:
            consumed[index_of[id(annotation)]] = annotation.order
        from ..propagation.base import volume_from_frames

        return np.ascontiguousarray(volume_from_frames(propagator.labels() == 1, axis))

    def _recorded_consumption(self, segment: Segment, axis: int, method: str) -> Optional[dict[int, int]]:
        """{index: annotation order} of the annotations that the segment's propagated result
        was computed from and that are still annotated as they were (same mask digest); None
        when the result cannot be taken up: no result or record, another axis or method, other
        networks, or an annotation of the record no longer annotated (a propagator cannot forget
        one)."""
        record = segment.propagation_record
        if segment.propagated is None or record is None or record.axis != axis \
                or segment.propagation_axis != axis or record.method != method:
            return None
        if record.networks != self._networks_digest(method):
            if not record.networks:
                log.info("The propagation record of %r does not name the weights it ran with (written by an "
                         "older version): its next propagation recomputes every slice.", segment.name)
            else:
                log.info("The propagated result of %r was computed with other networks than this session's: "
                         "its next propagation recomputes every slice.", segment.name)
            return None
        annotated = segment.annotations[axis]
        if any(index not in annotated for index, _ in record.digests) \
                or any(index not in annotated for index in record.overlaid):
            return None
        return {index: annotated[index].order for index, digest in record.digests
                if mask_digest(annotated[index].mask) == digest}

    def _propagator_for(self, segment: Segment, axis: int, method: str):
        """(propagator, {index: annotation order consumed}) for a propagation; (None, consumed)
        when no propagator is needed: every annotation is one the recorded result came from."""
        key = (segment, axis, method)
        cached = self._propagators.get(key)
        if cached is not None:
            propagator, consumed = cached
            annotated = segment.annotations[axis]
            # A propagator cannot forget an annotation: if one was removed (undo, clear), start over.
            if all(index in annotated for index in consumed):
                self._propagators.move_to_end(key)
                return propagator, consumed
        recorded = self._recorded_consumption(segment, axis, method)
        if recorded is not None and len(recorded) == len(segment.annotations[axis]):
            self._forget_propagators(segment)  # a stale one would hold its memory for nothing
            return None, recorded
        propagator = self._new_propagator(axis, method)
        consumed: dict[int, int] = {}
        if recorded:
            consumed = self._seeded(propagator, segment, axis, recorded)
        # Each propagator holds whole-volume probabilities (and STCN a feature cache of up to
        # a few GB): keep one per segment, and only the most recently used few.
        self._forget_propagators(segment)
        self._propagators[key] = (propagator, consumed)
        while len(self._propagators) > MAX_LIVE_PROPAGATORS:
            self._propagators.popitem(last=False)
        return self._propagators[key]

    def _seeded(self, propagator: Any, segment: Segment, axis: int, recorded: dict[int, int]) -> dict[int, int]:
        """Seed a new propagator with the segment's propagated result and the ``recorded``
        annotations it came from (oldest first); returns what it consumed ({} when it cannot
        be seeded: then it propagates every annotation)."""
        from ..propagation.base import frames_along_axis

        seed = getattr(propagator, "seed", None)
        if not callable(seed):
            return {}
        annotated = segment.annotations[axis]
        items = [(index, annotated[index].mask.astype(np.uint8))
                 for index in sorted(recorded, key=lambda i: annotated[i].order)]
        if not seed(frames_along_axis(segment.propagated, axis).astype(np.uint8), items):
            return {}
        log.info("Propagation of %r taken up from its saved result: %d of %d annotations unchanged.",
                 segment.name, len(recorded), len(annotated))
        return dict(recorded)

    def _new_propagator(self, axis: int, method: str) -> Any:
        factory = self._propagator_factory
        if factory is None:
            from ..propagation.factory import create_propagator as factory
        if method == "stcn":
            self._load_stcn_weights_once()
        rows, cols = _slice_spacing(self.volume.spacing, axis)
        return factory(
            method,
            self.volume.array,  # each propagator maps intensities its own way
            axis,
            1,
            device=self.device,
            weights=self._stcn_weights if method == "stcn" else None,
            fusion_weights=self._fusion_weights if method == "stcn" else None,
            pixel_spacing=(rows, cols),
        )

    def _load_stcn_weights_once(self) -> None:
        """Load the networks once; every later propagator reuses them. Without ``stcn_weights``
        the registry's official ``stcn`` is used (downloaded once into the verified cache)."""
        from collections.abc import Mapping

        from ..propagation import stcn

        def network(source: Any, registry_name: str, loader: Callable, kind: type, role: str) -> Any:
            if isinstance(source, kind):
                return source
            if not isinstance(source, Mapping):
                from ..weights import resolve_model

                source = resolve_model(registry_name if source is None else source, kind=role)
            return loader(source)

        self._stcn_weights = network(self._stcn_weights, "stcn", stcn.load_stcn, stcn.STCNNetwork, "propagation")
        if self._fusion_weights is not None:
            self._fusion_weights = network(self._fusion_weights, "mivos_fusion", stcn.load_fusion, stcn.FusionNet,
                                           "fusion")

    def _networks_digest(self, method: str) -> str:
        """The digest of the networks that ``method`` propagates with in this session ("" for a
        method without networks); loads them (once) for STCN."""
        if method != "stcn":
            return ""
        self._load_stcn_weights_once()
        networks = (self._stcn_weights, self._fusion_weights)
        # Keyed by the network objects (kept here, so their ids stay theirs) and their tensors'
        # version counters, which any in-place change of a weight bumps (load_state_dict, an
        # optimiser step): hashing 220 MB of weights takes a third of a second.
        key = tuple((id(n), sum(t._version for t in n.state_dict().values()) if n is not None else 0)
                    for n in networks)
        cached = self._networks_digest_of
        if cached is None or cached[0] != key:
            from ..propagation.network_digest import network_digest

            cached = (key, network_digest(*networks))
            self._networks_digest_of = cached
        return cached[1]

    def _forget_caches(self, segment: Segment) -> None:
        self._forget_propagators(segment)
        if self._live is not None and self._live[0] is segment:
            self._live = None

    # ----------------------------------------------------------------------------- undo
    def undo(self) -> Optional[str]:
        """Undo the last action; returns its description, or None when there is nothing to undo."""
        action = self.history.undo()
        return action.label if action else None

    def redo(self) -> Optional[str]:
        """Redo the last undone action; returns its description, or None."""
        action = self.history.redo()
        return action.label if action else None

    @property
    def can_undo(self) -> bool:
        return self.history.can_undo

    @property
    def can_redo(self) -> bool:
        return self.history.can_redo

    # ----------------------------------------------------------------------------- results
    def segment_mask(self, segment: SegmentRef = None) -> np.ndarray:
        """The (k, j, i) bool mask of a segment: its propagated result with its annotated slices."""
        return self.segment(segment).mask(self.volume.shape)

    def label_map(self) -> np.ndarray:
        """A (k, j, i) uint8 label map: each segment's label value; where segments overlap, the
        one added later wins."""
        return self._label_map_and_overlaps()[0]

    def _label_map_and_overlaps(self) -> tuple[np.ndarray, int]:
        """:meth:`label_map`, and how many of its voxels more than one segment holds, from one
        pass over the segments' masks (each mask is built from the segment's slices)."""
        labels = np.zeros(self.volume.shape, np.uint8)
        shared = np.zeros(self.volume.shape, bool)
        for segment in self._segments:
            mask = segment.mask(self.volume.shape)
            shared |= mask & (labels != 0)  # label values are 1..255: 0 is no segment yet
            labels[mask] = segment.label_value
        return labels, int(np.count_nonzero(shared))

    def save_segmentation(self, path: str | os.PathLike) -> Path:
        """Write every segment to a Slicer ``.seg.nrrd`` (or ``.nrrd``) on the volume's grid
        (overlaps kept). Another suffix is refused: for a NIfTI label map use :meth:`save_label_map`."""
        from ..output.seg_nrrd import SegmentInfo, check_seg_nrrd_path, write_seg_nrrd

        self._guard_output(path)
        check_seg_nrrd_path(path)
        if not self._segments:
            raise InvalidInputError("There is no segment to save: add a segment and annotate it first.")
        infos = [
            SegmentInfo(name=s.name, color=s.color, label_value=s.label_value,
                        tags={"Segmentation.Status": "inprogress"})
            for s in self._segments
        ]
        masks = [s.mask(self.volume.shape) for s in self._segments]
        return write_seg_nrrd(path, masks, infos, self.volume.ijk_to_ras)

    def save_label_map(self, path: str | os.PathLike, overlaps: str = "refuse") -> Path:
        """Write :meth:`label_map` as NIfTI/NRRD/MHA (by suffix) on the volume's grid.

        A label map holds one label per voxel. Where segments overlap, ``overlaps="refuse"``
        (the default) raises InvalidInputError and writes nothing (save a ``.seg.nrrd`` with
        :meth:`save_segmentation` to keep the overlaps); ``overlaps="last"`` lets the segment
        added later win (:meth:`label_map`)."""
        from ..output.labelmap import check_label_map_path, write_label_map

        if overlaps not in ("refuse", "last"):
            raise InvalidInputError(f"overlaps must be 'refuse' or 'last', got {overlaps!r}.")
        self._guard_output(path)
        check_label_map_path(path)  # before the label map of every segment is made
        labels, shared = self._label_map_and_overlaps()
        if overlaps == "refuse" and shared:
            raise InvalidInputError(
                f"{shared} voxel(s) belong to more than one segment, and a label map holds one "
                f"label per voxel: nothing was written to {path}. Save a .seg.nrrd "
                "(save_segmentation) to keep the overlaps, or pass overlaps='last' to let the "
                "segment added later win.")
        return write_label_map(path, labels, self.volume)

    def overlapping_voxels(self) -> int:
        """How many voxels belong to more than one segment (what a label map cannot hold)."""
        return self._label_map_and_overlaps()[1]

    def save_clicks(self, path: str | os.PathLike, coordinate_system: str = "LPS") -> Path:
        """Write every click still in effect as a Slicer point list (``.mrk.json``), segment by
        segment, slice by slice; :meth:`load_clicks` replays them to the same masks."""
        from ..output.markups import write_clicks

        self._guard_output(path)
        return write_clicks(path, self.click_points(), coordinate_system=coordinate_system)

    def click_points(self) -> list:
        """The clicks in effect, as :class:`~isegformer.output.markups.ClickPoint` (RAS)."""
        from ..output.markups import ClickPoint

        # Segment by segment (so a replay creates them in the same order), each segment's
        # slices in the order they were annotated; slices are independent of one another.
        points = []
        for segment in self._segments:
            for axis, index, annotation in segment.iter_annotations():
                for click in annotation.clicks:
                    ijk = slicing.slice_point_to_ijk(axis, index, click.row, click.col)
                    ras = self.volume.ijk_to_ras_points(ijk)
                    points.append(ClickPoint(tuple(float(v) for v in ras), click.positive, segment.name, axis))
        return points

    def load_clicks(
        self,
        paths: Union[str, os.PathLike, Iterable[Union[str, os.PathLike]]],
        segment: SegmentRef = None,
        axis: Optional[int] = None,
        progress: Optional[ProgressCallback] = None,
    ) -> int:
        """Replay the clicks of one or more ``.mrk.json`` files, in order, as one undoable action.

        A point's own segment and axis (files written by :meth:`save_clicks`) come first; else
        ``segment`` / ``axis``, else the current segment and the session's axis. Segments named
        in the file are created when missing. Every point is checked before any is applied.
        Returns the number of clicks replayed.
        """
        from ..output.markups import read_clicks
        from ..progress import report

        paths = arguments.paths(paths, "A clicks file")
        arguments.optional_callable(progress, "progress")
        points = [point for path in paths for point in read_clicks(path)]
        default_axis = self.default_axis if axis is None else arguments.axis(axis)
        fallback = None if segment is None else self.segment(segment).name
        planned = []
        for number, point in enumerate(points, start=1):
            point_axis = point.axis if point.axis is not None else default_axis
            ijk = self.volume.ras_to_ijk_points(np.asarray(point.position_ras))
            if not geometry.is_inside(ijk, self.volume.shape):
                raise InvalidInputError(
                    f"Click {number} ({point.label or 'no label'}) at RAS {tuple(np.round(point.position_ras, 2))} "
                    "is outside the volume: were the clicks placed on another image?"
                )
            planned.append((point.segment or fallback, ijk, point.positive, point_axis))
        with self.history.transaction(f"load {len(planned)} clicks"):
            for number, (name, ijk, positive, point_axis) in enumerate(planned):
                report(progress, number, len(planned), "clicks")
                target = self._segment_named_or_new(name)
                self._click_at_ijk(ijk, positive, target, point_axis, "")
            report(progress, len(planned), len(planned), "clicks")
        self._input_files += [("a click file this session replayed", str(p)) for p in paths]
        return len(planned)

    def _segment_named_or_new(self, name: Optional[str]) -> Segment:
        if name is None:
            return self.segment_or_new(None)
        for segment in self._segments:
            if segment.name == name:
                return segment
        return self.add_segment(name)

    def save_overlay(
        self,
        path: str | os.PathLike,
        axis: Optional[int] = None,
        indices: Optional[Sequence[int]] = None,
        columns: int = 4,
    ) -> Path:
        """A PNG montage of slices along ``axis`` with every segment's contour and the clicks,
        to a name ending in ``.png``. By default: the annotated slices, completed to 8 with
        evenly spaced slices where the segments are."""
        from ..output.overlay import OverlayClick, check_overlay_path, write_overlay

        self._guard_output(path)
        check_overlay_path(path)
        axis = self.default_axis if axis is None else arguments.axis(axis)
        columns = arguments.integer(columns, "columns", 1, 64)
        if indices is not None:
            indices = arguments.indices(self.volume.shape, axis, indices)
        masks = [s.mask(self.volume.shape) for s in self._segments]
        if indices is None:
            from ..output.overlay import pick_slices

            indices = sorted({i for s in self._segments for i in s.annotated_indices(axis)})
            if masks and len(indices) < 8:
                indices = sorted(set(indices) | set(pick_slices(masks, axis, 8 - len(indices))))
        clicks = [
            OverlayClick(index, click.row, click.col, click.positive, segment.color)
            for segment in self._segments
            for index, annotation in segment.annotations[axis].items()
            for click in annotation.clicks
        ]
        return write_overlay(
            path, self.volume.array, axis, masks, [s.color for s in self._segments],
            indices=indices, clicks=clicks, window=self.window, columns=columns,
            names=[s.name for s in self._segments],
        )

    # ----------------------------------------------------------------------------- models
    @property
    def window(self) -> tuple[float, float]:
        """The intensity window (low, high) mapped to [0, 1] for the networks."""
        if self._window is None:
            from ..volume.intensity import robust_window

            self._window = robust_window(self.volume.array)
        return self._window

    @property
    def predictor(self):
        """The click predictor, built on first use from ``click_model`` (default: the registry's
        :data:`DEFAULT_CLICK_MODEL`, downloaded once into the verified cache). While a warm-up
        runs, this waits for it; a failed warm-up raises its error here, once."""
        if self._predictor is None:
            loading, created = self._click_model_loading(warm=False)
            if created:
                loading.run()
            try:
                predictor = loading.result()
            except BaseException:
                with self._click_loading_lock:
                    if self._click_loading is loading:
                        self._click_loading = None  # reported now: the next click loads again
                raise
            self._predictor = predictor
        return self._predictor

    def warm_up_click_model(self, background: bool = True):
        """Load the click model and run one untimed prediction at this volume's slice size, so
        that the first click costs one click instead of an import, a load and a warm-up.

        Returns a handle (``done()``, ``result()``, ``load_seconds``, ``warm_seconds``). With
        ``background=False`` it blocks until the model is ready and raises its error; with
        ``background=True`` it returns at once and the first click waits for it and raises its
        error if it failed. Calling it again returns the running or finished handle.
        """
        from ..click_engine.warm_up import ClickModelWarmUp

        if self._predictor is not None:
            return ClickModelWarmUp.finished(self._predictor)
        loading, created = self._click_model_loading(warm=True)
        if created and background:
            from ..click_engine.sample_streams import prepare_thread

            prepare_thread()  # this thread's torch work (a propagation) keeps its threads meanwhile
            loading.start()
        elif created:
            loading.run()
        if not background:
            loading.result()
        return loading

    def _click_model_loading(self, warm: bool):
        """(handle, created): the click model's loading, a new one (not started) if none is
        running or finished, or if the last one failed and its error was already raised."""
        from ..click_engine.warm_up import ClickModelWarmUp

        with self._click_loading_lock:
            loading = self._click_loading
            if loading is None or (loading.failed() and loading.error_reported):
                axis = self.default_axis
                shape = tuple(n for a, n in enumerate(self.volume.shape) if a != axis)
                loading = ClickModelWarmUp(self._build_predictor, shape if warm else None)
                self._click_loading = loading
                return loading, True
            return loading, False

    def _build_predictor(self):
        from ..click_engine.predictor import ClickPredictor

        model = self._click_model
        if model is None or isinstance(model, (str, os.PathLike)):
            # Files are hashed before they are unpickled: a registry name is downloaded
            # once and verified, a local file is checked against its first-use hash.
            from ..weights import resolve_model

            model = resolve_model(DEFAULT_CLICK_MODEL if model is None else model, kind="click_model")
        if isinstance(model, ClickPredictor):
            return model
        return ClickPredictor(model, device=self.device, precision=self._click_precision)

    def _next_order(self) -> int:
        self._order += 1
        return self._order

    def __repr__(self) -> str:
        names = ", ".join(s.name for s in self._segments) or "no segments"
        return f"Session(volume {self.volume.shape} (k, j, i), {names})"


def _log_merged(target: Segment, sources: list[str]) -> None:
    if len(sources) > 1:
        log.info("%s all go to segment %r: its annotated slices hold their union.", ", ".join(sources), target.name)


def _point3(values: Sequence[float], what: str) -> np.ndarray:
    try:
        point = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        point = np.empty(0)
    if point.shape != (3,) or not np.all(np.isfinite(point)):
        raise InvalidInputError(f"{what} is three finite numbers, got {values!r}.")
    return point


def _same_clicks(engine_clicks: Sequence[Any], clicks: Sequence[SliceClick]) -> bool:
    return len(engine_clicks) == len(clicks) and all(
        float(a.y) == c.row and float(a.x) == c.col and bool(a.positive) == c.positive
        for a, c in zip(engine_clicks, clicks)
    )


def _slice_spacing(spacing_ijk: Sequence[float], axis: int) -> tuple[float, float]:
    """(row, col) pixel spacing in mm of a slice along ``axis``."""
    si, sj, sk = (float(v) for v in spacing_ijk)
    return {0: (sj, si), 1: (sk, si), 2: (sk, sj)}[axis]


def _checked_window(window: Optional[Sequence[float]]) -> Optional[tuple[float, float]]:
    return arguments.window(window)


def _overall(
    progress: Optional[ProgressCallback], part: int, parts: int, label: str
) -> Optional[ProgressCallback]:
    """Report one of ``parts`` equal parts of a job as percent of the whole (0..100)."""
    if progress is None:
        return None

    def step(done: int, total: int, message: str = "") -> None:
        fraction = (part + (done / total if total else 1.0)) / parts
        progress(int(round(100 * fraction)), 100, f"{label}: {message}" if message else label)

    return step
