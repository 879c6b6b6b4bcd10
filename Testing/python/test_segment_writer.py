"""The module's segment writer against Slicer's own Segment Editor logic, on real MRML (slicer-core).

The witness is ``vtkSlicerSegmentEditorLogic.ModifySegmentByLabelmap`` in "set" mode, bound to a
real segment editor node, given the whole segment with the edited slices replaced (the only way
Slicer's call keeps the rest of the segment). Inside the edited slices the writer must give what
Slicer gives, in every segment, voxel for voxel; outside them nothing may change, in any segment
(Slicer's whole-volume call would also erase other segments' overlaps there: that is why the
writer exists). Every mask mode x overwrite mode x intensity setting, with overlapping, shared-layer
and hidden segments, along k, j and i, on a right-handed and a K-flipped volume.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import slicer_standins

if not slicer_standins.available():
    pytest.skip(slicer_standins.SKIP_REASON, allow_module_level=True)

slicer = slicer_standins.install()
import vtk  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "iSegFormerSlicer"))
from iSegFormerSlicerLib.segment_writer import LABELMAP, SegmentWriter  # noqa: E402

from isegformer.errors import InvalidInputError  # noqa: E402

SHAPE = (7, 8, 9)  # (k, j, i), small: 54 combinations x 6 writes stay fast
MASK_MODES = {
    "everywhere": slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere,
    "inside_all": slicer.vtkMRMLSegmentationNode.EditAllowedInsideAllSegments,
    "inside_visible": slicer.vtkMRMLSegmentationNode.EditAllowedInsideVisibleSegments,
    "outside_all": slicer.vtkMRMLSegmentationNode.EditAllowedOutsideAllSegments,
    "outside_visible": slicer.vtkMRMLSegmentationNode.EditAllowedOutsideVisibleSegments,
    "inside_segment": slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment,
}
OVERWRITE_MODES = {
    "all": slicer.vtkMRMLSegmentEditorNode.OverwriteAllSegments,
    "visible": slicer.vtkMRMLSegmentEditorNode.OverwriteVisibleSegments,
    "none": slicer.vtkMRMLSegmentEditorNode.OverwriteNone,
}
#: None: no intensity mask; fractional bounds on the int16 volume are truncated by Slicer
INTENSITIES = {"off": None, "fractional": (20.5, 58.5), "negative": (-3.5, 41.7)}


def blob(rng, shape, fill=0.45):
    return rng.random(shape) < fill


def to_vtk_matrix(array):
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def layer_image(array, ijk_to_ras, extent_box=None):
    """A labelmap layer (k, j, i ``array`` of label values) on the volume grid, cropped to
    ``extent_box`` ((k0, k1), (j0, j1), (i0, i1)) as Slicer crops layers."""
    (k0, k1), (j0, j1), (i0, i1) = extent_box or ((0, SHAPE[0]), (0, SHAPE[1]), (0, SHAPE[2]))
    image = slicer.vtkOrientedImageData()
    image.SetExtent(i0, i1 - 1, j0, j1 - 1, k0, k1 - 1)
    image.SetImageToWorldMatrix(to_vtk_matrix(ijk_to_ras))
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = array[k0:k1, j0:j1, i0:i1].reshape(-1)
    return image


def add_segment(segmentation, segment_id, image, label=1):
    """Add a segment whose binary labelmap is ``image`` (segments given one image share a layer)."""
    segment = slicer.vtkSegment()
    segment.SetName(segment_id)
    segment.AddRepresentation(LABELMAP, image)
    segment.SetLabelValue(label)
    segmentation.AddSegment(segment, segment_id)


def export(segmentation_node, segment_id, volume_node):
    """A segment on the volume grid, through Slicer's own export and resampling (the witness's
    reader, independent of the writer's)."""
    labelmap = slicer.vtkOrientedImageData()
    segmentation_node.GetBinaryLabelmapRepresentation(segment_id, labelmap)
    reference = slicer.vtkOrientedImageData()
    reference.SetExtent(0, SHAPE[2] - 1, 0, SHAPE[1] - 1, 0, SHAPE[0] - 1)
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    reference.SetImageToWorldMatrix(matrix)
    reference.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    out = slicer.vtkOrientedImageData()
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(labelmap, reference, out, False, True)
    return numpy_support.vtk_to_numpy(out.GetPointData().GetScalars()).reshape(SHAPE) != 0


