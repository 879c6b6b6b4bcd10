"""The module's session, kept in the scene so that it survives saving and loading it.

What a session needs beyond the segments themselves is small: which points were placed, in
which order, on which slice of which segment (the click sequence of each annotated slice),
which slices were edited by hand and adopted as annotations, which slices a propagation wrote,
and what the module last wrote (to tell hand edits made since). The points themselves are the
positive and negative point lists (saved as ``.mrk.json``); the selections are the module's
parameter node. This file stores the rest as one JSON attribute on the segmentation node,
``iSegFormer.Session``, so Slicer writes it into the ``.mrml`` with the node:

    {"format": "isegformer-slicer-session", "version": 1,
     "clicks": [{"point": "<control point ID>", "positive": true, "segment": "<segment ID>",
                 "axis": 0, "index": 12}, ...],                        # in the order placed
     "handEdited": [{"segment": "...", "axis": 0, "slices": [3, 4]}],
     "propagated": [{"segment": "...", "axis": 0, "slices": [0, 1, ...]}],
     "written": [{"segment": "...", "axis": 0, "digests": ["1a2b3c4d5e6f", ...]}],
     "propagation": [{"segment": "...", "axis": 0, "method": "stcn",
                      "annotations": [[12, "<32 hex digits>"], ...],
                      "networks": "<32 hex digits>"}],
     "volume": "<8 hex digits>"}

``written`` holds one digest per slice (along each axis the segment has points on) of what
the module last wrote, kept up to date write by write; after loading, a slice whose voxels no longer match was edited by hand
and is kept as an annotation, never overwritten by a propagation.

``propagation`` (optional: attributes written before it existed read as without it) is the
session's propagation record of each segment: the axis and method of its last propagation, a
digest of each annotated slice's mask it was computed from and (optional) one of the weights of
the networks it ran with (a session with other weights recomputes everything). When the session
reopens, it gets the segment's voxels back as its propagated result with this record, so the
next propagation recomputes only around the annotations that are new or changed (hand-edited
slices among them), not the whole volume. ``volume`` (written with ``propagation``) is a CRC-32
of the voxels, shape and type of the volume those propagations ran on (the copy the session
opened on, not the node as it is when the attribute is written). A session opening on other
voxels (a filter run in place, another volume under the same node, an attribute without
``volume``) drops the records, so its next propagation recomputes everything instead of taking
up results of other voxels.

Reading goes through the package's bounded JSON reader; anything malformed raises the
package's SessionFileError naming the node, and nothing in the scene is changed.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

ATTRIBUTE = "iSegFormer.Session"
FORMAT = "isegformer-slicer-session"
VERSION = 1
#: the attribute stays well below this (a few KB per segment); a larger one was not written here
MAX_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class SavedClick:
    pointId: str
    positive: bool
    segmentId: str
    axis: int
    index: int


@dataclass
class SessionState:
    clicks: List[SavedClick] = field(default_factory=list)
    handEdited: Dict[Tuple[str, int], List[int]] = field(default_factory=dict)
    propagated: Dict[Tuple[str, int], List[int]] = field(default_factory=dict)
    written: Dict[Tuple[str, int], List[int]] = field(default_factory=dict)  # slice digests
    #: segment ID -> (axis, method, ((slice index, mask digest), ...), networks digest or ""):
    #: the propagation record
    propagation: Dict[str, Tuple[int, str, Tuple[Tuple[int, str], ...], str]] = field(default_factory=dict)
    #: the source volume's digest (volumeDigest) when the propagation records were written
    volumeDigest: Optional[str] = None

    def annotatedSlices(self, segmentId, axis) -> List[int]:
        return sorted({c.index for c in self.clicks if (c.segmentId, c.axis) == (segmentId, axis)})


def _weights(length: int, salt: int) -> np.ndarray:
    """Pseudo-random 16-bit weights for the indices 0..length-1 of one array axis (splitmix64)."""
    z = (np.arange(length, dtype=np.uint64) + np.uint64(salt)) * np.uint64(0x9E3779B97F4A7C15)
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return (z & np.uint64(0xFFFF)).astype(np.float64)


def _digests(block: np.ndarray, lows, shape, axis) -> List[int]:
    """Per-slice sums, along ``axis``, of ``block`` (at ``lows`` in a volume of ``shape``)
    weighted by the product of two per-axis weights of the other two axes, for two independent
    weight sets. Equal slices give equal digests; a write changes them by the digests of the
    difference it makes, so they follow every write without rereading the volume. Products
    are below 2**32, sums over a slice below 2**53: exact in float64, computed with BLAS."""
    others = [a for a in range(3) if a != axis]
    values = np.asarray(block, np.float64)
    letters = "kji"
    spec = "%s,%s,%s->%s" % (letters, letters[others[0]], letters[others[1]], letters[axis])
    result = []
    for salt in (0x51CE, 0xB0B):
        first = _weights(shape[others[0]], salt + 17 * others[0])[lows[others[0]]:lows[others[0]] + values.shape[others[0]]]
        second = _weights(shape[others[1]], salt + 17 * others[1])[lows[others[1]]:lows[others[1]] + values.shape[others[1]]]
        result.append(np.rint(np.einsum(spec, values, first, second, optimize=True)).astype(np.int64))
    return [int(a) * (1 << 53) + int(b) for a, b in zip(*result)]


def sliceDigests(mask: np.ndarray, axis: int) -> List[int]:
    """One digest per slice of a (k, j, i) mask along ``axis`` (see :func:`_digests`)."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return [0] * mask.shape[axis]
    out = []
    step = max(1, (1 << 22) // max(1, mask[0].size))  # float64 copies of a few MB at a time
    for start in range(0, mask.shape[0], step):
        chunk = _digests(mask[start:start + step], (start, 0, 0), mask.shape, axis)
        out = chunk if axis != 0 and not out else (out + chunk if axis == 0 else [a + b for a, b in zip(out, chunk)])
    return out


def digestChange(before: np.ndarray, after: np.ndarray, lows, shape, axis) -> np.ndarray:
    """How a write from ``before`` to ``after`` (a block at ``lows`` of a volume of ``shape``)
    changes the slice digests along ``axis``: an array (of ints) to add to the digests."""
    change = np.asarray(after, np.int8) - np.asarray(before, np.int8)
    partial = _digests(change, lows, shape, axis)
    full = np.zeros(shape[axis], dtype=object)
    full[lows[axis]:lows[axis] + len(partial)] = partial
    return full


def changedSlices(mask: np.ndarray, axis: int, digests: Sequence[int]) -> List[int]:
    """Slices along ``axis`` whose voxels differ from ``digests`` (all of them if the count differs)."""
    current = sliceDigests(mask, axis)
    if len(current) != len(digests):
        return list(range(len(current)))
    return [i for i, (a, b) in enumerate(zip(current, digests)) if a != b]


def encode(state: SessionState) -> str:
    import json

    def slices(table, key):
        return [{"segment": sid, "axis": axis, key: [int(v) for v in values]}
                for (sid, axis), values in sorted(table.items())]

    document = {
        "format": FORMAT,
        "version": VERSION,
        "clicks": [{"point": c.pointId, "positive": bool(c.positive), "segment": c.segmentId,
                    "axis": int(c.axis), "index": int(c.index)} for c in state.clicks],
        "handEdited": slices(state.handEdited, "slices"),
        "propagated": slices(state.propagated, "slices"),
        "written": [{"segment": sid, "axis": axis, "digests": ["%x" % d for d in digests]}
                    for (sid, axis), digests in sorted(state.written.items())],
        "propagation": [dict({"segment": sid, "axis": int(axis), "method": method,
                              "annotations": [[int(index), digest] for index, digest in digests]},
                             **({"networks": networks} if networks else {}))
                        for sid, (axis, method, digests, networks) in sorted(state.propagation.items())],
    }
    if state.volumeDigest is not None:
        document["volume"] = state.volumeDigest
    return json.dumps(document, separators=(",", ":"))


def decode(text: str, where: str = "the segmentation") -> SessionState:
    """Parse an attribute written by :func:`encode`; SessionFileError when it is not one."""
    from isegformer.errors import SessionFileError
    from isegformer.json_io import loads_bounded
    from isegformer.segments.segment import MASK_DIGEST_LENGTH, is_mask_digest

    def fail(what):
        raise SessionFileError(
            f"The iSegFormer session stored on {where} ({ATTRIBUTE}) is unreadable: {what}. "
            "The segments are unaffected; remove the attribute (Data module, node information) "
            "or place the points again."
        )

    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        fail(f"it is larger than {MAX_BYTES} bytes")
    document = loads_bounded(text, what=f"the iSegFormer session stored on {where} ({ATTRIBUTE})",
                             error=SessionFileError,
                             advice=" The segments are unaffected; remove the attribute or place the points again.")
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        fail("it is not an iSegFormer session")
    if document.get("version") != VERSION:
        fail(f"version {document.get('version')!r} is not {VERSION} (written by another version of the module)")

    def integer(value, what, low=0):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            fail(f"{what} must be a whole number >= {low}, got {value!r}")
        return value

    def text_of(value, what):
        if not isinstance(value, str) or not value:
            fail(f"{what} must be a non-empty text, got {value!r}")
        return value

    def axis_of(value):
        if value not in (0, 1, 2) or isinstance(value, bool):
            fail(f"an axis must be 0, 1 or 2, got {value!r}")
        return value

    def entries(name):
        value = document.get(name, [])
        if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
            fail(f"'{name}' must be a list of objects")
        return value

    state = SessionState()
    for entry in entries("clicks"):
        if not isinstance(entry.get("positive"), bool):
            fail(f"a click's 'positive' must be true or false, got {entry.get('positive')!r}")
        state.clicks.append(SavedClick(text_of(entry.get("point"), "a click's point ID"), entry["positive"],
                                       text_of(entry.get("segment"), "a click's segment ID"),
                                       axis_of(entry.get("axis")), integer(entry.get("index"), "a slice index")))
    for name, table in (("handEdited", state.handEdited), ("propagated", state.propagated)):
        for entry in entries(name):
            values = entry.get("slices")
            if not isinstance(values, list):
                fail(f"'{name}' slices must be a list")
            key = (text_of(entry.get("segment"), "a segment ID"), axis_of(entry.get("axis")))
            table[key] = [integer(v, "a slice index") for v in values]
    for entry in entries("written"):
        digests = entry.get("digests")
        if not isinstance(digests, list):
            fail("'written' digests must be a list")
        try:
            values = [int(d, 16) for d in digests]
        except (TypeError, ValueError):
            fail("a digest is not a hexadecimal number")
        state.written[(text_of(entry.get("segment"), "a segment ID"), axis_of(entry.get("axis")))] = values
    for entry in entries("propagation"):
        sid = text_of(entry.get("segment"), "a segment ID")
        if sid in state.propagation:
            fail(f"'propagation' names the segment {sid!r} twice")
        axis, method = axis_of(entry.get("axis")), text_of(entry.get("method"), "a propagation method")
        pairs = entry.get("annotations")
        if not isinstance(pairs, list):
            fail("'propagation' annotations must be a list")
        digests = []
        for pair in pairs:
            if not isinstance(pair, list) or len(pair) != 2:
                fail(f"a propagation annotation must be [slice index, mask digest], got {pair!r}")
            if not is_mask_digest(pair[1]):
                fail(f"a mask digest must be {MASK_DIGEST_LENGTH} lower-case hex digits, got {pair[1]!r}")
            digests.append((integer(pair[0], "a slice index"), pair[1]))
        if len({index for index, _ in digests}) != len(digests):
            fail("a propagation record names one slice twice")
        networks = entry.get("networks", "")
        if networks != "" and not is_mask_digest(networks):
            fail(f"a networks digest must be {MASK_DIGEST_LENGTH} lower-case hex digits, got {networks!r}")
        state.propagation[sid] = (axis, method, tuple(sorted(digests)), networks)
    volume = document.get("volume")
    if volume is not None:
        if not isinstance(volume, str) or len(volume) != 8 or volume.strip("0123456789abcdef"):
            fail(f"'volume' must be 8 lower-case hex digits, got {volume!r}")
        state.volumeDigest = volume
    return state


def volumeDigest(array: np.ndarray) -> str:
    """CRC-32 (8 hex digits) of a volume's voxels, shape and type: equal volumes give equal
    digests, and a change of any voxel changes it (barring a 1 in 2**32 coincidence)."""
    array = np.ascontiguousarray(array)
    crc = zlib.crc32(f"{array.shape}{array.dtype.str}".encode())
    return "%08x" % zlib.crc32(memoryview(array).cast("B"), crc)


def store(segmentationNode, state: SessionState) -> None:
    """Write the session onto the segmentation node (saved with the scene)."""
    segmentationNode.SetAttribute(ATTRIBUTE, encode(state))


def load(segmentationNode) -> Optional[SessionState]:
    """The session stored on the node, None when it has none."""
    text = segmentationNode.GetAttribute(ATTRIBUTE) if segmentationNode is not None else None
    if not text:
        return None
    return decode(text, where=f"the segmentation {segmentationNode.GetName()!r}")


class SceneStateActions:
    """The Logic's side: keep the stored session up to date, and take it up after a load.

    Mixed into iSegFormerSlicerLogic (it uses its ``segmentationNode``, ``volumeNode``,
    ``segmentWriter``, ``locateClick``, ``_records``, ``_order``, ``_handEdited``, ``_written``,
    ``_propagated``, ``_propagationRecords``, ``_recordsVolumeDigest``, ``_sessionVolumeDigest``,
    ``_stale``, ``_bridge`` and ``_opening``).
    """

    def _storeSessionState(self):
        """Write the session onto the segmentation node (after every change of it)."""
        node = self.segmentationNode
        if node is None:
            return
        state = SessionState()
        for record in sorted(self._records, key=lambda r: r.order):
            state.clicks.append(SavedClick(record.pointId, bool(record.positive), record.segmentId,
                                           int(record.point.axis), int(record.point.index)))
        state.handEdited = {key: sorted(values) for key, values in self._handEdited.items() if values}
        state.propagated = {key: sorted(values) for key, values in self._propagated.items() if values}
        for key in sorted({(c.segmentId, c.axis) for c in state.clicks}):
            sid, axis = key
            if key not in self._digests and self._written.get(sid) is not None:
                self._digests[key] = np.array(sliceDigests(self._written[sid], axis), dtype=object)
            if key in self._digests:
                state.written[key] = [int(d) for d in self._digests[key]]
        state.propagation = dict(self._propagationRecords)
        if state.propagation:
            state.volumeDigest = self._recordsVolumeDigest
        store(node, state)
        self._resumeChecked = node.GetID()  # what is stored now is this session's own

    def _recordPropagation(self, update):
        """Keep the session's propagation record of a propagation result just written (stored
        with the session); a result without one forgets the segment's earlier record."""
        if getattr(update, "method", "") and getattr(update, "digests", None) is not None:
            if self._recordsVolumeDigest != self._sessionVolumeDigest:
                self._propagationRecords = {}  # computed on other voxels: none is valid with this one
            self._recordsVolumeDigest = self._sessionVolumeDigest
            self._propagationRecords[update.segment] = (int(update.axis), str(update.method),
                                                        tuple((int(i), str(d)) for i, d in update.digests),
                                                        str(getattr(update, "networks", "")))
        else:
            self._propagationRecords.pop(update.segment, None)
        self._storeSessionState()

    def _propagationRestores(self, digest):
        """(segment ID, axis, method, voxels, digests, networks) of each segment with a propagation
        record, its voxels read now (GUI thread), for a session about to open on voxels whose
        digest is ``digest`` (``volumeDigest``; see ``SessionBridge.restore_propagation``).
        Records made on other voxels are dropped instead: that session propagates everything
        again."""
        import logging

        self._sessionVolumeDigest = digest
        segmentation = self.segmentationNode.GetSegmentation() if self.segmentationNode is not None else None
        if segmentation is None or self.volumeNode is None or not self._propagationRecords:
            return []
        if self._recordsVolumeDigest != digest:
            logging.warning("iSegFormer: the source volume's voxels are not the ones the last propagations ran on "
                            "(changed since, or not recorded): the next propagation recomputes every slice instead "
                            "of taking up their results.")
            self._propagationRecords = {}
            self._storeSessionState()
            return []
        writer = self.segmentWriter()
        return [(sid, axis, method, writer.read(sid).astype(bool), digests, networks)
                for sid, (axis, method, digests, networks) in sorted(self._propagationRecords.items())
                if segmentation.GetSegment(sid) is not None]

    @staticmethod
    def _restorePropagations(bridge, restores):
        """Hand a session that just opened (worker thread) the results of
        :meth:`_propagationRestores`. One that the session refuses (a record that does not fit
        the volume) is logged and skipped: that segment's next propagation recomputes it all,
        and the session opens anyway."""
        import logging

        for segmentId, axis, method, mask, digests, networks in restores:
            try:
                bridge.restore_propagation(segmentId, axis, method, mask, digests, networks)
            except Exception as err:  # a record that does not fit must not keep the session from opening
                logging.warning("iSegFormer: the stored propagation of segment %r is not taken up (%s); "
                                "its next propagation recomputes the whole volume.", segmentId, err)

    def resumeAfterImport(self):
        """Right after a scene import: take up the session stored on the parameter node's
        segmentation, if it has one (the points, annotated slices and propagation records;
        no model is loaded). Errors are logged, not raised."""
        node = self.segmentationNode
        if node is not None and node.GetAttribute(ATTRIBUTE):
            self._ensureResumed()

    def _followWrite(self, segmentId, before, after, lows):
        """Keep the slice digests of what the module wrote in step with a write."""
        shape = self._written[segmentId].shape
        for (sid, axis), digests in self._digests.items():
            if sid == segmentId:
                digests += digestChange(before, after, lows, shape, axis)

    def _ensureResumed(self):
        """Take up a stored session once per segmentation (errors are logged, not raised)."""
        node = self.segmentationNode
        if node is None or self._resumeChecked == node.GetID():
            return
        try:
            self.resumeFromScene()
        except Exception as err:  # a broken attribute must not break the module: it says so
            import logging

            logging.error("iSegFormer: %s", err)
            self._resumeChecked = node.GetID()

    def resumeFromScene(self):
        """Continue the session stored in the scene (after loading a saved scene).

        Restores the click sequence of every annotated slice (from the point lists, in the
        stored order), the slices edited by hand and the propagated ones. A slice whose voxels
        changed since the module last wrote it (edited after the last write, or while the
        module was not running) becomes an annotation: propagation never overwrites it. The
        session reopens with the clicks replayed on its next use, so a new point on an
        annotated slice continues that slice's sequence, and with each segment's voxels as its
        propagated result and the stored propagation record, so a propagation recomputes only
        around new or changed annotations. Returns True when a session was found.
        """
        from . import clicks

        node = self.segmentationNode
        self._resumeChecked = node.GetID() if node is not None else None
        if node is None or self.volumeNode is None or self._records:
            return False
        state = load(node)
        if state is None:
            return False
        segmentation = node.GetSegmentation()
        positions = clicks.currentPositions()  # (positive, point ID): IDs are unique per list only
        records = []
        for order, saved in enumerate(state.clicks, start=1):
            if segmentation.GetSegment(saved.segmentId) is None:
                continue  # the segment was deleted: its clicks go with it
            position = positions.get((saved.positive, saved.pointId))
            if position is None:
                continue  # deleted while the module was away: its slice keeps what it shows
            point = self.locateClick(position, axis=saved.axis)
            records.append(clicks.ClickRecord(saved.pointId, saved.positive, saved.segmentId, point, order))
        writer = self.segmentWriter()
        handEdited = {key: set(values) for key, values in state.handEdited.items()
                      if segmentation.GetSegment(key[0]) is not None}
        written = {}
        for (sid, axis), digests in state.written.items():
            if segmentation.GetSegment(sid) is None:
                continue
            current = writer.read(sid)
            handEdited.setdefault((sid, axis), set()).update(changedSlices(current, axis, digests))
            written[sid] = current
        for (sid, axis), edited in handEdited.items():
            if sid not in written:
                written[sid] = writer.read(sid)
            for index in edited:  # what the module wrote there is unknown: count them as edited
                plane = np.moveaxis(written[sid], axis, 0)
                if 0 <= index < plane.shape[0]:
                    plane[index] = ~plane[index]
        self._records = records
        self._order = max([len(state.clicks)] + [r.order for r in records])
        self._handEdited = {key: set() for key in handEdited}  # adopted again at the next propagation
        self._written = written
        self._digests = {}  # recomputed from what is now the module's last write
        self._propagated = {key: set(values) for key, values in state.propagated.items()}
        self._propagationRecords = {sid: record for sid, record in state.propagation.items()
                                    if segmentation.GetSegment(sid) is not None}
        self._recordsVolumeDigest = state.volumeDigest  # checked when a session opens on the voxels
        if self._bridge is not None or self._opening:
            self._stale = True  # a session opened before the resume: reopen it with the clicks
        return True
