"""The Slicer module's Logic and widget on Slicer's own MRML (slicer-core), with a stand-in session.

Everything MRML here is Slicer's: the scene, volume, transform, segmentation, markups, slice
and segment editor nodes, the segmentations logic that writes the segments, and slicer.util
(slicer_standins.py adds only what the wheel lacks). The session is FakeSession (the torch
side), since these tests are about the module's own work: MRML geometry to the right slice
(views, parent transforms), slice writes limited to that slice and following the Segment
Editor settings, undo, moved/deleted points, propagation writes, hand edits adopted, failures
leaving no point, and the widget's wiring.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from isegformer.errors import InvalidInputError
from isegformer.slicer_support.session_bridge import SessionBridge
from isegformer.slicer_support.views import ObliqueViewError
from session_fakes import FakeSession

SHAPE = (6, 8, 10)  # (k, j, i)
# a volume acquired "sagittally": i -> posterior, j -> superior, k -> right
IJK_TO_RAS = np.array([[0, 0, 1.5, 10.0], [-0.8, 0, 0, -20.0], [0, 1.1, 0, 5.0], [0, 0, 0, 1]])


def turn_about_s(degrees, shift=(3.0, -4.0, 7.0)):
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    matrix = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    matrix[:3, 3] = shift
    return matrix


def add_volume(slicer, array, ijk_to_ras=IJK_TO_RAS, name="volume"):
    return slicer.util.addVolumeFromArray(np.asarray(array), np.asarray(ijk_to_ras, float), name=name)


def linear_transform(slicer, matrix):
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    return node


def segment(slicer, segmentation, segment_id, volume):
    """A segment on the volume's grid, read back through Slicer's own export."""
    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, volume)


def paint(slicer, segmentation, segment_id, volume, edit):
    """Change a segment as a Segment Editor effect would: ``edit(array)`` on the volume grid."""
    array = segment(slicer, segmentation, segment_id, volume).copy()
    edit(array)
    slicer.util.updateSegmentBinaryLabelmapFromArray(array, segmentation, segment_id, volume)


class Env:
    def __init__(self, slicer_env):
        slicer = self.slicer = slicer_env.slicer
        self.module, self.scene = slicer_env.module, slicer_env.scene
        self.volume = add_volume(slicer, np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE))
        self.parent = linear_transform(slicer, turn_about_s(90.0))
        self.volume.SetAndObserveTransformNodeID(self.parent.GetID())
        self.logic = self.module.iSegFormerSlicerLogic()
        self.logic.setVolume(self.volume)
        self.segmentation, self.segment_id = self.logic.setSegmentation()
        self.segmentation.SetAndObserveTransformNodeID(self.parent.GetID())
        self.session = FakeSession(SHAPE)
        self.logic._bridge = SessionBridge(self.session)
        self.world = turn_about_s(90.0) @ IJK_TO_RAS

    def array(self, segment_id=None):
        return segment(self.slicer, self.segmentation, segment_id or self.segment_id, self.volume)


@pytest.fixture
def env(slicer_env):
    environment = Env(slicer_env)
    yield environment
    environment.logic.shutdown()


def aligned_matrix(world, column):
    """A SliceToRAS whose normal is IJK column ``column`` of the world matrix."""
    directions = world[:3, :3] / np.linalg.norm(world[:3, :3], axis=0)
    others = [c for c in range(3) if c != column]
    matrix = np.eye(4)
    matrix[:3, 0], matrix[:3, 1], matrix[:3, 2] = directions[:, others[0]], directions[:, others[1]], directions[:, column]
    return matrix


def slice_node(slicer, name, slice_to_ras):
    """A real vtkMRMLSliceNode showing the plane ``slice_to_ras``."""
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSliceNode", name)
    node.SetLayoutName(name)
    node.GetSliceToRAS().DeepCopy(slicer.util.vtkMatrixFromArray(slice_to_ras))
    node.UpdateMatrices()
    return node


def aligned_view(slicer, world, column, name):
    return slice_node(slicer, name, aligned_matrix(world, column))


def rotation_about(vector, degrees):
    """4x4 rotation about a unit vector (Rodrigues)."""
    k = np.asarray(vector, float) / np.linalg.norm(vector)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    angle = np.radians(degrees)
    matrix = np.eye(4)
    matrix[:3, :3] = np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross
    return matrix


def to_world(world, ijk):
    return (world @ np.array([*ijk, 1.0]))[:3]


@pytest.mark.parametrize("column", [0, 1, 2])
def test_a_click_in_an_aligned_view_writes_the_square_on_that_slice_only(env, column):
    ijk = (7, 5, 2)  # (i, j, k)
    view = aligned_view(env.slicer, env.world, column, "Red")
    point = env.logic.addClick(to_world(env.world, ijk), positive=True, sliceNode=view)
    axis = 2 - column
    assert point.axis == axis and point.index == ijk[column]
    expected = np.zeros(SHAPE, np.uint8)
    k, j, i = ijk[2], ijk[1], ijk[0]
    square = [slice(max(c - 1, 0), c + 2) for c in (k, j, i)]
    square[axis] = slice(point.index, point.index + 1)
    expected[tuple(square)] = 1
    np.testing.assert_array_equal(env.array(), expected)  # that slice's square, nothing anywhere else
    positive, _ = env.logic.getClickNodes()
    assert positive.GetNthControlPointDescription(0) == "positive"


def test_an_oblique_view_is_refused_and_nothing_is_recorded(env):
    aligned = aligned_matrix(env.world, 0)
    oblique = slice_node(env.slicer, "Yellow", rotation_about(aligned[:3, 0], 35.0) @ aligned)
    with pytest.raises(ObliqueViewError, match="Yellow"):
        env.logic.addClick(to_world(env.world, (4, 4, 3)), sliceNode=oblique)
    assert not env.logic.hasClicks() and env.array().sum() == 0
    positive, _ = env.logic.getClickNodes()
    assert positive.GetNumberOfControlPoints() == 0  # the point placed for it is gone too


def test_without_a_known_view_the_nearest_slice_plane_decides_or_the_point_is_refused(env):
    on_plane = to_world(env.world, (4, 4, 3))
    # Yellow's plane (normal along i) passes through the point; Red's (normal along k) does not
    red = slice_node(env.slicer, "Red", aligned_matrix(env.world, 2))
    yellow = aligned_matrix(env.world, 0)
    yellow[:3, 3] = on_plane
    slice_node(env.slicer, "Yellow", yellow)
    assert env.logic.locateClick(on_plane).axis == 2
    env.scene.RemoveNode(red)
    shifted = on_plane + 10.0 * yellow[:3, 2]  # 10 mm off Yellow's plane, voxels are <= 1.5 mm
    with pytest.raises(ValueError, match="not on any slice view"):
        env.logic.locateClick(shifted)


def test_a_non_linear_parent_transform_is_refused_with_advice(env):
    import vtk

    warp = vtk.vtkThinPlateSplineTransform()
    source, target = vtk.vtkPoints(), vtk.vtkPoints()
    for point, shift in (((0, 0, 0), (0, 0, 0)), ((50, 0, 0), (3, 1, 0)), ((0, 50, 0), (0, 0, 2)), ((0, 0, 50), (1, 0, 0))):
        source.InsertNextPoint(point)
        target.InsertNextPoint(np.add(point, shift))
    warp.SetSourceLandmarks(source)
    warp.SetTargetLandmarks(target)
    warp.SetBasisToR()
    node = env.scene.AddNewNodeByClass("vtkMRMLTransformNode")
    node.SetAndObserveTransformToParent(warp)
    env.parent.SetAndObserveTransformNodeID(node.GetID())
    assert not env.volume.GetParentTransformNode().IsTransformToWorldLinear()
    with pytest.raises(ValueError, match="Harden"):
        env.logic.addClick(to_world(env.world, (4, 4, 3)), axis=0)


def test_overwrite_all_takes_the_slice_voxels_from_other_segments_only(env):
    other = env.segmentation.GetSegmentation().AddEmptySegment("", "bone")
    paint(env.slicer, env.segmentation, other, env.volume, lambda a: a.__setitem__((slice(None), slice(3, 6), slice(6, 9)), 1))
    editor = env.logic.getSegmentEditorNode()
    editor.SetOverwriteMode(env.slicer.vtkMRMLSegmentEditorNode.OverwriteAllSegments)
    point = env.logic.addClick(to_world(env.world, (7, 5, 2)), axis=0)
    bone = env.array(other)
    assert not bone[point.index, 4:7, 6:9].any()  # taken where the new square is
    assert bone[point.index, 3, 6:9].all()  # kept outside the square
    for k in range(SHAPE[0]):
        if k != point.index:
            assert bone[k, 3:6, 6:9].all()  # other slices untouched
    assert bone.sum() == SHAPE[0] * 9 - 6


def test_allow_overlap_and_inside_segment_masking(env):
    other = env.segmentation.GetSegmentation().AddEmptySegment("", "bone")
    paint(env.slicer, env.segmentation, other, env.volume, lambda a: a.__setitem__((slice(None), slice(4, 6), slice(6, 9)), 1))
    editor = env.logic.getSegmentEditorNode()
    editor.SetOverwriteMode(env.slicer.vtkMRMLSegmentEditorNode.OverwriteNone)  # allow overlap
    editor.SetMaskMode(env.slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    editor.SetMaskSegmentID(other)  # only inside "bone"
    point = env.logic.addClick(to_world(env.world, (7, 5, 2)), axis=0)
    target = env.array()[point.index]
    np.testing.assert_array_equal(np.argwhere(target), [[4, 6], [4, 7], [4, 8], [5, 6], [5, 7], [5, 8]])
    assert env.array(other).sum() == SHAPE[0] * 2 * 3  # unchanged


def test_undo_restores_the_slice_and_removes_the_point(env):
    saved = []
    env.logic.saveStateForUndo = lambda: saved.append(env.array().copy())
    env.logic.addClick(to_world(env.world, (2, 2, 3)), axis=0)
    after_first = env.array().copy()
    env.logic.addClick(to_world(env.world, (7, 5, 3)), axis=0)
    assert len(saved) == 2  # an undo state before every write
    np.testing.assert_array_equal(saved[1], after_first)  # taken before the second write
    env.logic.undoLastClick()
    np.testing.assert_array_equal(env.array(), after_first)
    positive, _ = env.logic.getClickNodes()
    assert positive.GetNumberOfControlPoints() == 1
    assert ("undo",) in env.session.calls


def test_moving_and_deleting_points_recompute_their_slice(env):
    env.logic.addClick(to_world(env.world, (2, 2, 3)), axis=0)
    env.logic.addClick(to_world(env.world, (7, 5, 1)), axis=0)
    positive, _ = env.logic.getClickNodes()
    positive.SetNthControlPointPositionWorld(0, *to_world(env.world, (5, 6, 3)))  # dragged within slice 3
    env.logic.submitPointsChanged()
    env.logic.waitForJobs()
    slice3 = env.array()[3]
    assert slice3[6, 5] and not slice3[2, 2]
    assert env.array()[1][5, 7]  # the other slice is as it was
    positive.RemoveNthControlPoint(1)  # the point on slice 1 is deleted
    env.logic.submitPointsChanged()
    env.logic.waitForJobs()
    assert not env.array()[1].any()
    assert env.array()[3][6, 5]


def test_a_failed_click_leaves_no_point_and_no_record(env):
    def broken(*args, **kwargs):
        raise InvalidInputError("the model failed")

    env.session.click_slice = broken
    with pytest.raises(InvalidInputError, match="the model failed"):
        env.logic.addClick(to_world(env.world, (2, 2, 3)), axis=0)
    positive, _ = env.logic.getClickNodes()
    assert positive.GetNumberOfControlPoints() == 0 and not env.logic.hasClicks()


def test_propagation_writes_the_volume_and_adopts_hand_edits(env):
    env.logic.setModelSettings(propagation="interpolation")
    env.logic._stale = False  # the fake session stays (settings would reopen a real one)
    env.logic.addClick(to_world(env.world, (4, 4, 1)), axis=0)
    paint(env.slicer, env.segmentation, env.segment_id, env.volume,
          lambda a: a.__setitem__((4, slice(0, 2), slice(0, 2)), 1))  # painted by hand in Slicer on slice 4
    env.logic.propagate()
    assert ("set", 0, 4) in env.session.calls  # the painted slice became an annotation
    result = env.array()
    assert all(result[k].any() for k in range(SHAPE[0]))  # the fake propagates to every slice
    assert ("propagate", "interpolation", 0) in env.session.calls


def test_a_deleted_segment_is_named_not_read_as_empty(env):
    """Slicer's own export of a missing segment fails with an AttributeError deep in slicer.util."""
    assert not env.array().any()  # an empty segment reads as zeros
    env.segmentation.GetSegmentation().RemoveSegment(env.segment_id)
    with pytest.raises(ValueError, match="segment was deleted"):
        env.logic.segmentArray()
    with pytest.raises(ValueError, match="segment was deleted"):
        env.logic.writeSlicesIntoSegment(env.segment_id, 0, 1, 1, np.ones((1, 8, 10), bool))


