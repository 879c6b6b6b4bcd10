"""Writing slices of a segment exactly as a Segment Editor effect would, touching only what changes.

A click's result is one slice of a segment; a propagation's result is many. Both must land as a
Segment Editor effect's edit would: the editor's *editable area* (mask mode, mask segment,
editable intensity range) limits where the edited segment may change, and its *overwrite mode*
says which other segments lose the voxels the edited segment now covers. That is
``vtkSlicerSegmentEditorLogic.ModifySegmentByLabelmap`` in its "set" mode, whose rules
``isegformer.slicer_support.slice_write`` states per voxel.

Slicer's call cannot be used for a slice as it is: in "set" mode it first clears the whole
segment, so a one-slice modifier wipes every other slice, and a modifier of the whole volume
reads and writes every segment's whole labelmap (seconds at 160x384x384 with a few segments,
and it erases other segments' overlaps in slices that were not edited). So the writer applies
the same rules to the edited slab only:

1. read the slab of every segment straight from its labelmap layer (a numpy view of Slicer's
   own ``vtkOrientedImageData``; no export, no temporary node);
2. compose the new slab of each segment with the editor's rules;
3. write the changed voxels into the layers in place, growing a layer's extent when a voxel
   outside it becomes set, and moving the edited segment to its own layer (Slicer's
   ``SeparateSegmentLabelmap``) where it would overlap a segment of its layer that keeps its
   voxels, as Slicer's ``SetBinaryLabelmapToSegment`` does;
4. tell the segmentation what changed with the events Slicer's own write sends, so views,
   other representations and the undo history follow.

Layers whose voxel grid is not the source volume's (a segmentation made on another image)
go through Slicer's ``SetBinaryLabelmapToSegment`` instead, which resamples.

The tests compare every mask mode, overwrite mode and intensity setting with Slicer's editor
logic, voxel for voxel, and check that nothing outside the edited slices changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from . import invalidInput as _invalid, missingSegment


def _sliceWrite():
    """The Segment Editor's rules (isegformer; imported on first use, after the dependency step)."""
    from isegformer.slicer_support import slice_write

    return slice_write


#: vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
LABELMAP = "Binary labelmap"

#: how far (in voxels) a layer's lattice may sit from the volume's and still count as the same
GRID_TOLERANCE = 1e-4


@dataclass(frozen=True)
class WriteReport:
    """What one write changed: segment IDs and slice indices (along the written axis)."""

    segments: Tuple[str, ...] = ()
    indices: Tuple[int, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.segments)


