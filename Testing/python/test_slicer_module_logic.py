"""The Slicer module's Logic against a small fake Slicer (see slicer_fakes.py) and a fake session.

What is checked is the module's own work: MRML geometry to the right slice (views, parent
transforms), slice writes limited to that slice and following the Segment Editor settings,
undo, moved/deleted points, propagation writes, hand edits adopted, failures leaving no point.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from isegformer.errors import InvalidInputError
from isegformer.slicer_support.session_bridge import SessionBridge
from isegformer.slicer_support.views import ObliqueViewError
from slicer_fakes import FakeSession, FakeSliceNode, FakeTransformNode, FakeVolumeNode, fake_slicer_module

SHAPE = (6, 8, 10)  # (k, j, i)
# a volume acquired "sagittally": i -> posterior, j -> superior, k -> right
IJK_TO_RAS = np.array([[0, 0, 1.5, 10.0], [-0.8, 0, 0, -20.0], [0, 1.1, 0, 5.0], [0, 0, 0, 1]])


def turn_about_s(degrees, shift=(3.0, -4.0, 7.0)):
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    matrix = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    matrix[:3, 3] = shift
    return matrix


@pytest.fixture
def env():
    with fake_slicer_module() as (module, scene):
        volume = FakeVolumeNode(np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE), IJK_TO_RAS)
        parent = FakeTransformNode(turn_about_s(90.0))
        volume.SetAndObserveTransformNodeID(parent)
        logic = module.iSegFormerSlicerLogic()
        logic.setVolume(volume)
        segmentation, segment_id = logic.setSegmentation()
        segmentation.SetAndObserveTransformNodeID(parent)
        session = FakeSession(SHAPE)
        logic._bridge = SessionBridge(session)
        world = turn_about_s(90.0) @ IJK_TO_RAS
        yield module, scene, logic, segmentation, segment_id, session, world
        logic.shutdown()


def aligned_matrix(world, column):
    """A SliceToRAS whose normal is IJK column ``column`` of the world matrix."""
    directions = world[:3, :3] / np.linalg.norm(world[:3, :3], axis=0)
    others = [c for c in range(3) if c != column]
    matrix = np.eye(4)
    matrix[:3, 0], matrix[:3, 1], matrix[:3, 2] = directions[:, others[0]], directions[:, others[1]], directions[:, column]
    return matrix


def aligned_view(world, column, name):
    return FakeSliceNode(name, aligned_matrix(world, column))


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
    module, scene, logic, segmentation, segment_id, session, world = env
    ijk = (7, 5, 2)  # (i, j, k)
    view = aligned_view(world, column, "Red")
    point = logic.addClick(to_world(world, ijk), positive=True, sliceNode=view)
    axis = 2 - column
    assert point.axis == axis and point.index == ijk[column]
    result = segmentation.arrays[segment_id]
    written = np.take(result, point.index, axis=axis)
    rows_cols = [ijk[c] for c in (2, 1, 0) if c != column]  # (k, j, i) order, slice axis removed
    expected = np.zeros_like(written)
    expected[rows_cols[0] - 1:rows_cols[0] + 2, rows_cols[1] - 1:rows_cols[1] + 2] = 1
    np.testing.assert_array_equal(written, expected)
    assert result.sum() == 9  # nothing anywhere else
    assert segmentation.writes and all(len(set(w[2][2 * column:2 * column + 2])) == 1 for w in segmentation.writes)


def test_an_oblique_view_is_refused_and_nothing_is_recorded(env):
    module, scene, logic, segmentation, segment_id, session, world = env
    aligned = aligned_matrix(world, 0)
    oblique = FakeSliceNode("Yellow", rotation_about(aligned[:3, 0], 35.0) @ aligned)
    with pytest.raises(ObliqueViewError, match="Yellow"):
        logic.addClick(to_world(world, (4, 4, 3)), sliceNode=oblique)
    assert not logic.hasClicks() and segmentation.arrays[segment_id].sum() == 0
    positive, _ = logic.getClickNodes()
    assert positive.GetNumberOfControlPoints() == 0  # the point placed for it is gone too


def test_without_a_known_view_the_nearest_slice_plane_decides_or_the_point_is_refused(env):
    module, scene, logic, segmentation, segment_id, session, world = env
    on_plane = to_world(world, (4, 4, 3))
    # Yellow's plane (normal along i) passes through the point; Red's (normal along k) does not
    scene.AddNode(FakeSliceNode("Red", aligned_matrix(world, 2)))
    yellow = aligned_matrix(world, 0)
    yellow[:3, 3] = on_plane
    scene.AddNode(FakeSliceNode("Yellow", yellow))
    assert logic.locateClick(on_plane).axis == 2
    scene.nodes = [n for n in scene.nodes if n.GetName() != "Red"]
    shifted = on_plane + 10.0 * yellow[:3, 2]  # 10 mm off Yellow's plane, voxels are <= 1.5 mm
    with pytest.raises(ValueError, match="not on any slice view"):
        logic.locateClick(shifted)


def test_a_non_linear_parent_transform_is_refused_with_advice(env):
    module, scene, logic, segmentation, segment_id, session, world = env
    logic.volumeNode.GetParentTransformNode().linear = False
    with pytest.raises(ValueError, match="Harden"):
        logic.addClick(to_world(world, (4, 4, 3)), axis=0)


def test_overwrite_all_takes_the_slice_voxels_from_other_segments_only(env):
    module, scene, logic, segmentation, segment_id, session, world = env
    other = segmentation.GetSegmentation().AddEmptySegment("", "bone")
    segmentation.arrays[other][:, 3:6, 6:9] = 1  # a bar through every k slice
    editor = logic.getSegmentEditorNode()
    editor.overwrite_mode = 0  # overwrite all
    point = logic.addClick(to_world(world, (7, 5, 2)), axis=0)
    bone = segmentation.arrays[other]
    assert not bone[point.index, 4:7, 6:9].any()  # taken where the new square is
    assert bone[point.index, 3, 6:9].all()  # kept outside the square
    for k in range(SHAPE[0]):
        if k != point.index:
            assert bone[k, 3:6, 6:9].all()  # other slices untouched


def test_allow_overlap_and_inside_segment_masking(env):
    module, scene, logic, segmentation, segment_id, session, world = env
    other = segmentation.GetSegmentation().AddEmptySegment("", "bone")
    segmentation.arrays[other][:, 4:6, 6:9] = 1
    editor = logic.getSegmentEditorNode()
    editor.overwrite_mode = 2  # allow overlap
    editor.mask_mode, editor.mask_segment = 5, other  # only inside "bone"
    point = logic.addClick(to_world(world, (7, 5, 2)), axis=0)
    target = segmentation.arrays[segment_id][point.index]
    np.testing.assert_array_equal(np.argwhere(target), [[4, 6], [4, 7], [4, 8], [5, 6], [5, 7], [5, 8]])
    assert segmentation.arrays[other].sum() == SHAPE[0] * 2 * 3  # unchanged


def test_undo_restores_the_slice_and_removes_the_point(env):
    module, scene, logic, segmentation, segment_id, session, world = env
    saved = []
    logic.saveStateForUndo = lambda: saved.append(segmentation.arrays[segment_id].copy())
    logic.addClick(to_world(world, (2, 2, 3)), axis=0)
    after_first = segmentation.arrays[segment_id].copy()
    logic.addClick(to_world(world, (7, 5, 3)), axis=0)
    assert len(saved) == 2  # an undo state before every write
    logic.undoLastClick()
    np.testing.assert_array_equal(segmentation.arrays[segment_id], after_first)
    positive, _ = logic.getClickNodes()
    assert positive.GetNumberOfControlPoints() == 1
    assert ("undo",) in session.calls


def test_moving_and_deleting_points_recompute_their_slice(env):
    module, scene, logic, segmentation, segment_id, session, world = env
    logic.addClick(to_world(world, (2, 2, 3)), axis=0)
    logic.addClick(to_world(world, (7, 5, 1)), axis=0)
    positive, _ = logic.getClickNodes()
    positive.SetNthControlPointPositionWorld(0, *to_world(world, (5, 6, 3)))  # dragged within slice 3
    logic.submitPointsChanged()
    logic.waitForJobs()
    slice3 = segmentation.arrays[segment_id][3]
    assert slice3[6, 5] and not slice3[2, 2]
    assert segmentation.arrays[segment_id][1][5, 7]  # the other slice is as it was
    positive.RemoveNthControlPoint(1)  # the point on slice 1 is deleted
    logic.submitPointsChanged()
    logic.waitForJobs()
    assert not segmentation.arrays[segment_id][1].any()
    assert slice3[6, 5]


def test_a_failed_click_leaves_no_point_and_no_record(env):
    module, scene, logic, segmentation, segment_id, session, world = env

    def broken(*args, **kwargs):
        raise InvalidInputError("the model failed")

    session.click_slice = broken
    with pytest.raises(InvalidInputError, match="the model failed"):
        logic.addClick(to_world(world, (2, 2, 3)), axis=0)
    positive, _ = logic.getClickNodes()
    assert positive.GetNumberOfControlPoints() == 0 and not logic.hasClicks()


def test_propagation_writes_the_volume_and_adopts_hand_edits(env):
    module, scene, logic, segmentation, segment_id, session, world = env
    logic.setModelSettings(propagation="interpolation")
    logic._stale = False  # the fake session stays (settings would reopen a real one)
    logic.addClick(to_world(world, (4, 4, 1)), axis=0)
    segmentation.arrays[segment_id][4, 0:2, 0:2] = 1  # painted by hand in Slicer on slice 4
    logic.propagate()
    assert ("set", 0, 4) in session.calls  # the painted slice became an annotation
    result = segmentation.arrays[segment_id]
    assert all(result[k].any() for k in range(SHAPE[0]))  # the fake propagates to every slice
    assert ("propagate", "interpolation", 0) in session.calls


def test_stcn_without_weights_says_what_to_do(env, monkeypatch):
    module, scene, logic, segmentation, segment_id, session, world = env
    logic.addClick(to_world(world, (4, 4, 1)), axis=0)
    monkeypatch.setattr(logic, "modelsToDownload", lambda: ["stcn"])
    with pytest.raises(RuntimeError, match="interpolation"):
        logic.propagate()


def test_changed_settings_reopen_the_session_and_replay_the_clicks(env, monkeypatch, tmp_path):
    module, scene, logic, segmentation, segment_id, session, world = env
    logic.addClick(to_world(world, (2, 2, 3)), axis=0)
    logic.addClick(to_world(world, (7, 5, 3)), axis=0, positive=False)
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"not really a model")
    monkeypatch.setenv("ISEGFORMER_HOME", str(tmp_path / "home"))
    opened = []

    def fake_open(cls, volume, ijk_to_ras, click_model, device="auto", stcn_weights=None, session_factory=None):
        opened.append((volume.shape, click_model, device))
        np.testing.assert_allclose(ijk_to_ras, world)
        return cls(FakeSession(volume.shape))

    monkeypatch.setattr(SessionBridge, "open", classmethod(fake_open))
    monkeypatch.setattr(SessionBridge, "warm_up", lambda self: None)
    logic.setModelSettings(model=str(checkpoint), device="cpu", propagation="interpolation")
    logic.addClick(to_world(world, (5, 1, 4)), axis=0)
    assert opened == [(SHAPE, str(checkpoint), "cpu")]
    replayed = [c for c in logic._bridge.session.calls if c[0] == "click"]
    assert [(c[2], c[5]) for c in replayed] == [(3, True), (3, False), (4, True)]  # in click order


def test_the_modules_own_slicer_test_passes_against_the_fake():
    with fake_slicer_module() as (module, scene):
        case = module.iSegFormerSlicerTest()
        case.runTest()


@pytest.mark.slow
@pytest.mark.golden
@pytest.mark.data
def test_the_self_test_runs_end_to_end_with_the_real_session(golden_dir, data_dir, monkeypatch):
    """iSegFormerSlicerSelfTest with the tiny checkpoint and the real session, MRML faked."""
    import importlib.util

    from slicer_fakes import ROOT

    monkeypatch.setenv("ISEGFORMER_GOLDEN", str(golden_dir))
    monkeypatch.setenv("ISEGFORMER_DATA", str(data_dir))
    monkeypatch.delenv("ISEGFORMER_TEST_CHECKPOINT", raising=False)
    with fake_slicer_module() as (module, scene):
        path = ROOT / "Testing" / "Slicer" / "iSegFormerSlicerSelfTest.py"
        spec = importlib.util.spec_from_file_location("iSegFormerSlicerSelfTest", path)
        selftest = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(selftest)
        selftest.iSegFormerSlicerSelfTestTest().runTest()


# ---- the widget's wiring, with Qt faked too ------------------------------------------------

from slicer_fakes import fake_slicer_widget  # noqa: E402


def remembering(widget, getter, setter):
    """Make a fake widget's ``setter(value)`` change what ``getter()`` returns."""
    state = {}
    widget.returns[setter] = lambda value: state.__setitem__("value", value)
    widget.returns[getter] = lambda: state.get("value")