class Scene:
    """A real scene: an int16 volume and five segments.

    ``target`` (edited) shares its layer with ``shared``; ``overlap`` overlaps the target in its
    own layer; ``hidden`` is not visible and overlaps the target; ``mask`` is the mask segment.
    Layers are cropped like Slicer's, so writes must also grow them.
    """

    def __init__(self, flipped=False, seed=0):
        rng = np.random.default_rng(seed)
        self.scene = slicer_standins.new_scene()
        ijk_to_ras = np.array([[0, 0, -1.2, 10], [0.9, 0, 0, -5], [0, 1.1, 0, 3], [0, 0, 0, 1.0]])
        if flipped:  # K-flipped: a left-handed image as Slicer (>= 5.8) stores it, K running backwards
            ijk_to_ras[:3, 2] *= -1
        self.ijk_to_ras = ijk_to_ras
        self.source = rng.integers(-10, 100, SHAPE).astype(np.int16)
        self.volume = slicer.util.addVolumeFromArray(self.source, ijk_to_ras, name="source")
        self.node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segmentation")
        self.node.CreateDefaultDisplayNodes()
        self.node.SetReferenceImageGeometryParameterFromVolumeNode(self.volume)
        segmentation = self.node.GetSegmentation()
        target, shared = blob(rng, SHAPE), blob(rng, SHAPE)
        shared &= ~target
        layer = target * 1 + shared * 2
        crop = ((1, 6), (1, 7), (0, 8))
        image = layer_image((layer * _inside(crop)).astype(np.uint8), ijk_to_ras, crop)
        add_segment(segmentation, "target", image, 1)
        add_segment(segmentation, "shared", image, 2)
        for sid, extent in (("overlap", ((0, 7), (2, 8), (1, 9))), ("hidden", None), ("mask", ((0, 5), (0, 8), (0, 9)))):
            add_segment(segmentation, sid, layer_image(blob(rng, SHAPE).astype(np.uint8), ijk_to_ras, extent))
        self.node.GetDisplayNode().SetSegmentVisibility("hidden", False)
        self.editor = self.scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        self.rng = rng

    def ids(self):
        return list(self.node.GetSegmentation().GetSegmentIDs())

    def arrays(self, node=None):
        node = node or self.node
        return {sid: export(node, sid, self.volume) for sid in self.ids()}

    def configure(self, mask_mode, overwrite_mode, intensity):
        self.editor.SetMaskMode(mask_mode)
        self.editor.SetOverwriteMode(overwrite_mode)
        self.editor.SetMaskSegmentID("mask")
        self.editor.SetSourceVolumeIntensityMask(intensity is not None)
        if intensity is not None:
            self.editor.SetSourceVolumeIntensityMaskRange(*intensity)

    def slicer_reference(self, target, axis, index, new_slice):
        """Slicer's editor logic on a copy: the whole segment with slice ``index`` replaced."""
        copy = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "reference")
        copy.GetSegmentation().DeepCopy(self.node.GetSegmentation())
        copy.CreateDefaultDisplayNodes()
        for sid in self.ids():
            copy.GetDisplayNode().SetSegmentVisibility(sid, self.node.GetDisplayNode().GetSegmentVisibility(sid))
        logic = slicer.vtkSlicerSegmentEditorLogic()
        logic.SetMRMLScene(self.scene)
        logic.SetSegmentEditorNode(self.editor)
        logic.SetSegmentationNode(copy)
        logic.SetSourceVolumeNode(self.volume)
        self.editor.SetSelectedSegmentID(target)
        assert logic.ResetModifierLabelmapToDefault()
        modifier = logic.GetModifierLabelmap()
        assert modifier.GetExtent() == (0, SHAPE[2] - 1, 0, SHAPE[1] - 1, 0, SHAPE[0] - 1)
        voxels = numpy_support.vtk_to_numpy(modifier.GetPointData().GetScalars()).reshape(SHAPE)
        whole = export(copy, target, self.volume)
        np.moveaxis(whole, axis, 0)[index] = new_slice
        voxels[...] = whole
        modifier.Modified()
        logic.ModifySegmentByLabelmap(copy, target, modifier, logic.ModificationModeSet, False, False)
        result = self.arrays(copy)
        self.scene.RemoveNode(copy)
        logic.SetSegmentationNode(self.node)
        return result