def test_stcn_without_weights_says_what_to_do(env, monkeypatch):
    env.logic.addClick(to_world(env.world, (4, 4, 1)), axis=0)
    monkeypatch.setattr(env.logic, "modelsToDownload", lambda: ["stcn"])
    with pytest.raises(RuntimeError, match="interpolation"):
        env.logic.propagate()


@pytest.mark.parametrize("cached_at_open", [True, False])
def test_stcn_chosen_or_downloaded_after_the_session_opened_needs_no_new_session(env, monkeypatch, tmp_path,
                                                                                 cached_at_open):
    """Switching the method to STCN while (or after) the session opens, or STCN weights
    downloaded after it opened, propagate at the first try, on the same session: no reopen
    and no replay of the clicks (a session given no STCN weights takes them from the cache)."""
    import time

    from isegformer.errors import WeightsError

    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"stands for a model")
    cache = {"stcn": cached_at_open}

    def resolve(name, download=True, **kwargs):
        if str(name) == "stcn" and not cache["stcn"]:
            raise WeightsError("stcn is not in the cache")
        return Path(str(name))

    opened = []

    def fake_open(cls, volume, ijk_to_ras, click_model, device="auto", stcn_weights=None, session_factory=None,
                  click_precision="float32"):
        time.sleep(0.3)  # a model load takes time: the user keeps working meanwhile
        opened.append(stcn_weights)
        return cls(FakeSession(volume.shape), has_stcn_weights=stcn_weights is not None)

    monkeypatch.setattr("isegformer.weights.resolve.resolve_model", resolve)
    monkeypatch.setattr(SessionBridge, "open", classmethod(fake_open))
    monkeypatch.setattr(SessionBridge, "warm_up", lambda self: None)
    env.logic.setModelSettings(model=str(checkpoint), device="cpu", propagation="interpolation")
    env.logic.addClick(to_world(env.world, (4, 4, 1)), axis=0)  # opens the session
    assert env.logic._opening or env.logic._bridge is not None
    env.logic.setModelSettings(propagation="stcn")
    cache["stcn"] = True  # downloaded meanwhile (already there when cached_at_open)
    env.logic.propagate()
    assert opened == (["stcn"] if cached_at_open else [None])  # one session, looked up whatever the method
    assert ("propagate", "stcn", 0) in env.logic._bridge.session.calls
    assert len([c for c in env.logic._bridge.session.calls if c[0] == "click"]) == 1  # never replayed