def poll_until_idle(widget, logic, timeout=10.0):
    import time

    deadline = time.monotonic() + timeout
    widget.onPoll()
    while logic.isBusy() or logic._worker and logic._worker.pending_count:
        assert time.monotonic() < deadline, "the worker did not finish"
        time.sleep(0.01)
        widget.onPoll()
    widget.onPoll()


def test_widget_wires_a_placed_point_to_a_written_slice_and_undo(monkeypatch):
    with fake_slicer_widget() as (module, scene, ui):
        volume = scene.AddNode(FakeVolumeNode(np.zeros(SHAPE, np.int16), IJK_TO_RAS))
        red = aligned_matrix(IJK_TO_RAS, 2)  # looks along k, through slice 2
        red[:3, 3] = to_world(IJK_TO_RAS, (0, 0, 2))
        scene.AddNode(FakeSliceNode("Red", red))
        widget = module.iSegFormerSlicerWidget(None)
        widget.setup()
        assert ui.deviceComboBox.calls[-3:] == [("addItem", ("auto",)), ("addItem", ("cuda",)), ("addItem", ("cpu",))]
        assert ui.modelComboBox.calls[1] == ("addItem", (module.DEFAULT_MODEL,))
        ui.inputVolumeSelector.returns["currentNode"] = lambda: volume
        remembering(ui.segmentEditorWidget, "segmentationNode", "setSegmentationNode")
        remembering(ui.segmentEditorWidget, "currentSegmentID", "setCurrentSegmentID")
        monkeypatch.setattr(module.iSegFormerSlicerLogic, "missingDependencies", staticmethod(lambda: []))
        monkeypatch.setattr(module.iSegFormerSlicerLogic, "modelStatusText", lambda self: "ready")
        monkeypatch.setattr(module.iSegFormerSlicerLogic, "modelNeedsDownload", lambda self: False)
        ui.inputVolumeSelector.emit("currentNodeChanged(vtkMRMLNode*)", volume)
        widget.enter()
        positive, negative = widget.logic.getClickNodes()
        observed = {(node, event) for node, event, _ in widget.observations}
        assert (positive, 1) in observed and (negative, 1) in observed  # placement is observed
        session = FakeSession(SHAPE)
        widget.logic._bridge = SessionBridge(session)

        index = positive.AddControlPointWorld(to_world(IJK_TO_RAS, (7, 5, 2)))
        widget.onPointDefined(positive, 1, index)
        segmentation = ui.segmentEditorWidget.segmentationNode()
        segment_id = ui.segmentEditorWidget.currentSegmentID()
        poll_until_idle(widget, widget.logic)
        written = segmentation.arrays[segment_id]
        assert written[2, 4:7, 6:9].all() and written.sum() == 9
        assert "slice 2 along k" in ui.axisInfoLabel.text
        assert ui.propagateButton.enabled and ui.statusLabel.text == ""

        index = negative.AddControlPointWorld(to_world(IJK_TO_RAS, (8, 6, 2)))
        widget.onPointDefined(negative, 1, index)
        poll_until_idle(widget, widget.logic)
        assert not segmentation.arrays[segment_id][2, 6, 8]

        widget.onUndoClick()  # Ctrl+Z / the Undo button
        poll_until_idle(widget, widget.logic)
        assert segmentation.arrays[segment_id][2, 4:7, 6:9].all()
        assert negative.GetNumberOfControlPoints() == 0
        saves = [c for c in ui.segmentEditorWidget.calls if c[0] == "saveStateForUndo"]
        assert len(saves) == 3  # one Segment Editor undo state before each of the three writes
        widget.cleanup()