def _inside(extent):
    mask = np.zeros(SHAPE, np.uint8)
    (k0, k1), (j0, j1), (i0, i1) = extent or ((0, SHAPE[0]), (0, SHAPE[1]), (0, SHAPE[2]))
    mask[k0:k1, j0:j1, i0:i1] = 1
    return mask


def check_write(scene, axis, index, new_slice, target="target", before=None, check_reader=True):
    """Write one slice; compare with Slicer's editor logic. Returns the segments after it."""
    before = scene.arrays() if before is None else before
    expected = scene.slicer_reference(target, axis, index, new_slice)
    writer = SegmentWriter(scene.node, scene.volume, scene.editor)
    calls = []
    report = writer.write(target, axis, index, np.expand_dims(new_slice, axis), beforeWrite=lambda: calls.append(1))
    after = scene.arrays()
    for sid in scene.ids():
        got = np.moveaxis(after[sid], axis, 0)
        want = np.moveaxis(expected[sid], axis, 0)
        was = np.moveaxis(before[sid], axis, 0)
        assert np.array_equal(got[index], want[index]), f"segment {sid}: slice {index} along {'kji'[axis]} differs from Slicer's"
        outside = np.delete(np.arange(SHAPE[axis]), index)
        assert np.array_equal(got[outside], was[outside]), f"segment {sid} changed outside slice {index}"
    changed = [sid for sid in scene.ids() if not np.array_equal(after[sid], before[sid])]
    assert list(report.segments) == changed
    assert calls == ([1] if changed else [])
    assert list(report.indices) == ([index] if changed else [])
    if check_reader:  # the writer's own reader agrees with Slicer's export
        for sid in scene.ids():
            assert np.array_equal(writer.read(sid), after[sid])
    return after, changed


def run_combination(mask_mode, overwrite, intensity, flipped):
    scene = Scene(flipped=flipped, seed=sum(map(ord, mask_mode + overwrite + intensity)) + flipped)
    scene.configure(MASK_MODES[mask_mode], OVERWRITE_MODES[overwrite], INTENSITIES[intensity])
    state, seen_changes = None, 0
    for axis, index in ((0, 3), (1, 0), (2, 8)):
        shape = [n for a, n in enumerate(SHAPE) if a != axis]
        state, changed = check_write(scene, axis, index, blob(scene.rng, shape, 0.6), before=state,
                                     check_reader=axis == 2)
        seen_changes += bool(changed)
    assert seen_changes > 0  # the combination was exercised, not a no-op everywhere


@pytest.mark.parametrize("intensity", list(INTENSITIES))
@pytest.mark.parametrize("overwrite", list(OVERWRITE_MODES))
@pytest.mark.parametrize("mask_mode", list(MASK_MODES))
def test_writes_equal_slicers_editor_logic(mask_mode, overwrite, intensity):
    run_combination(mask_mode, overwrite, intensity, flipped=False)


@pytest.mark.parametrize("mask_mode", list(MASK_MODES))
def test_writes_equal_slicers_editor_logic_on_a_k_flipped_volume(mask_mode):
    run_combination(mask_mode, "visible", "fractional", flipped=True)


def test_fractional_bound_is_truncated_on_an_integer_volume():
    """Slicer sets a voxel of value 58 with the range 20.5..58.5 on int16: 58.5 becomes 58, and
    20.5 becomes 20 (so 20 is editable)."""
    scene = Scene()
    scene.configure(MASK_MODES["everywhere"], OVERWRITE_MODES["none"], (20.5, 58.5))
    scene.source[3] = 0
    scene.source[3, 2, 2], scene.source[3, 2, 3], scene.source[3, 2, 4] = 58, 20, 59
    slicer.util.updateVolumeFromArray(scene.volume, scene.source)
    new = np.zeros(SHAPE[1:], bool)
    new[2, 2:5] = True
    before = SegmentWriter(scene.node, scene.volume).read("target")[3]
    check_write(scene, 0, 3, new)
    written = SegmentWriter(scene.node, scene.volume, scene.editor).read("target")[3]
    assert written[2, 2] and written[2, 3]
    assert written[2, 4] == before[2, 4]  # 59 is outside: the segment keeps what it had there