def test_changed_settings_reopen_the_session_and_replay_the_clicks(env, monkeypatch, tmp_path):
    env.logic.addClick(to_world(env.world, (2, 2, 3)), axis=0)
    env.logic.addClick(to_world(env.world, (7, 5, 3)), axis=0, positive=False)
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"not really a model")
    monkeypatch.setenv("ISEGFORMER_HOME", str(tmp_path / "home"))
    opened = []

    def fake_open(cls, volume, ijk_to_ras, click_model, device="auto", stcn_weights=None, session_factory=None,
                  click_precision="float32"):
        opened.append((volume.shape, click_model, device, click_precision))
        np.testing.assert_allclose(ijk_to_ras, env.world)
        return cls(FakeSession(volume.shape))

    monkeypatch.setattr(SessionBridge, "open", classmethod(fake_open))
    monkeypatch.setattr(SessionBridge, "warm_up", lambda self: None)
    env.logic.setModelSettings(model=str(checkpoint), device="cpu", propagation="interpolation")
    env.logic.addClick(to_world(env.world, (5, 1, 4)), axis=0)
    assert opened == [(SHAPE, str(checkpoint), "cpu", "float32")]
    replayed = [c for c in env.logic._bridge.session.calls if c[0] == "click"]
    assert [(c[2], c[5]) for c in replayed] == [(3, True), (3, False), (4, True)]  # in click order
    env.logic.setModelSettings(precision="int8")  # the fast CPU mode reopens the session too
    env.logic.addClick(to_world(env.world, (6, 2, 4)), axis=0)
    assert opened[1:] == [(SHAPE, str(checkpoint), "cpu", "int8")]
    env.logic.setModelSettings(propagation="stcn")  # a propagation names its method: no reopen
    env.logic.addClick(to_world(env.world, (6, 3, 4)), axis=0)
    assert len(opened) == 2
    env.logic.setModelSettings(device="cuda")
    env.logic.addClick(to_world(env.world, (6, 2, 5)), axis=0)
    assert opened[2:] == [(SHAPE, str(checkpoint), "cuda", "int8")] and env.logic.activeDevice == "cuda"
    env.logic.setModelSettings(precision="float32")  # float32 on a GPU either way: the clicks are not replayed
    env.logic.addClick(to_world(env.world, (6, 3, 5)), axis=0)
    assert len(opened) == 3 and env.logic.clickPrecision == "float32"
    env.logic.setModelSettings(device="cpu")  # back on the CPU, with the precision chosen meanwhile
    env.logic.addClick(to_world(env.world, (6, 4, 5)), axis=0)
    assert opened[3:] == [(SHAPE, str(checkpoint), "cpu", "float32")]


def test_the_settings_live_in_the_parameter_node_and_are_checked(env):
    env.logic.setModelSettings(model="other_model", device="cpu", propagation="interpolation")
    node = env.scene.GetSingletonNode("iSegFormerSlicer", "vtkMRMLScriptedModuleNode")
    assert node is not None and node.GetAttribute("ModuleName") == "iSegFormerSlicer"
    assert (node.GetParameter("ClickModel"), node.GetParameter("Device"), node.GetParameter("PropagationMethod")) == \
        ("other_model", "cpu", "interpolation")
    assert env.logic.clickPrecision == "float32"  # the reference's numbers unless asked
    env.logic.setModelSettings(precision="int8")
    assert node.GetParameter("ClickPrecision") == "int8"
    with pytest.raises(ValueError, match="Unknown click precision 'int4'"):
        env.logic.setModelSettings(precision="int4")
    assert node.GetNodeReference("SourceVolume") is env.volume
    assert node.GetNodeReference("Segmentation") is env.segmentation
    assert node.GetParameter("SegmentID") == env.segment_id
    with pytest.raises(ValueError, match="Unknown device 'tpu'"):
        env.logic.setModelSettings(device="tpu")
    with pytest.raises(ValueError, match="Unknown propagation method"):
        env.logic.setModelSettings(propagation="magic")
    assert env.logic.device == "cpu"  # a refused setting changes nothing