def test_widget_refuses_a_point_from_an_oblique_view_and_says_why(monkeypatch):
    with fake_slicer_widget() as (module, scene, ui):
        volume = scene.AddNode(FakeVolumeNode(np.zeros(SHAPE, np.int16), IJK_TO_RAS))
        aligned = aligned_matrix(IJK_TO_RAS, 2)
        aligned[:3, 3] = to_world(IJK_TO_RAS, (5, 4, 3))  # the plane passes through the point
        rotated = rotation_about(aligned[:3, 0], 20.0)
        rotated[:3, 3] = aligned[:3, 3] - rotated[:3, :3] @ aligned[:3, 3]  # rotate about that point
        scene.AddNode(FakeSliceNode("Green", rotated @ aligned))
        widget = module.iSegFormerSlicerWidget(None)
        widget.setup()
        ui.inputVolumeSelector.returns["currentNode"] = lambda: volume
        monkeypatch.setattr(module.iSegFormerSlicerLogic, "missingDependencies", staticmethod(lambda: []))
        monkeypatch.setattr(module.iSegFormerSlicerLogic, "modelStatusText", lambda self: "ready")
        monkeypatch.setattr(module.iSegFormerSlicerLogic, "modelNeedsDownload", lambda self: False)
        widget.enter()
        positive, _ = widget.logic.getClickNodes()
        index = positive.AddControlPointWorld(to_world(IJK_TO_RAS, (5, 4, 3)))
        widget.onPointDefined(positive, 1, index)
        assert "Green" in ui.statusLabel.text and "oblique" in ui.statusLabel.text
        assert positive.GetNumberOfControlPoints() == 0 and not widget.logic.hasClicks()
        assert not widget.logic.isBusy()
        widget.cleanup()