def test_empty_new_segment_and_label_values_beyond_a_byte():
    """A segment added empty gets the volume's grid on its first write; a label value beyond a
    byte widens the layer's voxel type instead of wrapping around."""
    scene = Scene()
    segmentation = scene.node.GetSegmentation()
    fresh = segmentation.AddEmptySegment("fresh")
    new = np.zeros(SHAPE[1:], bool)
    new[1:4, 2:6] = True
    scene.configure(MASK_MODES["everywhere"], OVERWRITE_MODES["none"], None)
    check_write(scene, 0, 2, new, target=fresh)
    empty = np.zeros(SHAPE, np.uint8)
    add_segment(segmentation, "wide", layer_image(empty, scene.ijk_to_ras, ((0, 2), (0, 2), (0, 2))), 300)
    corner = np.zeros(SHAPE[1:], bool)
    corner[7, 8] = True  # outside the layer's extent: the layer grows and must hold 300
    report = SegmentWriter(scene.node, scene.volume, scene.editor).write("wide", 0, 6, corner[None])
    assert report.segments == ("wide",)
    got = export(scene.node, "wide", scene.volume)
    assert got[6, 7, 8] and got.sum() == 1


def test_a_write_spanning_many_slices_equals_slice_by_slice():
    """A propagation writes a slab at once; the result equals writing its slices one by one."""
    masks = blob(np.random.default_rng(9), (SHAPE[0], SHAPE[1], 4), 0.5)
    one = Scene(seed=5)  # one scene at a time: a new scene replaces slicer.mrmlScene
    one.configure(MASK_MODES["outside_visible"], OVERWRITE_MODES["visible"], (0.5, 80.2))
    for index in range(4):
        SegmentWriter(one.node, one.volume, one.editor).write("target", 2, 3 + index, masks[:, :, index:index + 1])
    slice_by_slice = one.arrays()
    many = Scene(seed=5)
    many.configure(MASK_MODES["outside_visible"], OVERWRITE_MODES["visible"], (0.5, 80.2))
    before = many.arrays()
    report = SegmentWriter(many.node, many.volume, many.editor).write("target", 2, 3, masks)
    at_once = many.arrays()
    for sid in many.ids():
        assert np.array_equal(slice_by_slice[sid], at_once[sid]), sid
    changed = {i for sid in many.ids() for i in np.flatnonzero(np.any(at_once[sid] != before[sid], axis=(0, 1)))}
    assert set(report.indices) == changed and changed <= {3, 4, 5, 6} and changed


def test_a_write_into_a_segmentation_on_another_grid_is_refused_and_changes_nothing():
    """A layer whose lattice is not the volume's (here: twice as fine, as after 'Specify
    geometry' with oversampling 2) is read by resampling, but a write would have to resample the
    whole layer onto the volume's coarser lattice (Slicer's SetBinaryLabelmapToSegment does),
    losing its detail in every slice: it is refused before anything changes."""
    scene = Scene()
    segmentation = scene.node.GetSegmentation()
    fine = slicer.vtkOrientedImageData()
    fine.SetExtent(0, 2 * SHAPE[2] - 1, 0, 2 * SHAPE[1] - 1, 0, 2 * SHAPE[0] - 1)
    matrix = scene.ijk_to_ras.copy()
    matrix[:3, :3] /= 2
    matrix[:3, 3] -= (scene.ijk_to_ras[:3, :3] @ np.array([0.25, 0.25, 0.25]))
    fine.SetImageToWorldMatrix(to_vtk_matrix(matrix))
    fine.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    detail = numpy_support.vtk_to_numpy(fine.GetPointData().GetScalars()).reshape(
        2 * SHAPE[0], 2 * SHAPE[1], 2 * SHAPE[2])
    detail[:] = 0
    detail[1::2, 3:9, 5:12] = 1  # one fine voxel in two along k: detail the volume grid cannot hold
    kept = detail.copy()
    add_segment(segmentation, "fine", fine)
    scene.configure(MASK_MODES["everywhere"], OVERWRITE_MODES["all"], None)
    new = np.zeros(SHAPE[1:], bool)
    new[2:5, 3:7] = True
    before = scene.arrays()
    writer = SegmentWriter(scene.node, scene.volume, scene.editor)
    saved = []
    with pytest.raises(InvalidInputError, match="another grid.*Nothing was changed"):
        writer.write("fine", 0, 4, new[None], beforeWrite=lambda: saved.append(True))
    assert not saved  # no undo state either
    layer = segmentation.GetSegment("fine").GetRepresentation("Binary labelmap")
    assert layer.GetExtent() == (0, 2 * SHAPE[2] - 1, 0, 2 * SHAPE[1] - 1, 0, 2 * SHAPE[0] - 1)
    assert np.array_equal(numpy_support.vtk_to_numpy(layer.GetPointData().GetScalars()).reshape(kept.shape), kept)
    for sid, array in scene.arrays().items():
        assert np.array_equal(array, before[sid]), sid
    # a write into a segment on the volume's lattice that would overwrite the fine one: refused too
    with pytest.raises(InvalidInputError, match="'fine' is stored on another grid"):
        writer.write("target", 0, 1, np.ones((3,) + SHAPE[1:], bool))
    for sid, array in scene.arrays().items():
        assert np.array_equal(array, before[sid]), sid