def test_the_settings_and_point_signs_survive_saving_and_loading_the_scene(env, slicer_env, tmp_path):
    env.logic.setModelSettings(model="other_model", device="cpu", propagation="interpolation", precision="int8")
    env.logic._stale = False  # the fake session stays (settings would reopen a real one)
    env.logic.addClick(to_world(env.world, (2, 2, 3)), axis=0)
    env.logic.addClick(to_world(env.world, (7, 5, 3)), axis=0, positive=False)
    positive, negative = env.logic.getClickNodes()
    positive.SetName("renamed by the user")
    assert env.slicer.util.saveScene(str(tmp_path / "scene"))
    env.logic.shutdown()

    slicer_env.slicer_standins.new_scene()
    env.slicer.util.loadScene(str(tmp_path / "scene" / "scene.mrml"))
    logic = env.module.iSegFormerSlicerLogic()
    assert (logic.model, logic.device, logic.propagation, logic.clickPrecision) == \
        ("other_model", "cpu", "interpolation", "int8")
    assert logic.volumeNode.GetName() == "volume" and logic.segmentationNode.GetName() == "iSegFormer segmentation"
    assert logic.segmentId == env.segment_id
    positive, negative = logic.getClickNodes(create=False)
    assert positive.GetName() == "renamed by the user"  # found by its sign attribute, not its name
    assert [positive.GetNthControlPointDescription(i) for i in range(positive.GetNumberOfControlPoints())] == ["positive"]
    assert [negative.GetNthControlPointDescription(i) for i in range(negative.GetNumberOfControlPoints())] == ["negative"]
    logic.shutdown()


def test_the_modules_own_slicer_test_passes_on_slicers_mrml(slicer_env):
    case = slicer_env.module.iSegFormerSlicerTest()
    case.runTest()


@pytest.mark.slow
@pytest.mark.golden
@pytest.mark.data
def test_the_self_test_runs_end_to_end_with_the_real_session(slicer_env, golden_dir, data_dir, monkeypatch):
    """iSegFormerSlicerSelfTest with the tiny checkpoint and the real session, on Slicer's MRML."""
    import importlib.util

    import slicer_standins

    monkeypatch.setenv("ISEGFORMER_GOLDEN", str(golden_dir))
    monkeypatch.setenv("ISEGFORMER_DATA", str(data_dir))
    monkeypatch.delenv("ISEGFORMER_TEST_CHECKPOINT", raising=False)
    path = slicer_standins.ROOT / "Testing" / "Slicer" / "iSegFormerSlicerSelfTest.py"
    spec = importlib.util.spec_from_file_location("iSegFormerSlicerSelfTest", path)
    selftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(selftest)
    selftest.iSegFormerSlicerSelfTestTest().runTest()


# ---- the widget's wiring, with Slicer's MRML and the Qt stand-ins --------------------------------


def poll_until_idle(widget, logic, timeout=10.0):
    import time

    deadline = time.monotonic() + timeout
    widget.onPoll()
    while logic.isBusy() or logic.jobs.pendingCount:
        assert time.monotonic() < deadline, "the worker did not finish"
        time.sleep(0.01)
        widget.onPoll()
    widget.onPoll()


@pytest.fixture
def ready_widget(slicer_env, monkeypatch, tmp_path):
    """Build the widget as Slicer does, with the dependencies reported installed and an empty
    weights cache (so no background warm-up opens a real session)."""
    import slicer_standins

    monkeypatch.setenv("ISEGFORMER_HOME", str(tmp_path / "empty-cache"))
    logic_class = slicer_env.module.iSegFormerSlicerLogic
    monkeypatch.setattr(logic_class, "missingDependencies", staticmethod(lambda: []))
    monkeypatch.setattr(logic_class, "modelStatusText", lambda self: "ready")
    monkeypatch.setattr(logic_class, "modelNeedsDownload", lambda self: False)
    widget = slicer_standins.build_module_widget(slicer_env.module.iSegFormerSlicerWidget)
    yield widget
    widget.cleanup()


def test_widget_wires_a_placed_point_to_a_written_slice_and_undo(slicer_env, ready_widget, monkeypatch):
    import slicer_standins

    slicer, widget = slicer_env.slicer, ready_widget
    ui = widget.ui
    volume = add_volume(slicer, np.zeros(SHAPE, np.int16))
    red = aligned_matrix(IJK_TO_RAS, 2)  # looks along k, through slice 2
    red[:3, 3] = to_world(IJK_TO_RAS, (0, 0, 2))
    slice_node(slicer, "Red", red)
    assert [ui.deviceComboBox.itemText(i) for i in range(ui.deviceComboBox.count())] == ["auto", "cuda", "cpu"]
    assert ui.modelComboBox.itemText(0) == slicer_env.module.DEFAULT_MODEL
    saves = []
    real_save = slicer_standins.qMRMLSegmentEditorWidget.saveStateForUndo
    monkeypatch.setattr(slicer_standins.qMRMLSegmentEditorWidget, "saveStateForUndo",
                        lambda self: (saves.append(1), real_save(self)))
    slicer_standins.enter_module(widget)
    ui.inputVolumeSelector.setCurrentNode(volume)
    assert widget.logic.volumeNode is volume
    positive, negative = widget.logic.getClickNodes()
    observed = {(obj, event) for obj, event, *_ in widget.Observations}
    defined = slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent
    assert (positive, defined) in observed and (negative, defined) in observed  # placement is observed
    assert ui.positivePlaceWidget.currentNode() is positive
    session = FakeSession(SHAPE)
    widget.logic._bridge = SessionBridge(session)

    # A point added to the list fires Slicer's PointPositionDefinedEvent: the widget's observer acts.
    positive.AddControlPointWorld(*to_world(IJK_TO_RAS, (7, 5, 2)))
    segmentation = ui.segmentEditorWidget.segmentationNode()
    segment_id = ui.segmentEditorWidget.currentSegmentID()
    assert segmentation is not None and segment_id
    poll_until_idle(widget, widget.logic)
    written = segment(slicer, segmentation, segment_id, volume)
    assert written[2, 4:7, 6:9].all() and written.sum() == 9
    assert "slice 2 along k" in ui.axisInfoLabel.text
    assert ui.propagateButton.enabled and ui.statusLabel.text == ""
    assert positive.GetNthControlPointDescription(0) == "positive"

    negative.AddControlPointWorld(*to_world(IJK_TO_RAS, (8, 6, 2)))
    poll_until_idle(widget, widget.logic)
    assert not segment(slicer, segmentation, segment_id, volume)[2, 6, 8]
    assert negative.GetNthControlPointDescription(0) == "negative"

    ui.undoClickButton.click()  # the Undo button (Ctrl+Z in the application)
    poll_until_idle(widget, widget.logic)
    assert segment(slicer, segmentation, segment_id, volume)[2, 4:7, 6:9].all()
    assert negative.GetNumberOfControlPoints() == 0
    assert len(saves) == 3  # one Segment Editor undo state before each of the three writes
    assert ui.segmentEditorWidget.segmentEditorLogic().CanUndo()