# ---- fine-tuning on the segmented slices (a separate process) ---------------------------------

FT_SHAPE = (7, 24, 28)  # (k, j, i): slices along k are 24 x 28


@pytest.fixture
def finetune_env():
    """A Logic on a synthetic volume (a bright block on noise) with a fake session."""
    with fake_slicer_module() as (module, scene):
        rng = np.random.default_rng(3)
        array = rng.normal(100.0, 10.0, FT_SHAPE).astype(np.int16)
        array[:, 6:18, 8:22] += 300
        volume = scene.AddNode(FakeVolumeNode(array, IJK_TO_RAS, name="knee 1"))
        logic = module.iSegFormerSlicerLogic()
        logic.setVolume(volume)
        segmentation, segment_id = logic.setSegmentation()
        logic._bridge = SessionBridge(FakeSession(FT_SHAPE))
        yield module, logic, volume, segmentation, segment_id
        logic.shutdown()


def annotate(logic, segmentation, segment_id):
    """Points on k slices 1 and 4, slice 3 painted by hand, a propagation (the fake fills every
    slice), then slice 5 painted by hand: the annotated slices are 1, 3, 4, 5."""
    logic.setModelSettings(propagation="interpolation")
    logic._stale = False  # keep the fake session
    logic.addClick(to_world(IJK_TO_RAS, (12, 10, 1)), axis=0)
    logic.addClick(to_world(IJK_TO_RAS, (14, 12, 4)), axis=0)
    segmentation.arrays[segment_id][3, 6:18, 8:22] = 1
    logic.propagate()
    segmentation.arrays[segment_id][5, 19:23, 1:6] = 1  # outside what propagation wrote