def test_bad_requests_are_refused_with_the_packages_error():
    scene = Scene()
    writer = SegmentWriter(scene.node, scene.volume, scene.editor)
    with pytest.raises(InvalidInputError, match="outside the volume"):
        writer.write("target", 0, SHAPE[0], np.zeros((1,) + SHAPE[1:]))
    with pytest.raises(InvalidInputError, match="shape"):
        writer.write("target", 0, 0, np.zeros((1, 3, 3)))
    with pytest.raises(InvalidInputError, match="deleted"):
        writer.write("nope", 0, 0, np.zeros((1,) + SHAPE[1:]))
    transform = scene.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    scene.node.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(InvalidInputError, match="different transforms"):
        writer.write("target", 0, 0, np.zeros((1,) + SHAPE[1:]))


def test_undo_restores_every_segment_and_redo_reapplies():
    """One state per action in Slicer's segmentation history: undo gives back every segment
    exactly (voxels the write erased from other segments too), redo re-applies; an action of
    several writes (a point moved on two slices) is one state."""
    from iSegFormerSlicerLib.segment_history import ActionStates, EditorLogicHistory

    scene = Scene(seed=3)
    scene.configure(MASK_MODES["everywhere"], OVERWRITE_MODES["all"], None)
    history = EditorLogicHistory(scene.scene, scene.editor)
    history.bind(scene.node, scene.volume)
    actions = ActionStates(history.saveState)
    writer = SegmentWriter(scene.node, scene.volume, scene.editor)
    states = [scene.arrays()]
    full = np.ones(SHAPE[1:], bool)
    first, second = actions.newAction(), actions.newAction()  # queued back to back
    writer.write("target", 0, 2, full[None], beforeWrite=actions.hook(first))
    states.append(scene.arrays())
    assert not states[1]["overlap"][2].any() and states[0]["overlap"][2].any()  # erased by the write
    # one action, two slices (a point moved from one slice to another)
    writer.write("target", 0, 4, full[None], beforeWrite=actions.hook(second))
    writer.write("target", 0, 5, np.zeros((1,) + SHAPE[1:]), beforeWrite=actions.hook(second))
    states.append(scene.arrays())

    def assert_state(expected):
        got = scene.arrays()
        for sid in scene.ids():
            assert np.array_equal(got[sid], expected[sid]), sid

    history.undo()
    assert_state(states[1])
    history.undo()
    assert_state(states[0])
    assert not history.canUndo()
    history.redo()
    assert_state(states[1])
    history.redo()
    assert_state(states[2])
    assert not history.canRedo()
    history.undo()
    assert_state(states[1])
    # a new write after an undo drops the redo branch, as in the Segment Editor
    writer.write("shared", 1, 3, np.ones((SHAPE[0], 1, SHAPE[2]), bool), beforeWrite=actions.hook())
    assert not history.canRedo()
    history.undo()
    assert_state(states[1])