def test_widget_recomputes_a_slice_when_a_drag_of_its_point_ends(slicer_env, ready_widget):
    """Slicer ends a drag with PointEndInteractionEvent and no call data (the markups widget's
    own sequence is checked with real mouse events in test_slicer_click_path.py)."""
    import slicer_standins

    slicer, widget = slicer_env.slicer, ready_widget
    volume = add_volume(slicer, np.zeros(SHAPE, np.int16))
    red = aligned_matrix(IJK_TO_RAS, 2)
    red[:3, 3] = to_world(IJK_TO_RAS, (0, 0, 2))
    slice_node(slicer, "Red", red)
    slicer_standins.enter_module(widget)
    widget.ui.inputVolumeSelector.setCurrentNode(volume)
    widget.logic._bridge = SessionBridge(FakeSession(SHAPE))
    positive, _ = widget.logic.getClickNodes()
    positive.AddControlPointWorld(*to_world(IJK_TO_RAS, (2, 2, 2)))
    poll_until_idle(widget, widget.logic)
    segmentation = widget.ui.segmentEditorWidget.segmentationNode()
    segment_id = widget.ui.segmentEditorWidget.currentSegmentID()
    assert segment(slicer, segmentation, segment_id, volume)[2, 2, 2]
    positive.SetNthControlPointPositionWorld(0, *to_world(IJK_TO_RAS, (7, 5, 2)))  # moved by the drag
    positive.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent)  # the drag ends
    poll_until_idle(widget, widget.logic)
    written = segment(slicer, segmentation, segment_id, volume)
    assert written[2, 5, 7] and not written[2, 2, 2] and written.sum() == 9
    assert widget.ui.statusLabel.text == ""


def test_closing_the_scene_keeps_the_users_settings_in_the_new_parameter_node(slicer_env, ready_widget):
    import slicer_standins

    widget = ready_widget
    slicer_standins.enter_module(widget)
    widget.ui.deviceComboBox.currentText = "cpu"
    widget.ui.propagationComboBox.currentText = "interpolation"
    assert widget.logic.device == "cpu"
    slicer_env.scene.Clear(0)  # File > Close scene: Slicer resets the singleton parameter node
    assert (widget.logic.device, widget.logic.propagation) == ("cpu", "interpolation")
    assert widget.logic.volumeNode is None


def test_widget_refuses_a_point_from_an_oblique_view_and_says_why(slicer_env, ready_widget):
    import slicer_standins

    slicer, widget = slicer_env.slicer, ready_widget
    volume = add_volume(slicer, np.zeros(SHAPE, np.int16))
    aligned = aligned_matrix(IJK_TO_RAS, 2)
    aligned[:3, 3] = to_world(IJK_TO_RAS, (5, 4, 3))  # the plane passes through the point
    rotated = rotation_about(aligned[:3, 0], 20.0)
    rotated[:3, 3] = aligned[:3, 3] - rotated[:3, :3] @ aligned[:3, 3]  # rotate about that point
    slice_node(slicer, "Green", rotated @ aligned)
    slicer_standins.enter_module(widget)
    widget.ui.inputVolumeSelector.setCurrentNode(volume)
    positive, _ = widget.logic.getClickNodes()
    positive.AddControlPointWorld(*to_world(IJK_TO_RAS, (5, 4, 3)))
    assert "Green" in widget.ui.statusLabel.text and "oblique" in widget.ui.statusLabel.text
    assert positive.GetNumberOfControlPoints() == 0 and not widget.logic.hasClicks()
    assert not widget.logic.isBusy()


def test_widget_shows_the_parameter_nodes_settings_when_entered(slicer_env, ready_widget, tmp_path):
    import slicer_standins

    slicer, widget = slicer_env.slicer, ready_widget
    volume = add_volume(slicer, np.zeros(SHAPE, np.int16))
    checkpoint = tmp_path / "mine.pth"
    parameters = widget.logic.parameters
    parameters.sourceVolume = volume
    parameters.clickModel, parameters.device, parameters.propagationMethod = str(checkpoint), "cpu", "interpolation"
    slicer_standins.enter_module(widget)
    ui = widget.ui
    assert ui.inputVolumeSelector.currentNode() is volume
    assert ui.checkpointPathLineEdit.currentPath == str(checkpoint)
    assert (ui.deviceComboBox.currentText, ui.propagationComboBox.currentText) == ("cpu", "interpolation")
    assert (widget.logic.model, widget.logic.device) == (str(checkpoint), "cpu")  # not overwritten meanwhile
    ui.deviceComboBox.currentText = "auto"  # the user's choice goes back to the parameter node
    assert parameters.node.GetParameter("Device") == "auto"
    assert not ui.fastCpuCheckBox.checked
    ui.fastCpuCheckBox.checked = True
    assert parameters.node.GetParameter("ClickPrecision") == "int8"
    parameters.clickPrecision = "float32"
    slicer_standins.enter_module(widget)
    assert not ui.fastCpuCheckBox.checked  # the parameter node decides what the widget shows