def _matrix(vtkMatrix) -> np.ndarray:
    return np.array([[vtkMatrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def volumeIJKToRAS(volumeNode) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return _matrix(matrix)


def editRulesFromNodes(segmentationNode, segmentEditorNode=None):
    """The Segment Editor's masking and overwrite settings, as the editor logic reads them.

    Visibility is the segmentation display node's per-segment visibility (what
    ``GenerateEditMask`` and the overwrite-visible mode use). Without an editor node: edit
    everywhere, never overwrite (the safe default for scripts).
    """
    slice_write = _sliceWrite()
    visible = None
    displayNode = segmentationNode.GetDisplayNode() if segmentationNode is not None else None
    if displayNode is not None:
        ids = segmentationNode.GetSegmentation().GetSegmentIDs()
        visible = frozenset(s for s in ids if displayNode.GetSegmentVisibility(s))
    if segmentEditorNode is None:
        return slice_write.EditRules(visible_segments=visible)
    intensityRange = None
    if segmentEditorNode.GetSourceVolumeIntensityMask():
        intensityRange = tuple(segmentEditorNode.GetSourceVolumeIntensityMaskRange())
    return slice_write.EditRules(
        mask_mode=slice_write.MaskMode(segmentEditorNode.GetMaskMode()),
        overwrite_mode=slice_write.OverwriteMode(segmentEditorNode.GetOverwriteMode()),
        mask_segment=segmentEditorNode.GetMaskSegmentID() or None,
        intensity_range=intensityRange,
        visible_segments=visible,
    )


class _Box:
    """An index box on the volume grid, (k, j, i) half-open ranges."""

    def __init__(self, lows, highs):
        self.lows = tuple(int(v) for v in lows)
        self.highs = tuple(int(v) for v in highs)

    @property
    def shape(self):
        return tuple(max(0, h - l) for l, h in zip(self.lows, self.highs))

    @property
    def empty(self):
        return any(h <= l for l, h in zip(self.lows, self.highs))

    def intersect(self, other: "_Box") -> "_Box":
        return _Box(np.maximum(self.lows, other.lows), np.minimum(self.highs, other.highs))

    def union(self, other: "_Box") -> "_Box":
        if self.empty:
            return other
        if other.empty:
            return self
        return _Box(np.minimum(self.lows, other.lows), np.maximum(self.highs, other.highs))

    def within(self, outer: "_Box") -> Tuple[slice, ...]:
        """Index of this box inside an array that covers ``outer``."""
        return tuple(slice(l - o, h - o) for l, h, o in zip(self.lows, self.highs, outer.lows))


def _occupiedBox(block: np.ndarray, box: _Box) -> _Box:
    """The box of ``block``'s non-zero voxels (``block`` covers ``box``), from its projections
    (much faster than np.nonzero on a large slab)."""
    lows, highs = [], []
    for axis in range(3):
        present = np.flatnonzero(block.any(axis=tuple(a for a in range(3) if a != axis)))
        if not len(present):
            return _Box((0, 0, 0), (0, 0, 0))
        lows.append(box.lows[axis] + int(present[0]))
        highs.append(box.lows[axis] + int(present[-1]) + 1)
    return _Box(lows, highs)


class _Layer:
    """One labelmap layer of the segmentation, seen on the volume's voxel grid."""

    def __init__(self, image, offset):
        self.image = image
        self.offset = offset  # volume (k, j, i) = layer (k, j, i) + offset; None: other grid

    @property
    def aligned(self) -> bool:
        return self.offset is not None

    def box(self) -> _Box:
        """The layer's extent on the volume grid (empty when it holds no voxels)."""
        i0, i1, j0, j1, k0, k1 = self.image.GetExtent()
        if i0 > i1 or j0 > j1 or k0 > k1 or self.image.GetPointData().GetScalars() is None:
            return _Box((0, 0, 0), (0, 0, 0))
        dk, dj, di = self.offset
        return _Box((k0 + dk, j0 + dj, i0 + di), (k1 + 1 + dk, j1 + 1 + dj, i1 + 1 + di))

    def array(self) -> np.ndarray:
        """The layer's voxels as a writable (k, j, i) numpy view of Slicer's own buffer."""
        shape = self.box().shape
        return numpy_support.vtk_to_numpy(self.image.GetPointData().GetScalars()).reshape(shape)

    def read(self, box: _Box) -> np.ndarray:
        """The label values in ``box`` (zero outside the layer's extent)."""
        dtype = self._dtype()
        out = np.zeros(box.shape, dtype)
        inner = box.intersect(self.box())
        if not inner.empty:
            out[inner.within(box)] = self.array()[inner.within(self.box())]
        return out

    def _dtype(self):
        scalars = self.image.GetPointData().GetScalars()
        if scalars is None:
            return np.uint8
        return numpy_support.get_numpy_array_type(scalars.GetDataType())

    def key(self) -> str:
        """Identifies the layer: segments sharing a layer share this image object."""
        return self.image.GetAddressAsString("vtkOrientedImageData")

    def grow(self, box: _Box, ijkToRas: np.ndarray, largestLabel: int) -> None:
        """Make the layer's extent cover ``box`` (on the volume grid), keeping its voxels, and
        its voxel type hold ``largestLabel``.

        The image object stays the same (segments sharing the layer keep pointing at it); its
        scalars are reallocated with the union extent. An empty layer takes the volume's grid.
        """
        old = self.box()
        if not old.empty:
            slicer.vtkOrientedImageDataResample.CastImageForValue(self.image, int(largestLabel))
        wanted = old.union(box)
        if not old.empty and wanted.lows == old.lows and wanted.highs == old.highs:
            return
        dtype = np.dtype(self._dtype())
        if old.empty and largestLabel > np.iinfo(dtype).max:
            dtype = np.dtype(np.int16 if largestLabel <= np.iinfo(np.int16).max else np.int32)
        keep = self.array().copy() if not old.empty else None
        if old.empty:  # no voxels yet: use the volume's lattice
            matrix = vtk.vtkMatrix4x4()
            for r in range(4):
                for c in range(4):
                    matrix.SetElement(r, c, ijkToRas[r, c])
            self.image.SetImageToWorldMatrix(matrix)
            self.offset = (0, 0, 0)
        dk, dj, di = self.offset
        (k0, j0, i0), (k1, j1, i1) = wanted.lows, wanted.highs
        self.image.SetExtent(i0 - di, i1 - 1 - di, j0 - dj, j1 - 1 - dj, k0 - dk, k1 - 1 - dk)
        self.image.AllocateScalars(numpy_support.get_vtk_array_type(dtype), 1)
        view = self.array()
        view[...] = 0
        if keep is not None:
            view[old.within(wanted)] = keep


class SegmentWriter:
    """Reads and writes a segmentation's segments on the source volume's voxel grid.

    ``segmentEditorNode`` supplies the masking and overwrite settings (None: edit everywhere,
    overwrite nothing). The segmentation and the volume must be under the same transform.
    """

    def __init__(self, segmentationNode, volumeNode, segmentEditorNode=None):
        if segmentationNode is None or volumeNode is None:
            raise _invalid("Select the source volume and the segmentation first.")
        if volumeNode.GetImageData() is None:
            raise _invalid(
                f"The volume {volumeNode.GetName()!r} has no image data: load or select another volume."
            )
        self.segmentationNode = segmentationNode
        self.volumeNode = volumeNode
        self.segmentEditorNode = segmentEditorNode
        self._inverse = None  # (IJK-to-RAS, its inverse) of the volume, reused while unchanged

    # ---- geometry ------------------------------------------------------------------------
    @property
    def shape(self) -> Tuple[int, int, int]:
        i, j, k = self.volumeNode.GetImageData().GetDimensions()
        return (k, j, i)

    def _checkFrame(self):
        if self.segmentationNode.GetParentTransformNode() is not self.volumeNode.GetParentTransformNode():
            raise _invalid(
                "The segmentation and the source volume are under different transforms: put the "
                "segmentation under the volume's transform (Data module) and try again."
            )

    def _layer(self, segmentId) -> _Layer:
        segment = self.segmentationNode.GetSegmentation().GetSegment(segmentId)
        if segment is None:
            raise missingSegment(self.segmentationNode, segmentId)
        image = segment.GetRepresentation(LABELMAP)
        if image is None:
            raise _invalid(
                f"The segment {segment.GetName()!r} has no binary labelmap: in the Segmentations "
                "module, make the binary labelmap the source representation, then try again."
            )
        return _Layer(image, self._offset(image))

    def _offset(self, image):
        """Integer (k, j, i) shift from the layer's lattice to the volume's, None if they differ."""
        extent = image.GetExtent()
        if extent[0] > extent[1] or extent[2] > extent[3] or extent[4] > extent[5]:
            return (0, 0, 0)  # empty: takes the volume's lattice when it is first written
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        layerToVolume = self._rasToVolumeIJK() @ _matrix(matrix)
        if np.abs(layerToVolume[:3, :3] - np.eye(3)).max() > GRID_TOLERANCE:
            return None
        shift = layerToVolume[:3, 3]
        rounded = np.round(shift)
        if np.abs(shift - rounded).max() > GRID_TOLERANCE:
            return None
        di, dj, dk = (int(v) for v in rounded)
        return (dk, dj, di)

    def _rasToVolumeIJK(self):
        matrix = volumeIJKToRAS(self.volumeNode)
        if self._inverse is None or not np.array_equal(self._inverse[0], matrix):
            self._inverse = (matrix, np.linalg.inv(matrix))
        return self._inverse[1]

    def _slab(self, axis, first, last) -> _Box:
        shape = self.shape
        if axis not in (0, 1, 2):
            raise _invalid(f"The axis must be 0 (k), 1 (j) or 2 (i), got {axis!r}.")
        if not 0 <= first <= last < shape[axis]:
            raise _invalid(
                f"Slices {first}..{last} are outside the volume, which has {shape[axis]} slices "
                f"along {'kji'[axis]}."
            )
        lows, highs = [0, 0, 0], list(shape)
        lows[axis], highs[axis] = first, last + 1
        return _Box(lows, highs)

    # ---- reading ---------------------------------------------------------------------------
    def read(self, segmentId, axis=0, first=0, last=None) -> np.ndarray:
        """Slices ``first..last`` along ``axis`` of a segment, as a (k, j, i) bool array.

        With the defaults: the whole segment. Nothing is added to the scene.
        """
        last = self.shape[axis] - 1 if last is None else last
        return self._readBox(segmentId, self._slab(axis, first, last))

    def _readBox(self, segmentId, box) -> np.ndarray:
        layer = self._layer(segmentId)
        label = self.segmentationNode.GetSegmentation().GetSegment(segmentId).GetLabelValue()
        if layer.aligned:
            return layer.read(box) == label
        return self._resampledBox(layer.image, box) == label

    def _boxImage(self, box, scalarType=vtk.VTK_UNSIGNED_CHAR):
        """An empty oriented image on the volume grid covering ``box``."""
        image = slicer.vtkOrientedImageData()
        (k0, j0, i0), (k1, j1, i1) = box.lows, box.highs
        image.SetExtent(i0, i1 - 1, j0, j1 - 1, k0, k1 - 1)
        matrix = vtk.vtkMatrix4x4()
        self.volumeNode.GetIJKToRASMatrix(matrix)
        image.SetImageToWorldMatrix(matrix)
        image.AllocateScalars(scalarType, 1)
        return image

    def _resampledBox(self, layerImage, box) -> np.ndarray:
        reference = self._boxImage(box)
        output = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            layerImage, reference, output, False, True)
        # the output is on the volume's lattice but its extent need not be the box's
        return _Layer(output, (0, 0, 0)).read(box)

    def _source(self, box) -> np.ndarray:
        image = self.volumeNode.GetImageData()
        scalars = image.GetPointData().GetScalars()
        components = scalars.GetNumberOfComponents()
        array = numpy_support.vtk_to_numpy(scalars).reshape(self.shape + ((components,) if components > 1 else ()))
        block = array[box.within(_Box((0, 0, 0), self.shape))]
        return block[..., 0] if components > 1 else block  # the editor uses the first component

    # ---- writing ---------------------------------------------------------------------------
    def write(self, segmentId, axis, first, masks, beforeWrite: Optional[Callable[[], None]] = None) -> WriteReport:
        """Set slices ``first..first+n-1`` along ``axis`` of a segment to ``masks``.

        ``masks``: the new slices stacked along ``axis`` (a (k, j, i) block of the slab's shape),
        non-zero inside. The editor's rules decide what lands; other segments lose voxels per
        the overwrite mode. ``beforeWrite`` is called once, just before the first voxel changes
        (the undo state is saved there); it is not called when nothing would change.
        """
        self._checkFrame()
        masks = np.asarray(masks)
        if masks.ndim != 3:
            raise _invalid(f"The new slices must form a 3D (k, j, i) block, got shape {masks.shape}.")
        box = self._slab(axis, first, first + masks.shape[axis] - 1)
        if masks.shape != box.shape:
            raise _invalid(
                f"The new slices have shape {masks.shape}; slices {first}.. along {'kji'[axis]} "
                f"of this volume have shape {box.shape}."
            )
        segmentation = self.segmentationNode.GetSegmentation()
        if segmentation.GetSegment(segmentId) is None:
            raise missingSegment(self.segmentationNode, segmentId)
        rules = editRulesFromNodes(self.segmentationNode, self.segmentEditorNode)
        ids = list(segmentation.GetSegmentIDs())
        # Nothing can change where neither the new mask nor the old segment is set: there the
        # segment stays empty and erases nothing. Work on the box around both only.
        masks = masks != 0
        active = _occupiedBox(masks, box).union(box.intersect(self._targetBound(segmentId)))
        if active.empty:
            return WriteReport()
        masks = masks[active.within(box)]
        blocks = {sid: self._readBox(sid, active) for sid in ids}
        source = self._source(active) if rules.intensity_range is not None else None
        changes = _sliceWrite().compose_block(masks, segmentId, blocks, rules, source)
        if not changes:
            return WriteReport()
        self._checkWritableGrids(changes)
        if beforeWrite is not None:
            beforeWrite()
        self._apply(segmentId, active, blocks, changes)
        changedIndices = np.zeros(active.shape[axis], bool)
        other = tuple(a for a in range(3) if a != axis)
        for sid, new in changes.items():
            changedIndices |= np.any(new != blocks[sid], axis=other)
        return WriteReport(
            segments=tuple(sid for sid in ids if sid in changes),
            indices=tuple(int(active.lows[axis] + i) for i in np.flatnonzero(changedIndices)),
        )

    def _targetBound(self, segmentId) -> _Box:
        """A box on the volume grid that holds every voxel of the segment (its layer's extent)."""
        layer = self._layer(segmentId)
        if layer.aligned:
            return layer.box()
        return _Box((0, 0, 0), self.shape)

    def checkWritable(self, segmentId):
        """Raise now, before any work for it is done, if a write into this segment would be
        refused (it is missing, or on another grid than the volume)."""
        self._checkFrame()
        if self.segmentationNode.GetSegmentation().GetSegment(segmentId) is None:
            raise missingSegment(self.segmentationNode, segmentId)
        self._checkWritableGrids([segmentId])

    def _checkWritableGrids(self, changes):
        """Refuse, before anything changes, a write into a layer that is not on the volume's
        lattice (an oversampled segmentation, or one made on another volume's grid): Slicer's
        ``SetBinaryLabelmapToSegment`` would resample the whole layer onto the volume's coarser
        lattice, losing the segment's detail in every slice, and that of each other segment the
        write overwrites."""
        segmentation = self.segmentationNode.GetSegmentation()
        for sid in changes:
            if not self._layer(sid).aligned:
                raise _invalid(
                    f"The segment {segmentation.GetSegment(sid).GetName()!r} is stored on another grid than "
                    f"the source volume {self.volumeNode.GetName()!r} (an oversampled segmentation, or one "
                    "made on another volume), and writing into it would resample the whole segment onto "
                    "the volume's grid. Nothing was changed. Choose the volume the segmentation was made "
                    "on as the source volume, or in the Segment Editor use 'Specify geometry' with this "
                    "volume and oversampling 1 (which resamples the segments once, on purpose), then try again."
                )

    def _apply(self, target, box, blocks, changes):
        segmentation = self.segmentationNode.GetSegmentation()
        if self._layer(target).aligned:
            self._separateIfOverlapping(target, box, blocks, changes)
        layers: Dict[str, Tuple[_Layer, List[str]]] = {}
        for sid in changes:  # every layer is on the volume's lattice (_checkWritableGrids)
            layer = self._layer(sid)
            layers.setdefault(layer.key(), (layer, []))[1].append(sid)
        ijkToRas = volumeIJKToRAS(self.volumeNode)
        modified = []
        for layer, sids in layers.values():
            labels = {sid: segmentation.GetSegment(sid).GetLabelValue() for sid in sids}
            old = layer.read(box)
            new = old.astype(np.promote_types(old.dtype, np.min_scalar_type(max(labels.values()))))
            for sid in sids:
                new[(old == labels[sid]) & ~changes[sid]] = 0
            for sid in sids:
                new[changes[sid]] = labels[sid]
            if np.array_equal(new, old):
                continue
            occupied = _occupiedBox(new, box)
            if not occupied.empty:  # also widens the voxel type for a label beyond it
                layer.grow(occupied, ijkToRas, max(labels.values()))
            inner = box.intersect(layer.box())
            if not inner.empty:
                layer.array()[inner.within(layer.box())] = new[inner.within(box)]
            # The array's own Modified raises the image's MTime (the undo history compares it)
            # without the image's ModifiedEvent, on which the segmentation would drop every
            # segment's other representations; the events below name the changed segments,
            # as Slicer's SetBinaryLabelmapToSegment does.
            layer.image.GetPointData().GetScalars().Modified()
            modified.extend(sids)
        self._reconvert(modified)
        for sid in modified:
            segmentation.InvokeEvent(slicer.vtkSegmentation.SourceRepresentationModified, sid)
            segmentation.InvokeEvent(slicer.vtkSegmentation.RepresentationModified, sid)
        segment = segmentation.GetSegment(target)
        moduleLogic = slicer.vtkSlicerSegmentationsModuleLogic
        if moduleLogic.GetSegmentStatus(segment) == moduleLogic.NotStarted:  # as the editor logic does
            moduleLogic.SetSegmentStatus(segment, moduleLogic.InProgress)

    def _separateIfOverlapping(self, target, box, blocks, changes):
        """Give the edited segment its own layer where it would share a voxel with a segment of
        its layer that keeps that voxel (one layer holds one label per voxel)."""
        segmentation = self.segmentationNode.GetSegmentation()
        newTarget = changes.get(target)
        if newTarget is None:
            return
        key = self._layer(target).key()
        for sid in segmentation.GetSegmentIDs():
            if sid == target or self._layer(sid).key() != key:
                continue
            kept = changes.get(sid, blocks[sid])
            if np.any(newTarget & kept):
                segmentation.SeparateSegmentLabelmap(target)
                return

    def _reconvert(self, segmentIds: Sequence[str]):
        """Rebuild other representations (closed surface) of the changed segments, as Slicer's
        ``SetBinaryLabelmapToSegment`` does after a write."""
        if not segmentIds:
            return
        segmentation = self.segmentationNode.GetSegmentation()
        names = set()
        for sid in segmentIds:
            contained = []
            segmentation.GetSegment(sid).GetContainedRepresentationNames(contained)
            names.update(name for name in contained if name != LABELMAP)
        for name in sorted(names):
            paths = slicer.vtkSegmentationConversionPaths()
            segmentation.GetPossibleConversions(name, paths)
            cheapest = slicer.vtkSegmentationConverter.GetCheapestPath(paths)
            if cheapest is not None:
                segmentation.ConvertSegmentsUsingPath(list(segmentIds), cheapest, True)