def test_hundred_writes_add_no_node_to_the_scene():
    scene = Scene(seed=4)
    scene.configure(MASK_MODES["outside_visible"], OVERWRITE_MODES["all"], (10.5, 90))
    writer = SegmentWriter(scene.node, scene.volume, scene.editor)
    rng = np.random.default_rng(0)
    writer.write("target", 0, 3, blob(rng, (1,) + SHAPE[1:]))
    writer.read("overlap")
    nodes = scene.scene.GetNumberOfNodes()
    for n in range(100):
        axis = n % 3
        shape = list(SHAPE)
        shape[axis] = 1
        writer.write(("target", "shared", "overlap")[n % 3], axis, n % SHAPE[axis], blob(rng, shape))
        writer.read("hidden")
    assert scene.scene.GetNumberOfNodes() == nodes


def test_console_logic_saves_one_undo_state_per_action(slicer_env):
    """From the Python console (no widget): a click, a point moved, a point deleted and a
    propagation are one state each in Slicer's segmentation history; logic.undo() walks back
    through them restoring every segment (the voxels a click erased from another segment too),
    logic.redo() walks forward again. The scene does not grow."""
    from session_fakes import FakeSession

    from isegformer.slicer_support.session_bridge import SessionBridge

    slicer, module = slicer_env.slicer, slicer_env.module
    shape = (6, 8, 10)
    ijk_to_ras = np.array([[0, 0, 1.5, 10.0], [-0.8, 0, 0, -20.0], [0, 1.1, 0, 5.0], [0, 0, 0, 1]])
    volume = slicer.util.addVolumeFromArray(np.zeros(shape, np.int16), ijk_to_ras, name="volume")
    logic = module.iSegFormerSlicerLogic()
    logic.setVolume(volume)
    node, target = logic.setSegmentation()
    other = node.GetSegmentation().AddEmptySegment("", "other")
    SegmentWriter(node, volume).write(other, 0, 2, np.ones((1,) + shape[1:], bool))  # before any state
    logic.getSegmentEditorNode().SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteAllSegments)
    logic.setModelSettings(propagation="interpolation")
    logic._bridge = SessionBridge(FakeSession(shape))
    logic._stale = False
    reader = SegmentWriter(node, volume)

    def world(k, j, i):
        return (ijk_to_ras @ np.array([i, j, k, 1.0]))[:3]

    def snapshot():
        return {sid: reader.read(sid) for sid in (target, other)}

    states = [snapshot()]
    logic.addClick(world(2, 3, 4), axis=0)
    states.append(snapshot())
    assert not states[1][other][2, 2:5, 3:6].any()  # the click erased the other segment there
    logic.addClick(world(4, 5, 6), axis=0)
    states.append(snapshot())
    nodes = slicer_env.scene.GetNumberOfNodes()
    positive, _ = logic.getClickNodes()
    positive.SetNthControlPointPositionWorld(0, *world(2, 6, 7))  # moved within slice 2
    logic.waitForJobs(), logic.submitPointsChanged(), logic.waitForJobs()
    states.append(snapshot())
    positive.RemoveNthControlPoint(1)  # deleted: slice 4 recomputed (emptied)
    logic.submitPointsChanged()
    logic.waitForJobs()
    states.append(snapshot())
    logic.propagate()
    states.append(snapshot())
    assert all(not np.array_equal(a[target], b[target]) for a, b in zip(states, states[1:]))
    assert slicer_env.scene.GetNumberOfNodes() == nodes  # no node per write, none per read

    for expected in reversed(states[:-1]):
        logic.undo()
        for sid, array in snapshot().items():
            assert np.array_equal(array, expected[sid]), sid
    assert not logic.history.canUndo()
    for expected in states[1:]:
        logic.redo()
        for sid, array in snapshot().items():
            assert np.array_equal(array, expected[sid]), sid
    logic.shutdown()