def test_choosing_a_volume_and_a_cached_model_warms_the_model_up_in_the_background(slicer_env, ready_widget,
                                                                                  monkeypatch, tmp_path):
    import slicer_standins

    slicer, widget = slicer_env.slicer, ready_widget
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"stands for a checkpoint")
    opened, warmed = [], []

    def fake_open(cls, volume, ijk_to_ras, click_model, device="auto", stcn_weights=None, session_factory=None,
                  click_precision="float32"):
        opened.append((volume.shape, click_model, device))
        return cls(FakeSession(volume.shape))

    monkeypatch.setattr(SessionBridge, "open", classmethod(fake_open))
    monkeypatch.setattr(SessionBridge, "warm_up", lambda self: warmed.append(self))
    slicer_standins.enter_module(widget)
    widget.ui.checkpointPathLineEdit.currentPath = str(checkpoint)
    assert not opened and not widget.logic.isBusy()  # no volume yet: nothing to open
    volume = add_volume(slicer, np.zeros(SHAPE, np.int16))
    widget.ui.inputVolumeSelector.setCurrentNode(volume)
    assert widget._pollTimer.isActive()
    poll_until_idle(widget, widget.logic)
    assert opened == [(SHAPE, str(checkpoint), "auto")] and len(warmed) == 1
    assert widget.logic._bridge is not None and widget._progressDialog is None  # no dialog for it
    widget.ui.propagationComboBox.currentText = "interpolation"  # a propagation names its method: no reopen
    poll_until_idle(widget, widget.logic)
    assert len(opened) == 1 and len(warmed) == 1
    other = tmp_path / "other.pth"
    other.write_bytes(b"stands for another checkpoint")
    widget.ui.checkpointPathLineEdit.currentPath = str(other)  # another click model: opened again
    poll_until_idle(widget, widget.logic)
    assert opened[1:] == [(SHAPE, str(other), "auto")] and len(warmed) == 2
    widget.ui.inputVolumeSelector.setCurrentNode(volume)  # the same choice again: nothing to do
    assert not widget.logic.isBusy() and len(opened) == 2


# ---- fine-tuning on the segmented slices (a separate process) ---------------------------------

FT_SHAPE = (7, 24, 28)  # (k, j, i): slices along k are 24 x 28


@pytest.fixture
def finetune_env(slicer_env):
    """A Logic on a synthetic volume (a bright block on noise) with a fake session."""
    rng = np.random.default_rng(3)
    array = rng.normal(100.0, 10.0, FT_SHAPE).astype(np.int16)
    array[:, 6:18, 8:22] += 300
    volume = add_volume(slicer_env.slicer, array, name="knee 1")
    logic = slicer_env.module.iSegFormerSlicerLogic()
    logic.setVolume(volume)
    segmentation, segment_id = logic.setSegmentation()
    logic._bridge = SessionBridge(FakeSession(FT_SHAPE))
    yield slicer_env, logic, volume, segmentation, segment_id
    logic.shutdown()


def annotate(logic, segmentation, segment_id):
    """Points on k slices 1 and 4, slice 3 painted by hand, a propagation (the fake fills every
    slice), then slice 5 painted by hand: the annotated slices are 1, 3, 4, 5."""
    import slicer

    volume = logic.volumeNode
    logic.setModelSettings(propagation="interpolation")
    logic._stale = False  # keep the fake session
    logic.addClick(to_world(IJK_TO_RAS, (12, 10, 1)), axis=0)
    logic.addClick(to_world(IJK_TO_RAS, (14, 12, 4)), axis=0)
    paint(slicer, segmentation, segment_id, volume, lambda a: a.__setitem__((3, slice(6, 18), slice(8, 22)), 1))
    logic.propagate()
    # outside what propagation wrote
    paint(slicer, segmentation, segment_id, volume, lambda a: a.__setitem__((5, slice(19, 23), slice(1, 6)), 1))


def test_finetune_learns_from_the_annotated_slices_not_the_propagated_ones(finetune_env):
    slicer_env, logic, volume, segmentation, segment_id = finetune_env
    slicer = slicer_env.slicer
    annotate(logic, segmentation, segment_id)
    assert segment(slicer, segmentation, segment_id, volume)[[0, 2, 6]].any(axis=(1, 2)).all()  # propagated
    assert logic.finetuneSlices() == (0, [1, 3, 4, 5], "annotated")
    # a segment drawn with other tools only: every slice that holds it, along the asked axis
    other = segmentation.GetSegmentation().AddEmptySegment("", "bone")
    paint(slicer, segmentation, other, volume, lambda a: a.__setitem__((slice(2, 5), slice(10, 12), 3), 1))
    assert logic.finetuneSlices(other) == (0, [2, 3, 4], "labelled")
    assert logic.finetuneSlices(other, axis=2) == (2, [3], "labelled")
    empty = segmentation.GetSegmentation().AddEmptySegment("", "empty")
    with pytest.raises(ValueError, match="segment is empty.*first"):
        logic.finetuneSlices(empty)


class StubFinetuneProcess:
    """Stands in for isegformer.finetune.process.FinetuneProcess: checks the exported files when
    started, then hands out a scripted event sequence, one event per poll()."""

    last = None

    def __init__(self, cli_args, python=None, env=None):
        from isegformer.finetune.process import FinetuneOutcome

        self.Outcome = FinetuneOutcome
        self.cli_args = list(cli_args)
        self.done = self.total = 0
        self.message = ""
        self.epochs = []
        self.out_dir = None
        self.cancel_requested = False
        self.script = None
        StubFinetuneProcess.last = self

    def option(self, flag):
        return self.cli_args[self.cli_args.index(flag) + 1]

    def start(self):
        from isegformer.volume import read_label_map, read_volume

        self.image = read_volume(self.option("--volumes"))
        self.label = read_label_map(self.option("--labels"), self.image)
        self.folder = Path(self.option("--volumes")).parent
        self.out_dir = Path("/nowhere") / self.option("--name")
        self.script = [
            {"event": "start", "out_dir": str(self.out_dir)},
            {"event": "step", "done": 1, "total": 2, "message": "loss 0.5"},
            {"event": "epoch", "epoch": 1, "iou": 0.5, "val_noc85": 3.0},
            {"event": "step", "done": 2, "total": 2, "message": "loss 0.4"},
            {"event": "done", "checkpoint": str(self.out_dir / "model.pth")},
        ]
        return self

    @property
    def finished(self):
        return not self.script

    def poll(self):
        if not self.script:
            return []
        event = self.script.pop(0)
        self.final = event
        if event["event"] == "step":
            self.done, self.total, self.message = event["done"], event["total"], event["message"]
        elif event["event"] == "epoch":
            self.epochs.append(event)
        return [event]

    def cancel(self, timeout=None):
        self.cancel_requested = True
        self.script = [{"event": "cancelled", "out_dir": str(self.out_dir)}]

    def outcome(self):
        kind = self.final["event"]
        if kind == "done":
            return self.Outcome("done", Path(self.final["checkpoint"]), 0, None, self.epochs, self.out_dir)
        if kind == "cancelled":
            return self.Outcome("cancelled", None, 130, None, self.epochs, self.out_dir)
        return self.Outcome("error", None, 1, self.final["message"], self.epochs, self.out_dir)