def test_finetune_learns_from_the_annotated_slices_not_the_propagated_ones(finetune_env):
    module, logic, volume, segmentation, segment_id = finetune_env
    annotate(logic, segmentation, segment_id)
    assert segmentation.arrays[segment_id][[0, 2, 6]].any(axis=(1, 2)).all()  # propagated slices hold it
    assert logic.finetuneSlices() == (0, [1, 3, 4, 5], "annotated")
    # a segment drawn with other tools only: every slice that holds it, along the asked axis
    other = segmentation.GetSegmentation().AddEmptySegment("", "bone")
    segmentation.arrays[other][2:5, 10:12, 3] = 1
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
    module, logic, volume, segmentation, segment_id = finetune_env
    annotate(logic, segmentation, segment_id)
    expected_labels = segmentation.arrays[segment_id].copy()
    logic.startFinetune(epochs=3)
    job = stub_process.last
    np.testing.assert_array_equal(job.image.array, volume.array)
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
    module, logic, volume, segmentation, segment_id = finetune_env
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


def test_widget_finetune_button_dialog_cancel_and_model_switch(monkeypatch, stub_process):
    with fake_slicer_widget() as (module, scene, ui):
        rng = np.random.default_rng(4)
        volume = scene.AddNode(FakeVolumeNode(rng.normal(size=FT_SHAPE).astype(np.float32), IJK_TO_RAS))
        widget = module.iSegFormerSlicerWidget(None)
        widget.setup()
        assert ("clicked()" in ui.finetuneButton._slots) and ui.finetuneButton._slots["clicked()"] == [widget.onFinetune]
        ui.inputVolumeSelector.returns["currentNode"] = lambda: volume
        remembering(ui.segmentEditorWidget, "segmentationNode", "setSegmentationNode")
        remembering(ui.segmentEditorWidget, "currentSegmentID", "setCurrentSegmentID")
        for name, value in (("missingDependencies", staticmethod(lambda: [])),
                            ("modelStatusText", lambda self: "ready"), ("modelNeedsDownload", lambda self: False)):
            monkeypatch.setattr(module.iSegFormerSlicerLogic, name, value)
        widget.enter()
        widget.onFinetune()  # no segment selected yet: says what to do, starts nothing
        assert module.slicer.util.messages[-1][0] == "warning" and not widget.logic.isFinetuning()

        segmentation, segment_id = widget.logic.setSegmentation(volume)
        segmentation.arrays[segment_id][2:4, 5:15, 5:15] = 1  # drawn with the Segment Editor
        ui.segmentEditorWidget.setSegmentationNode(segmentation)
        ui.segmentEditorWidget.setCurrentSegmentID(segment_id)
        ui.finetuneEpochsSpinBox.value = 2
        widget.onFinetune()
        assert stub_process.last.option("--epochs") == "2" and stub_process.last.option("--slices") == "2,3"
        assert "2 slices holding the segment along k" in ui.finetuneStatusLabel.text
        assert not ui.finetuneButton.enabled  # one run at a time
        timer = widget._finetuneTimer
        assert ("start", ()) in timer.calls
        widget._finetuneStarted -= 2.0  # the run has lasted more than a second: the dialog shows
        widget.onFinetunePoll()
        widget.onFinetunePoll()
        dialog = widget._finetuneDialog
        assert dialog.visible and dialog.maximum == 2 and dialog.value == 1
        dialog.emit("canceled()")  # the dialog's Cancel
        assert "Stopping" in ui.finetuneStatusLabel.text
        for _ in range(3):
            widget.onFinetunePoll()
        assert ("stop", ()) in timer.calls and not dialog.visible
        assert "unchanged" in ui.finetuneStatusLabel.text and ui.finetuneButton.enabled
        assert ui.checkpointPathLineEdit.currentPath == "" and widget.logic.model == module.DEFAULT_MODEL

        widget.onFinetune()
        for _ in range(6):
            widget.onFinetunePoll()
        checkpoint = str(stub_process.last.out_dir / "model.pth")
        assert ui.checkpointPathLineEdit.currentPath == checkpoint == widget.logic.model
        assert checkpoint in ui.finetuneStatusLabel.text
        widget.cleanup()


@pytest.mark.golden
def test_finetune_runs_a_real_tiny_training_process_and_uses_its_checkpoint(finetune_env, golden_dir, tmp_path):
    """The whole path with the real launcher and CLI: export, child process, checkpoint, switch."""
    import json
    import os

    module, logic, volume, segmentation, segment_id = finetune_env
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