def test_points_of_the_two_lists_with_the_same_id_are_told_apart(slicer_env):
    """Each point list numbers its points from "1": deleting the negative point "1" or undoing it
    must not touch the positive point "1" (and moving one must not move the other)."""
    from session_fakes import FakeSession

    from isegformer.slicer_support.session_bridge import SessionBridge

    slicer, module = slicer_env.slicer, slicer_env.module
    shape = (6, 8, 10)
    volume = slicer.util.addVolumeFromArray(np.zeros(shape, np.int16), np.eye(4), name="volume")
    logic = module.iSegFormerSlicerLogic()
    logic.setVolume(volume)
    node, target = logic.setSegmentation()
    logic._bridge, logic._stale = SessionBridge(FakeSession(shape)), False
    logic.addClick((4.0, 3.0, 2.0), axis=0)                   # positive "1" on slice 2
    logic.addClick((7.0, 6.0, 4.0), positive=False, axis=0)   # negative "1" on slice 4
    positive, negative = logic.getClickNodes()
    assert positive.GetNthControlPointID(0) == negative.GetNthControlPointID(0)
    negative.SetNthControlPointPositionWorld(0, 8.0, 6.0, 4.0)  # the negative point moves
    logic.submitPointsChanged()
    logic.waitForJobs()
    records = {r.positive: r for r in logic._records}
    assert (round(records[True].point.col), round(records[True].point.row)) == (4, 3)  # not moved
    assert round(records[False].point.col) == 8
    logic.undoLastClick()  # the negative one
    assert positive.GetNumberOfControlPoints() == 1 and negative.GetNumberOfControlPoints() == 0
    assert SegmentWriter(node, volume).read(target)[2, 3, 4]  # the positive click's slice stays
    logic.shutdown()


def test_in_the_panel_the_segment_editors_undo_and_the_logics_take_back_a_click(slicer_env, monkeypatch, tmp_path):
    """With the module's panel, a click's write is one state of the Segment Editor widget's own
    history: the editor's Undo takes it back (every segment: the voxels it erased from another
    one too), Redo re-applies, and logic.undo()/redo() from the console use that same history."""
    import time

    from session_fakes import FakeSession

    from isegformer.slicer_support.session_bridge import SessionBridge

    slicer, module = slicer_env.slicer, slicer_env.module
    monkeypatch.setenv("ISEGFORMER_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(module.iSegFormerSlicerLogic, "missingDependencies", staticmethod(lambda: []))
    monkeypatch.setattr(module.iSegFormerSlicerLogic, "modelStatusText", lambda self: "ready")
    monkeypatch.setattr(module.iSegFormerSlicerLogic, "modelNeedsDownload", lambda self: False)
    widget = slicer_standins.build_module_widget(module.iSegFormerSlicerWidget)
    try:
        shape = (6, 8, 10)
        volume = slicer.util.addVolumeFromArray(np.zeros(shape, np.int16), np.eye(4), name="volume")
        red = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSliceNode", "Red")  # looks along k at slice 2
        red.SetLayoutName("Red")
        red.GetSliceToRAS().DeepCopy(slicer.util.vtkMatrixFromArray(np.array(
            [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 2.0], [0, 0, 0, 1]])))
        red.UpdateMatrices()
        slicer_standins.enter_module(widget)
        widget.ui.inputVolumeSelector.setCurrentNode(volume)
        logic = widget.logic
        node, target = logic.setSegmentation(volume)
        widget.ui.segmentEditorWidget.setSegmentationNode(node)
        widget.ui.segmentEditorWidget.setCurrentSegmentID(target)
        other = node.GetSegmentation().AddEmptySegment("", "other")
        SegmentWriter(node, volume).write(other, 0, 2, np.ones((1,) + shape[1:], bool))
        logic.getSegmentEditorNode().SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteAllSegments)
        logic._bridge = SessionBridge(FakeSession(shape))
        positive, _ = logic.getClickNodes()
        reader = SegmentWriter(node, volume)
        before = {sid: reader.read(sid) for sid in (target, other)}
        positive.AddControlPointWorld(4.0, 3.0, 2.0)  # placed in a view: the widget's observer acts
        deadline = time.monotonic() + 10
        widget.onPoll()
        while logic.isBusy() or logic.jobs.pendingCount:
            assert time.monotonic() < deadline
            time.sleep(0.01)
            widget.onPoll()
        widget.onPoll()
        after = {sid: reader.read(sid) for sid in (target, other)}
        assert after[target][2, 2:5, 3:6].all() and not after[other][2, 2:5, 3:6].any()
        widget.ui.segmentEditorWidget.undo()  # the Segment Editor's Undo button
        for sid in (target, other):
            assert np.array_equal(reader.read(sid), before[sid]), sid
        logic.redo()  # the console, same history
        for sid in (target, other):
            assert np.array_equal(reader.read(sid), after[sid]), sid
        logic.undo()
        assert np.array_equal(reader.read(other), before[other])
    finally:
        widget.cleanup()