@pytest.fixture
def stub_process(monkeypatch):
    import isegformer.finetune.process as process

    monkeypatch.setattr(process, "FinetuneProcess", StubFinetuneProcess)
    return StubFinetuneProcess


def poll_to_the_end(logic, limit=20):
    states = [logic.pollFinetune() for _ in range(limit)]
    return [s for s in states if s is not None]


def test_finetune_exports_the_volume_and_segment_and_switches_the_model(finetune_env, stub_process):
    slicer_env, logic, volume, segmentation, segment_id = finetune_env
    annotate(logic, segmentation, segment_id)
    expected_labels = segment(slicer_env.slicer, segmentation, segment_id, volume).copy()
    logic.startFinetune(epochs=3)
    job = stub_process.last
    np.testing.assert_array_equal(job.image.array, slicer_env.slicer.util.arrayFromVolume(volume))
    np.testing.assert_allclose(job.image.ijk_to_ras, IJK_TO_RAS, atol=1e-6)
    np.testing.assert_array_equal(job.label.array, expected_labels)
    for flag, value in (("--axis", "k"), ("--slices", "1,3,4,5"), ("--label-value", "1"),
                        ("--epochs", "3"), ("--init", "official"), ("--device", "auto")):
        assert job.option(flag) == value
    assert job.option("--name").startswith("knee_1-Segment_1-")
    assert "1, 3, 4, 5" in logic.finetuneDescription() and "along k" in logic.finetuneDescription()
    with pytest.raises(RuntimeError, match="in progress"):
        logic.startFinetune()
    states = poll_to_the_end(logic)
    assert [s.running for s in states] == [True] * 4 + [False]
    assert "step 1/2" in states[1].text and states[-1].status == "done"
    checkpoint = str(job.out_dir / "model.pth")
    assert logic.model == checkpoint and checkpoint in states[-1].text
    assert logic._stale  # the session reopens with the new model (clicks replayed) on next use
    assert not job.folder.exists() and not logic.isFinetuning()


def test_a_cancelled_or_failed_finetune_keeps_the_model(finetune_env, stub_process, tmp_path):
    slicer_env, logic, volume, segmentation, segment_id = finetune_env
    previous = tmp_path / "previous.pth"
    previous.write_bytes(b"a previous fine-tune")
    logic.setModelSettings(model=str(previous))
    annotate(logic, segmentation, segment_id)
    logic.startFinetune()
    assert stub_process.last.option("--init") == str(previous)  # continues from the model in use
    logic.pollFinetune()
    assert logic.cancelFinetune()
    states = poll_to_the_end(logic)
    assert states[-1].status == "cancelled" and "unchanged" in states[-1].text
    assert logic.model == str(previous) and not stub_process.last.folder.exists()
    assert not logic.cancelFinetune()  # nothing left to cancel

    logic.startFinetune()
    stub_process.last.script = [{"event": "error", "message": "No usable training slice: segment more."}]
    states = poll_to_the_end(logic)
    assert states[-1].status == "error" and "segment more" in states[-1].text
    assert logic.model == str(previous)
    with pytest.raises(RuntimeError, match="No fine-tuning run"):
        logic.waitForFinetune()


def test_widget_finetune_button_dialog_cancel_and_model_switch(slicer_env, ready_widget, stub_process, caplog):
    import slicer_standins

    slicer, widget = slicer_env.slicer, ready_widget
    ui = widget.ui
    rng = np.random.default_rng(4)
    volume = add_volume(slicer, rng.normal(size=FT_SHAPE).astype(np.float32))
    assert ui.finetuneButton.slots("clicked()") == [widget.onFinetune]
    slicer_standins.enter_module(widget)
    ui.inputVolumeSelector.setCurrentNode(volume)
    with caplog.at_level(logging.WARNING):
        ui.finetuneButton.click()  # no segment selected yet: says what to do, starts nothing
    assert any(r.levelno == logging.WARNING and "Select the segment" in r.getMessage() for r in caplog.records)
    assert not widget.logic.isFinetuning()

    segmentation, segment_id = widget.logic.setSegmentation(volume)
    paint(slicer, segmentation, segment_id, volume,  # drawn with the Segment Editor
          lambda a: a.__setitem__((slice(2, 4), slice(5, 15), slice(5, 15)), 1))
    ui.segmentEditorWidget.setSegmentationNode(segmentation)
    ui.segmentEditorWidget.setCurrentSegmentID(segment_id)
    ui.finetuneEpochsSpinBox.value = 2
    ui.finetuneButton.click()
    assert stub_process.last.option("--epochs") == "2" and stub_process.last.option("--slices") == "2,3"
    assert "2 slices holding the segment along k" in ui.finetuneStatusLabel.text
    assert not ui.finetuneButton.enabled  # one run at a time
    timer = widget._finetuneTimer
    assert timer.isActive()
    widget._finetuneStarted -= 2.0  # the run has lasted more than a second: the dialog shows
    timer.fire()
    timer.fire()
    dialog = widget._finetuneDialog
    assert dialog.visible and dialog.maximum == 2 and dialog.value == 1
    dialog.cancel()  # the dialog's Cancel
    assert "Stopping" in ui.finetuneStatusLabel.text
    for _ in range(3):
        timer.fire()
    assert not timer.isActive() and not dialog.visible
    assert "unchanged" in ui.finetuneStatusLabel.text and ui.finetuneButton.enabled
    assert ui.checkpointPathLineEdit.currentPath == "" and widget.logic.model == slicer_env.module.DEFAULT_MODEL

    ui.finetuneButton.click()
    for _ in range(6):
        timer.fire()
    checkpoint = str(stub_process.last.out_dir / "model.pth")
    assert ui.checkpointPathLineEdit.currentPath == checkpoint == widget.logic.model
    assert checkpoint in ui.finetuneStatusLabel.text


