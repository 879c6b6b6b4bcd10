"""Time writing a click's slice and a propagation into a real MRML segmentation (slicer-core).

Run: OMP_NUM_THREADS=1 PYTHONPATH=Logic .venv/bin/python benchmarks/segment_write.py [--repeats 5]

The paper's volume size, 160 x 384 x 384 (k, j, i), int16, with 1, 3 and 6 segments (each an
ellipsoid in its own labelmap layer, cropped to its extent as Slicer keeps them), the Segment
Editor's default settings (edit everywhere, overwrite all segments). Measured, in one run:

- BEFORE: the write path of the module before issue 11 (``_writeSlices`` + ``_setSegmentSlab``
  of ``iSegFormerSlicer.py`` at commit 8e7d2e8, with ``slice_write.write_slice``), reproduced
  here as it was: export every segment with ``slicer.util.arrayFromSegmentBinaryLabelmap``,
  compose the slices, write each changed segment's slab with Slicer's
  ``SetBinaryLabelmapToSegment`` (MERGE_MIN then MERGE_MASK);
- AFTER: ``iSegFormerSlicerLib.segment_writer.SegmentWriter.write``, without and with saving the
  undo state in Slicer's segmentation history first (what each click does in the module), and
  the module Logic's whole write path (``writeSlicesIntoSegment``: undo state, what-was-written
  bookkeeping, the session attribute).

Each figure is the median of ``--repeats`` timed writes after two warm-up writes; consecutive
writes alternate between two different masks so that every write changes voxels. Prints the
machine, threads and the load average at the start of each timed block (the machine may be
shared).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Testing" / "python"))  # slicer_standins: slicer.mrmlScene, slicer.modules
sys.path.insert(0, str(ROOT / "iSegFormerSlicer"))

import slicer_standins  # noqa: E402

SHAPE = (160, 384, 384)
PROPAGATED = range(20, 140)  # ~120 slices change in a propagation


def load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def ellipsoid(center, radii):
    k, j, i = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    return ((k - center[0]) / radii[0]) ** 2 + ((j - center[1]) / radii[1]) ** 2 + ((i - center[2]) / radii[2]) ** 2 <= 1


def build_scene(slicer, segments: int, full_extent: bool = False):
    import vtk
    from vtk.util import numpy_support

    scene = slicer_standins.new_scene()
    rng = np.random.default_rng(0)
    ijk_to_ras = np.array([[0.36, 0, 0, -70], [0, 0.36, 0, -70], [0, 0, 0.7, -56], [0, 0, 0, 1.0]])
    volume = slicer.util.addVolumeFromArray(rng.integers(0, 800, SHAPE).astype(np.int16), ijk_to_ras, name="knee")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segmentation")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    segmentation = node.GetSegmentation()
    for n in range(segments):
        mask = ellipsoid((80, 150 + 15 * n, 190 - 10 * n), (60, 80, 70))
        k, j, i = (np.flatnonzero(mask.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3))
        if full_extent:  # layers spanning the whole volume (a .seg.nrrd saved without cropping)
            k, j, i = (np.arange(n) for n in SHAPE)
        image = slicer.vtkOrientedImageData()
        image.SetExtent(i[0], i[-1], j[0], j[-1], k[0], k[-1])
        image.SetImageToWorldMatrix(matrix)
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = \
            mask[k[0]:k[-1] + 1, j[0]:j[-1] + 1, i[0]:i[-1] + 1].astype(np.uint8).reshape(-1)
        segment = slicer.vtkSegment()
        segment.SetName(f"structure {n}")
        segment.AddRepresentation("Binary labelmap", image)
        segmentation.AddSegment(segment, f"segment{n}")
    editor = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere)
    editor.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteAllSegments)
    return scene, volume, node, editor


# ---- BEFORE: the module's write path before issue 11, as it was ---------------------------------
def legacy_write(slicer, volume, node, editor, segment_id, axis, first, last, masks):
    import vtk
    from vtk.util import numpy_support

    from isegformer.slicer_support import slice_write, transforms
    from iSegFormerSlicerLib.segment_writer import editRulesFromNodes

    rules = editRulesFromNodes(node, editor)
    ids = list(node.GetSegmentation().GetSegmentIDs())
    arrays = {sid: slicer.util.arrayFromSegmentBinaryLabelmap(node, sid, volume).copy() for sid in ids}
    source = slicer.util.arrayFromVolume(volume) if rules.intensity_range else None
    changed_segments, changed_indices = set(), []
    for offset, index in enumerate(range(first, last + 1)):
        mask = transforms.take_slice(masks, axis, offset)
        changes = slice_write.write_slice(mask, segment_id, arrays, axis, index, rules, source)
        slice_write.apply_slice_changes(arrays, axis, index, changes)
        changed_segments.update(changes)
        if changes:
            changed_indices.append(index)
    for sid in sorted(changed_segments):
        array = arrays[sid]
        lo, hi = changed_indices[0], changed_indices[-1]
        kji = [slice(None)] * 3
        kji[axis] = slice(lo, hi + 1)
        slab = np.ascontiguousarray(array[tuple(kji)], dtype=np.uint8)
        extent = [0, array.shape[2] - 1, 0, array.shape[1] - 1, 0, array.shape[0] - 1]
        ijk_axis = 2 - axis
        extent[2 * ijk_axis], extent[2 * ijk_axis + 1] = lo, hi
        image = slicer.vtkOrientedImageData()
        image.SetExtent(extent)
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = slab.reshape(-1)
        matrix = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(matrix)
        image.SetImageToWorldMatrix(matrix)
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        logic.SetBinaryLabelmapToSegment(image, node, sid, logic.MODE_MERGE_MIN, extent)
        logic.SetBinaryLabelmapToSegment(image, node, sid, logic.MODE_MERGE_MASK, extent)


def median_seconds(function, repeats: int, warmup: int = 2) -> float:
    for n in range(warmup):
        function(n)
    times = []
    for n in range(repeats):
        start = time.perf_counter()
        function(warmup + n)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--segments", default="1,3,6")
    parser.add_argument("--skip-before", action="store_true", help="time only the new writer")
    parser.add_argument("--full-extent-layers", action="store_true",
                        help="every layer spans the whole volume (the writer's worst case)")
    args = parser.parse_args()
    slicer = slicer_standins.install()
    from iSegFormerSlicerLib.segment_writer import SegmentWriter

    import vtk

    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"machine: {platform.machine()} {platform.processor() or ''} | cpus: {os.cpu_count()} | "
          f"OMP_NUM_THREADS={threads} | python {platform.python_version()} | vtk {vtk.vtkVersion.GetVTKVersion()} | "
          f"slicer-core | device: cpu | volume {SHAPE} int16 | median of {args.repeats} after 2 warm-ups"
          f"{' | layers span the whole volume' if args.full_extent_layers else ''}")
    rng = np.random.default_rng(1)
    click_masks = [ellipsoid((80, 200, 200), (1, 60 + 10 * n, 50))[80] for n in range(2)]
    propagation_masks = [ellipsoid((80, 200 + 4 * n, 200), (60, 70, 60 + 5 * n))[PROPAGATED.start:PROPAGATED.stop]
                         for n in range(2)]
    del rng
    module = slicer_standins.import_module(fresh=False)

    def fresh(count):
        """A new scene in the same starting state for every row (rows do not see each other's writes)."""
        scene, volume, node, editor = build_scene(slicer, count, args.full_extent_layers)
        history = slicer.vtkSlicerSegmentEditorLogic()
        history.SetMRMLScene(scene)
        history.SetSegmentEditorNode(editor)
        history.SetSegmentationNode(node)
        history.SetMaximumNumberOfUndoStates(10)
        logic = module.iSegFormerSlicerLogic()
        logic.setVolume(volume)
        logic.setSegmentation(volume, node, "segment0")
        logic.segmentEditorNode = editor  # the settings above
        logic.saveStateForUndo = history.SaveStateForUndo
        writer = SegmentWriter(node, volume, editor)
        return types.SimpleNamespace(scene=scene, volume=volume, node=node, editor=editor,
                                     history=history, logic=logic, writer=writer)

    def click_before(s, n):
        legacy_write(slicer, s.volume, s.node, s.editor, "segment0", 0, 80, 80, click_masks[n % 2][None])

    def click_after(s, n):
        s.writer.write("segment0", 0, 80, click_masks[n % 2][None])

    def click_after_undo(s, n):
        s.writer.write("segment0", 0, 80, click_masks[n % 2][None], beforeWrite=s.history.SaveStateForUndo)

    def click_module(s, n):  # the module's whole write path: undo state and session bookkeeping
        s.logic.writeSlicesIntoSegment("segment0", 0, 80, 80, click_masks[n % 2][None])

    def propagate_before(s, n):
        legacy_write(slicer, s.volume, s.node, s.editor, "segment0", 0, PROPAGATED.start, PROPAGATED.stop - 1,
                     propagation_masks[n % 2])

    def propagate_after(s, n):
        s.writer.write("segment0", 0, PROPAGATED.start, propagation_masks[n % 2], beforeWrite=s.history.SaveStateForUndo)

    def propagate_module(s, n):
        s.logic.writeSlicesIntoSegment("segment0", 0, PROPAGATED.start, PROPAGATED.stop - 1, propagation_masks[n % 2])

    rows = [("click (1 slice)", "BEFORE", click_before), ("click (1 slice)", "AFTER", click_after),
            ("click (1 slice)", "AFTER + undo state", click_after_undo), ("click (1 slice)", "AFTER, module Logic", click_module),
            ("propagation (120 slices)", "BEFORE", propagate_before),
            ("propagation (120 slices)", "AFTER + undo state", propagate_after),
            ("propagation (120 slices)", "AFTER, module Logic", propagate_module)]
    if args.skip_before:
        rows = [row for row in rows if row[1] != "BEFORE"]
    for count in (int(c) for c in args.segments.split(",")):
        for what, which, function in rows:
            state = fresh(count)
            at_start = load()
            nodes = state.scene.GetNumberOfNodes()
            seconds = median_seconds(lambda n: function(state, n), args.repeats)
            grown = state.scene.GetNumberOfNodes() - nodes
            print(f"{count} segment(s) | {what:<24} | {which:<19} | {seconds * 1000:8.1f} ms | "
                  f"+{grown} scene nodes over {args.repeats + 2} writes | {at_start}", flush=True)
            state.logic.shutdown()
            state.scene.Clear(1)

if __name__ == "__main__":
    main()