@pytest.mark.golden
def test_finetune_runs_a_real_tiny_training_process_and_uses_its_checkpoint(finetune_env, golden_dir, tmp_path):
    """The whole path with the real launcher and CLI: export, child process, checkpoint, switch."""
    import json
    import os

    slicer_env, logic, volume, segmentation, segment_id = finetune_env
    annotate(logic, segmentation, segment_id)
    job = logic.startFinetune(
        epochs=1, init=str(golden_dir / "tiny_isegformer.pth"), device="cpu", steps_per_epoch=2,
        batch_size=1, crop=(32, 32), val_samples=0, min_area=4, out=tmp_path / "run",
        env=dict(os.environ, OMP_NUM_THREADS="1"))
    folder = Path(logic._finetuneFolder)
    checkpoint = logic.waitForFinetune(timeout=300)
    assert checkpoint == tmp_path / "run" / "model.pth" and checkpoint.is_file()
    assert logic.model == str(checkpoint) and not folder.exists()
    run = json.loads((tmp_path / "run" / "finetune.json").read_text())
    assert [name.rsplit(" ", 1)[1] for name in run["training_slices"]] == ["1", "3", "4", "5"]
    assert all("axis 0" in name for name in run["training_slices"])
    assert "tiny_isegformer.pth" in run["init"] and job.done == job.total == 2


@pytest.mark.slow
@pytest.mark.golden
def test_with_the_real_tiny_model_the_first_click_finds_the_model_loaded_and_warm(slicer_env, ready_widget, golden_dir):
    """The real Session and click network: choosing the volume and model opens and warms the
    session in the background; the first click then reuses that session (nothing is loaded or
    reopened) and writes its slice."""
    import slicer_standins

    slicer, widget = slicer_env.slicer, ready_widget
    slicer_standins.enter_module(widget)
    widget.ui.checkpointPathLineEdit.currentPath = str(golden_dir / "tiny_isegformer.pth")
    widget.ui.deviceComboBox.currentText = "cpu"
    widget.ui.propagationComboBox.currentText = "interpolation"
    rng = np.random.default_rng(0)
    array = rng.normal(0, 5, (6, 40, 48)).astype(np.float32)
    array[2:5, 10:30, 12:36] += 100
    ijk_to_ras = np.diag([0.8, 0.8, 2.0, 1.0])
    volume = add_volume(slicer, array, ijk_to_ras)
    red = aligned_matrix(ijk_to_ras, 2)  # looks along k, through slice 3
    red[:3, 3] = to_world(ijk_to_ras, (0, 0, 3))
    slice_node(slicer, "Red", red)
    widget.ui.inputVolumeSelector.setCurrentNode(volume)
    poll_until_idle(widget, widget.logic, timeout=240)
    bridge = widget.logic._bridge
    assert bridge is not None and widget.logic.activeDevice == "cpu"
    predictor = bridge.session.predictor
    assert predictor is not None

    positive, _ = widget.logic.getClickNodes()
    positive.AddControlPointWorld(*to_world(ijk_to_ras, (24, 20, 3)))
    poll_until_idle(widget, widget.logic, timeout=240)
    assert widget.logic._bridge is bridge  # the click used the warmed session: nothing reopened
    assert widget.logic.hasClicks() and widget.ui.statusLabel.text == ""
    written = segment(slicer, widget.ui.segmentEditorWidget.segmentationNode(),
                      widget.ui.segmentEditorWidget.currentSegmentID(), volume)
    np.testing.assert_array_equal(written[3] > 0, bridge.segment_mask(widget.ui.segmentEditorWidget.currentSegmentID())[3])
    assert not np.delete(written, 3, axis=0).any()  # only that slice


@pytest.mark.data
def test_a_left_handed_volume_read_by_slicer_is_clicked_on_the_slice_under_the_point(slicer_env, data_dir):
    """Slicer's volume reader flips K of left-handed images (ForceRightHandedIJKCoordinateSystem,
    Slicer 5.8+): its k index counts the other way from the file's. The slice written is the
    one under the clicked world point, whichever way k counts."""
    from isegformer.volume import read_volume

    slicer = slicer_env.slicer
    path = data_dir / "radiomics_brain" / "brain1_image.nrrd"
    volume = slicer.util.loadVolume(str(path))
    from_file = read_volume(path)  # the package's reader keeps the file's (left-handed) order
    slicer_ijk_to_ras = slicer.util.arrayFromVTKMatrix(_matrix(volume))
    assert np.linalg.det(slicer_ijk_to_ras[:3, :3]) > 0 > np.linalg.det(from_file.ijk_to_ras[:3, :3])
    logic = slicer_env.module.iSegFormerSlicerLogic()
    logic.setVolume(volume)
    segmentation, segment_id = logic.setSegmentation()
    logic._bridge = SessionBridge(FakeSession(slicer.util.arrayFromVolume(volume).shape))
    file_k = 20  # the file's slice 20 ...
    ras = (from_file.ijk_to_ras @ np.array([128, 100, file_k, 1.0]))[:3]
    point = logic.addClick(ras, axis=0)
    depth = from_file.array.shape[0]
    assert point.index == depth - 1 - file_k  # ... is Slicer's slice 4 of 25
    written = segment(slicer, segmentation, segment_id, volume)
    assert written[point.index].sum() == 9 and written.sum() == 9
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume)[point.index], from_file.array[file_k])
    logic.shutdown()


def _matrix(volume):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return matrix


def test_loading_a_saved_scene_brings_its_settings_back_into_the_widget(slicer_env, ready_widget, tmp_path):
    """File > Load scene into the open scene (Slicer's Connect): the saved parameter node wins
    over what the widget showed, and the widget shows it."""
    import slicer_standins

    slicer, widget = slicer_env.slicer, ready_widget
    ui = widget.ui
    slicer_standins.enter_module(widget)
    volume = add_volume(slicer, np.zeros(SHAPE, np.int16), name="saved volume")
    ui.inputVolumeSelector.setCurrentNode(volume)
    ui.deviceComboBox.currentText = "cpu"
    ui.propagationComboBox.currentText = "interpolation"
    assert slicer.util.saveScene(str(tmp_path / "scene"))

    ui.deviceComboBox.currentText = "cuda"
    ui.propagationComboBox.currentText = "stcn"
    slicer.util.loadScene(str(tmp_path / "scene" / "scene.mrml"), {"clear": True})
    assert (ui.deviceComboBox.currentText, ui.propagationComboBox.currentText) == ("cpu", "interpolation")
    assert (widget.logic.device, widget.logic.propagation) == ("cpu", "interpolation")
    loaded = ui.inputVolumeSelector.currentNode()
    assert loaded is not None and loaded.GetName() == "saved volume" and loaded is widget.logic.volumeNode
