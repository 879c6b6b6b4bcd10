"""Resuming the module's session from a saved scene, on Slicer's own MRML (slicer-core).

The scene is saved with Slicer's own writers (a data bundle directory: the .mrml, the volume,
the .seg.nrrd and the point lists' .mrk.json), the scene is replaced by an empty one, and the
saved one is loaded with Slicer's own readers. A new Logic then finds the segmentation, the
point lists and the annotated slices through the parameter node and the session stored on the
segmentation node. With the real tiny click model (golden checkpoint), a new point on an
annotated slice continues that slice's click sequence: the mask equals the one the same point
gives in the session that was never saved. A propagation after the resume keeps the annotated
slices, and a slice painted by hand before saving, as they were.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import slicer_standins

if not slicer_standins.available():
    pytest.skip(slicer_standins.SKIP_REASON, allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "iSegFormerSlicer"))

SHAPE = (10, 40, 48)  # (k, j, i)
IJK_TO_RAS = np.array([[0.8, 0, 0, -10.0], [0, 0.8, 0, 5.0], [0, 0, 2.0, 3.0], [0, 0, 0, 1.0]])


def world(k, j, i):
    return (IJK_TO_RAS @ np.array([i, j, k, 1.0]))[:3]


def knee_like_volume():
    rng = np.random.default_rng(0)
    volume = np.zeros(SHAPE, np.float32)
    volume[2:8, 10:30, 12:36] = 100
    return (volume + rng.normal(0, 5, SHAPE)).astype(np.int16)


def read(node, segment_id, volume):
    from iSegFormerSlicerLib.segment_writer import SegmentWriter

    return SegmentWriter(node, volume).read(segment_id)


def test_the_stored_session_round_trips_and_rejects_garbage():
    from iSegFormerSlicerLib import scene_state

    from isegformer.errors import SessionFileError

    state = scene_state.SessionState()
    state.clicks.append(scene_state.SavedClick("p1", True, "seg", 0, 3))
    state.clicks.append(scene_state.SavedClick("n1", False, "seg", 0, 3))
    state.handEdited[("seg", 0)] = [8]
    state.propagated[("seg", 0)] = [0, 1, 2]
    mask = np.zeros(SHAPE, bool)
    mask[3, 10:20, 5:9] = True
    state.written[("seg", 0)] = scene_state.sliceDigests(mask, 0)
    again = scene_state.decode(scene_state.encode(state))
    assert again == state
    assert scene_state.changedSlices(mask, 0, again.written[("seg", 0)]) == []
    mask[4, 0, 0] = True
    assert scene_state.changedSlices(mask, 0, again.written[("seg", 0)]) == [4]
    for bad in ("{", "[]", '{"format": "other"}', '{"format": "isegformer-slicer-session", "version": 2}',
                '{"format": "isegformer-slicer-session", "version": 1, "clicks": [{"point": "", "positive": true,'
                ' "segment": "s", "axis": 0, "index": 1}]}',
                '{"format": "isegformer-slicer-session", "version": 1, "clicks": [{"point": "p", "positive": 1,'
                ' "segment": "s", "axis": 0, "index": 1}]}',
                '{"format": "isegformer-slicer-session", "version": 1, "clicks": [{"point": "p", "positive": true,'
                ' "segment": "s", "axis": 3, "index": 1}]}',
                '{"format": "isegformer-slicer-session", "version": 1, "written": [{"segment": "s", "axis": 0,'
                ' "digests": ["xyz"]}]}'):
        with pytest.raises(SessionFileError, match="iSegFormer session"):
            scene_state.decode(bad)


def test_digests_follow_writes_along_any_axis():
    from iSegFormerSlicerLib import scene_state

    rng = np.random.default_rng(1)
    mask = rng.random(SHAPE) < 0.3
    for axis in range(3):
        digests = np.array(scene_state.sliceDigests(mask, axis), dtype=object)
        for write_axis in range(3):
            lows = [0, 0, 0]
            lows[write_axis] = 2
            box = tuple(slice(lo, lo + (3 if a == write_axis else n)) for a, (lo, n) in enumerate(zip(lows, SHAPE)))
            before = mask[box].copy()
            after = rng.random(before.shape) < 0.5
            digests += scene_state.digestChange(before, after, lows, SHAPE, axis)
            mask[box] = after
            assert list(digests) == scene_state.sliceDigests(mask, axis)


@pytest.mark.golden
@pytest.mark.slow
def test_a_saved_scene_resumes_the_session_with_the_real_click_model(slicer_env, golden_dir, tmp_path):
    slicer, module = slicer_env.slicer, slicer_env.module
    checkpoint = golden_dir / "tiny_isegformer.pth"
    volume = slicer.util.addVolumeFromArray(knee_like_volume(), IJK_TO_RAS, name="knee")
    logic = module.iSegFormerSlicerLogic()
    logic.setVolume(volume)
    logic.setModelSettings(model=str(checkpoint), device="cpu", propagation="interpolation")
    node, segment_id = logic.setSegmentation()
    logic.addClick(world(3, 20, 24), axis=0)
    logic.addClick(world(3, 5, 5), positive=False, axis=0)
    logic.addClick(world(6, 18, 22), axis=0)
    # a slice painted by hand (not through the module) before saving
    from iSegFormerSlicerLib.segment_writer import SegmentWriter

    painted = np.zeros((1,) + SHAPE[1:], bool)
    painted[0, 12:16, 14:30] = True
    SegmentWriter(node, volume).write(segment_id, 0, 8, painted)
    saved = read(node, segment_id, volume)
    folder = tmp_path / "scene"
    assert slicer.util.saveScene(str(folder))
    # the same next point in the session that is never saved: the reference
    logic.addClick(world(3, 30, 30), axis=0)
    reference = read(node, segment_id, volume)[3]
    assert not np.array_equal(reference, saved[3])  # the point changes the slice
    logic.shutdown()

    scene = slicer_env.slicer_standins.new_scene()
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    mrml = next(folder.glob("*.mrml"))
    slicer.util.loadScene(str(mrml))
    resumed = module.iSegFormerSlicerLogic()
    assert resumed.segmentationNode is not None and resumed.segmentationNode.GetName() == node.GetName()
    assert resumed.segmentId == segment_id
    volume, node = resumed.volumeNode, resumed.segmentationNode
    np.testing.assert_array_equal(read(node, segment_id, volume), saved)
    assert resumed.hasClicks()
    records = sorted(resumed._records, key=lambda r: r.order)
    assert [(r.positive, r.point.axis, r.point.index, round(r.point.row, 6), round(r.point.col, 6)) for r in records] == \
        [(True, 0, 3, 20, 24), (False, 0, 3, 5, 5), (True, 0, 6, 18, 22)]  # point IDs repeat across the two lists
    positive, negative = resumed.getClickNodes(create=False)
    assert positive.GetNumberOfControlPoints() == 2 and negative.GetNumberOfControlPoints() == 1

    resumed.addClick(world(3, 30, 30), axis=0)
    after = read(node, segment_id, volume)
    np.testing.assert_array_equal(after[3], reference)  # the sequence continued, not restarted
    np.testing.assert_array_equal(np.delete(after, 3, axis=0), np.delete(saved, 3, axis=0))

    resumed.propagate()
    propagated = read(node, segment_id, volume)
    np.testing.assert_array_equal(propagated[3], reference)  # annotated slices are kept
    np.testing.assert_array_equal(propagated[6], saved[6])
    np.testing.assert_array_equal(propagated[8], saved[8])  # the hand-painted slice too
    assert propagated[5].any()  # between annotations: propagated
    assert resumed._propagated[(segment_id, 0)] == set(range(SHAPE[0])) - {3, 6, 8}
    resumed.shutdown()


def test_a_broken_stored_session_is_reported_and_changes_nothing(slicer_env, caplog):
    slicer, module = slicer_env.slicer, slicer_env.module
    volume = slicer.util.addVolumeFromArray(knee_like_volume(), IJK_TO_RAS, name="knee")
    logic = module.iSegFormerSlicerLogic()
    logic.setVolume(volume)
    node, _ = logic.setSegmentation()
    from iSegFormerSlicerLib import scene_state

    node.SetAttribute(scene_state.ATTRIBUTE, '{"format": "isegformer-slicer-session", "version": 1, "clicks": 5}')
    fresh = module.iSegFormerSlicerLogic()
    assert not fresh.hasClicks()  # logged, not raised: the module keeps working
    assert "unreadable" in caplog.text
    assert node.GetAttribute(scene_state.ATTRIBUTE).endswith('"clicks": 5}')  # left as it was
    from isegformer.errors import SessionFileError

    with pytest.raises(SessionFileError):
        module.iSegFormerSlicerLogic().resumeFromScene()


def test_a_saved_scene_resumes_the_session(slicer_env, tmp_path):
    """The same round trip with the stand-in session (fast): the records, their order and signs,
    the stored session's reopening with the clicks replayed, the hand-painted slice adopted."""
    from session_fakes import FakeSession

    from isegformer.slicer_support.session_bridge import SessionBridge
    from iSegFormerSlicerLib.segment_writer import SegmentWriter

    slicer, module = slicer_env.slicer, slicer_env.module
    volume = slicer.util.addVolumeFromArray(knee_like_volume(), IJK_TO_RAS, name="knee")
    logic = module.iSegFormerSlicerLogic()
    logic.setVolume(volume)
    logic.setModelSettings(propagation="interpolation")
    node, segment_id = logic.setSegmentation()
    logic._bridge, logic._stale = SessionBridge(FakeSession(SHAPE)), False
    logic.addClick(world(3, 20, 24), axis=0)
    logic.addClick(world(3, 21, 25), positive=False, axis=0)
    logic.addClick(world(6, 18, 22), axis=0)
    painted = np.zeros((1,) + SHAPE[1:], bool)
    painted[0, 12:16, 14:30] = True
    SegmentWriter(node, volume).write(segment_id, 0, 8, painted)  # by hand, not through the module
    saved = read(node, segment_id, volume)
    folder = tmp_path / "scene"
    assert slicer.util.saveScene(str(folder))
    logic.shutdown()

    slicer_env.slicer_standins.new_scene()
    slicer.util.loadScene(str(next(folder.glob("*.mrml"))))
    resumed = module.iSegFormerSlicerLogic()
    volume, node = resumed.volumeNode, resumed.segmentationNode
    np.testing.assert_array_equal(read(node, segment_id, volume), saved)
    assert resumed.resumeFromScene()
    records = sorted(resumed._records, key=lambda r: r.order)
    assert [(r.positive, r.point.index, round(r.point.row), round(r.point.col)) for r in records] == \
        [(True, 3, 20, 24), (False, 3, 21, 25), (True, 6, 18, 22)]
    session = FakeSession(SHAPE)
    opened = []

    def open_fake(cls, *args, **kwargs):
        opened.append(1)
        return SessionBridge(session)

    import unittest.mock

    with unittest.mock.patch.object(SessionBridge, "open", classmethod(open_fake)), \
            unittest.mock.patch.object(SessionBridge, "warm_up", lambda self: None), \
            unittest.mock.patch("isegformer.weights.resolve.resolve_model", lambda name, download=False, kind=None: Path(name)):
        resumed.propagate()
    assert opened == [1]
    replayed = [call for call in session.calls if call[0] == "click"]
    assert [(c[2], round(c[3], 6), round(c[4], 6), c[5]) for c in replayed] == \
        [(3, 20, 24, True), (3, 21, 25, False), (6, 18, 22, True)]  # in the order placed
    assert ("set", 0, 8) in session.calls  # the painted slice is an annotation of the new session
    np.testing.assert_array_equal(session.annotations[(segment_id, 0, 8)][0], saved[8])
    assert session.annotated_slices(segment_id, axis=0) == [3, 6, 8]
    resumed.shutdown()


class _RecordingFactory:
    """The package's own propagator factory, keeping the propagators it makes."""

    def __init__(self):
        self.made = []

    def __call__(self, *args, **kwargs):
        from isegformer.propagation.factory import create_propagator

        self.made.append(create_propagator(*args, **kwargs))
        return self.made[-1]

    @property
    def decoded(self):
        return sum(getattr(p, "frames_decoded", 0) for p in self.made)


def _real_sessions(networks, factories):
    """Patches under which the Logic opens a real isegformer Session: a fast stand-in click
    network (the tiny checkpoint's clicks are slow), real STCN with random weights, and a
    recording propagator factory per session opened (appended to ``factories``)."""
    import contextlib
    import unittest.mock

    from fake_click_net import FakeClickNet

    from isegformer.click_engine.predictor import ClickPredictor
    from isegformer.session import Session
    from isegformer.slicer_support.session_bridge import SessionBridge

    network, _ = networks

    def open_real(cls, volume, ijk_to_ras, click_model, device="auto", stcn_weights=None, session_factory=None,
                  click_precision="float32"):
        factories.append(_RecordingFactory())
        session = Session.open((np.asarray(volume), np.asarray(ijk_to_ras, float)), device="cpu",
                               click_model=ClickPredictor(FakeClickNet(reach=6.0), device="cpu", zoom_in=False),
                               stcn_weights=network, propagator_factory=factories[-1])
        return SessionBridge(session, has_stcn_weights=True)

    stack = contextlib.ExitStack()
    stack.enter_context(unittest.mock.patch.object(SessionBridge, "open", classmethod(open_real)))
    stack.enter_context(unittest.mock.patch.object(SessionBridge, "warm_up", lambda self: None))
    stack.enter_context(unittest.mock.patch("isegformer.weights.resolve.resolve_model",
                                            lambda name, download=False, kind=None: Path(str(name))))
    return stack


def _knee_propagated(slicer_env, networks, factories):
    """A knee-like volume with points on slices 1, 5 and 9 and their STCN propagation, through
    the module Logic on a real Session. Returns (volume node, logic, segmentation node, segment ID)."""
    slicer, module = slicer_env.slicer, slicer_env.module
    volume = slicer.util.addVolumeFromArray(knee_like_volume(), IJK_TO_RAS, name="knee")
    logic = module.iSegFormerSlicerLogic()
    logic.setVolume(volume)
    logic.setModelSettings(device="cpu", propagation="stcn")
    node, segment_id = logic.setSegmentation()
    with _real_sessions(networks, factories):
        for k in (1, 5, 9):
            logic.addClick(world(k, 20, 24), axis=0)
        logic.propagate()
    return volume, logic, node, segment_id


def _saved_scene_with_a_propagation(slicer_env, tmp_path, networks, factories):
    """Points on slices 1, 5 and 9, an STCN propagation, the scene saved and closed.
    Returns (scene folder, segment ID, the propagation record, the segment's voxels)."""
    from iSegFormerSlicerLib import scene_state

    slicer = slicer_env.slicer
    volume, logic, node, segment_id = _knee_propagated(slicer_env, networks, factories)
    assert factories[0].decoded >= SHAPE[0] - 3
    from isegformer.propagation.network_digest import network_digest

    axis, method, digests, weights = logic._propagationRecords[segment_id]
    assert (axis, method, [index for index, _ in digests]) == (0, "stcn", [1, 5, 9])
    assert weights == network_digest(networks[0], None)  # the STCN the session ran, no FusionNet
    stored = scene_state.load(node)
    assert stored.propagation[segment_id] == (axis, method, digests, weights)
    saved = read(node, segment_id, volume)
    assert saved[3].any() and saved[7].any()  # propagated between the points
    folder = tmp_path / "scene"
    assert slicer.util.saveScene(str(folder))
    logic.shutdown()
    slicer_env.slicer_standins.new_scene()
    return folder, segment_id, (axis, method, digests, weights), saved


def test_a_resumed_scene_propagates_only_around_the_new_point(slicer_env, tmp_path, random_stcn_networks,
                                                              one_torch_thread):
    """Issue 11 point 5: save, clear, load; the widget takes the session up at the import (no
    click); after one new point, the propagation decodes and writes only the slices between
    that point's slice and its annotated neighbours, and the stored session carries the record."""
    from iSegFormerSlicerLib import scene_state

    slicer, module = slicer_env.slicer, slicer_env.module
    factories = []
    folder, segment_id, (axis, method, digests, weights), saved = _saved_scene_with_a_propagation(
        slicer_env, tmp_path, random_stcn_networks, factories)
    widget = slicer_env.slicer_standins.build_module_widget(module.iSegFormerSlicerWidget)
    try:
        slicer.util.loadScene(str(next(folder.glob("*.mrml"))))
        resumed = widget.logic
        # taken up at the import, without a click or a status check
        assert [(r.point.index, r.positive) for r in sorted(resumed._records, key=lambda r: r.order)] == \
            [(1, True), (5, True), (9, True)]
        assert resumed._propagationRecords[segment_id] == (axis, method, digests, weights)
        volume, node = resumed.volumeNode, resumed.segmentationNode
        with _real_sessions(random_stcn_networks, factories):
            resumed.addClick(world(7, 20, 24), axis=0)
            clicked = read(node, segment_id, volume)
            resumed.propagate()
        after = read(node, segment_id, volume)
        assert len(factories) == 2 and factories[1].decoded == 2  # slices 6 and 8, not the volume
        changed = [k for k in range(SHAPE[0]) if not np.array_equal(after[k], clicked[k])]
        assert set(changed) <= {6, 8}
        np.testing.assert_array_equal(np.delete(after, [6, 8], axis=0), np.delete(clicked, [6, 8], axis=0))
        np.testing.assert_array_equal(np.delete(clicked, 7, axis=0), np.delete(saved, 7, axis=0))
        record = scene_state.load(node).propagation[segment_id]
        assert [index for index, _ in record[2]] == [1, 5, 7, 9]
        assert dict(record[2])[5] == dict(digests)[5]
    finally:
        widget.cleanup()


def test_a_scene_resumed_with_other_stcn_weights_recomputes_every_slice(slicer_env, tmp_path, random_stcn_networks,
                                                                       one_torch_thread):
    """The stored record names the weights the propagation ran with: a session opening with
    other STCN weights takes the points up but not the result, and its next propagation
    recomputes the whole volume rather than keep slices the other weights computed."""
    import torch

    from isegformer.propagation.stcn import STCNNetwork

    slicer, module = slicer_env.slicer, slicer_env.module
    factories = []
    folder, segment_id, _, saved = _saved_scene_with_a_propagation(slicer_env, tmp_path, random_stcn_networks,
                                                                   factories)
    torch.manual_seed(2)
    other = (STCNNetwork().eval(), None)
    widget = slicer_env.slicer_standins.build_module_widget(module.iSegFormerSlicerWidget)
    try:
        slicer.util.loadScene(str(next(folder.glob("*.mrml"))))
        resumed = widget.logic
        assert len(resumed._records) == 3 and resumed._propagationRecords
        with _real_sessions(other, factories):
            resumed.addClick(world(7, 20, 24), axis=0)
            resumed.propagate()
        assert factories[-1].decoded >= SHAPE[0] - 4  # every slice but the annotated ones, not 6 and 8
    finally:
        widget.cleanup()


def test_a_volume_changed_since_the_save_drops_the_saved_propagation(slicer_env, tmp_path, random_stcn_networks,
                                                                     one_torch_thread, caplog):
    """Results computed on other voxels are not taken up: the points resume, the session that
    opens on the changed voxels drops the propagation records, and its next propagation
    recomputes every slice."""
    import nrrd

    slicer, module = slicer_env.slicer, slicer_env.module
    factories = []
    folder, segment_id, _, _ = _saved_scene_with_a_propagation(slicer_env, tmp_path, random_stcn_networks, factories)
    (volume_file,) = [p for p in folder.rglob("*.nrrd") if not p.name.endswith(".seg.nrrd")]
    voxels, header = nrrd.read(str(volume_file))
    voxels[voxels.shape[0] // 2, voxels.shape[1] // 2, :] += 50  # other voxels under the same name
    nrrd.write(str(volume_file), voxels, header)

    widget = slicer_env.slicer_standins.build_module_widget(module.iSegFormerSlicerWidget)
    try:
        slicer.util.loadScene(str(next(folder.glob("*.mrml"))))
        resumed = widget.logic
        assert len(resumed._records) == 3
        with _real_sessions(random_stcn_networks, factories):
            resumed.addClick(world(7, 20, 24), axis=0)  # opens a session on the changed voxels
            assert resumed._propagationRecords == {}
            assert "voxels are not the ones the last propagations ran on" in caplog.text
            resumed.propagate()
        assert factories[-1].decoded > SHAPE[0] // 2  # the whole volume again, not slices 6 and 8
    finally:
        widget.cleanup()


def test_the_stored_propagation_record_round_trips_and_rejects_garbage():
    import json

    from iSegFormerSlicerLib import scene_state

    from isegformer.errors import SessionFileError

    state = scene_state.SessionState()
    state.propagation["seg"] = (0, "stcn", ((1, "0" * 32), (5, "ab" * 16)), "cd" * 16)
    state.propagation["other"] = (2, "interpolation", ((3, "1" * 32),), "")
    again = scene_state.decode(scene_state.encode(state))
    assert again == state
    # a version-1 attribute written before the record existed reads as without one
    old = json.loads(scene_state.encode(state))
    del old["propagation"]
    assert scene_state.decode(json.dumps(old)).propagation == {}
    state.volumeDigest = scene_state.volumeDigest(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    assert scene_state.decode(scene_state.encode(state)).volumeDigest == state.volumeDigest
    changed = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    changed[1, 2, 3] += 1
    assert scene_state.volumeDigest(changed) != state.volumeDigest
    assert scene_state.volumeDigest(changed.reshape(4, 3, 2)) != scene_state.volumeDigest(changed)
    assert scene_state.volumeDigest(changed.astype(np.int32)) != scene_state.volumeDigest(changed)
    for bad in ('5', '"XYZ"', '"abc"', '"0123456789"'):
        with pytest.raises(SessionFileError, match="'volume' must be 8"):
            scene_state.decode(scene_state.encode(state)[:-1] + ',"volume":' + bad + "}")
    head = '{"format": "isegformer-slicer-session", "version": 1, "propagation": '
    for bad in ('5', '[{"segment": "s", "axis": 0, "method": "stcn", "annotations": 5}]',
                '[{"segment": "s", "axis": 4, "method": "stcn", "annotations": []}]',
                '[{"segment": "s", "axis": 0, "method": "", "annotations": []}]',
                '[{"segment": "s", "axis": 0, "method": "stcn", "annotations": [[1]]}]',
                '[{"segment": "s", "axis": 0, "method": "stcn", "annotations": [[-1, "%s"]]}]' % ("0" * 32),
                '[{"segment": "s", "axis": 0, "method": "stcn", "annotations": [[1, "XYZ"]]}]',
                '[{"segment": "s", "axis": 0, "method": "stcn", "annotations": [], "networks": "XYZ"}]',
                '[{"segment": "s", "axis": 0, "method": "stcn", "annotations": [], "networks": 5}]',
                '[{"segment": "s", "axis": 0, "method": "stcn", "annotations": [[1, "%s"], [1, "%s"]]}]'
                % ("0" * 32, "1" * 32),
                '[{"segment": "s", "axis": 0, "method": "stcn", "annotations": []},'
                ' {"segment": "s", "axis": 1, "method": "stcn", "annotations": []}]'):
        with pytest.raises(SessionFileError, match="iSegFormer session"):
            scene_state.decode(head + bad + "}")


def test_a_stored_record_that_does_not_fit_is_skipped_and_the_session_opens(caplog):
    from iSegFormerSlicerLib.scene_state import SceneStateActions

    from isegformer.session import Session
    from isegformer.slicer_support.session_bridge import SessionBridge

    session = Session.open((knee_like_volume(), IJK_TO_RAS))
    bridge = SessionBridge(session)
    mask = np.zeros(SHAPE, bool)
    mask[2:8, 12:20, 14:30] = True
    SceneStateActions._restorePropagations(bridge, [
        ("femur", 0, "interpolation", mask, ((SHAPE[0], "0" * 32),), ""),  # a slice the volume lacks
        ("tibia", 0, "interpolation", mask, ((3, "0" * 32),), ""),
        ("patella", 0, "stcn", mask, ((3, "0" * 32),), "XYZ"),  # not a digest
    ])
    assert "segment 'patella' is not taken up" in caplog.text
    assert "segment 'femur' is not taken up" in caplog.text
    assert session.segment("femur").propagated is None and session.segment("femur").propagation_record is None
    np.testing.assert_array_equal(session.segment("tibia").propagated, mask)
    assert session.segment("tibia").propagation_record.digests == ((3, "0" * 32),)


def test_voxels_changed_in_place_after_a_propagation_are_caught_at_the_next_opening(
        slicer_env, tmp_path, random_stcn_networks, one_torch_thread, caplog):
    """The digest stored is the one of the voxels the propagation ran on, not of the node when
    the session is stored: a filter run in place, then a point, then save and reload, still
    makes the next propagation start afresh."""
    slicer, module = slicer_env.slicer, slicer_env.module
    factories = []
    volume, logic, node, segment_id = _knee_propagated(slicer_env, random_stcn_networks, factories)
    with _real_sessions(random_stcn_networks, factories):
        recorded = logic._recordsVolumeDigest
        voxels = slicer.util.arrayFromVolume(volume)
        voxels[:, 10:20, 10:20] += 30  # a filter run in place
        slicer.util.arrayFromVolumeModified(volume)
        logic.addClick(world(3, 20, 24), axis=0)  # the session is stored again
    from iSegFormerSlicerLib import scene_state

    assert scene_state.load(node).volumeDigest == recorded  # what the propagation ran on
    assert recorded != scene_state.volumeDigest(slicer.util.arrayFromVolume(volume))
    folder = tmp_path / "scene"
    assert slicer.util.saveScene(str(folder))
    logic.shutdown()
    slicer_env.slicer_standins.new_scene()

    widget = slicer_env.slicer_standins.build_module_widget(module.iSegFormerSlicerWidget)
    try:
        slicer.util.loadScene(str(next(folder.glob("*.mrml"))))
        resumed = widget.logic
        assert resumed._propagationRecords  # taken up at the import...
        with _real_sessions(random_stcn_networks, factories):
            resumed.addClick(world(7, 20, 24), axis=0)
            assert resumed._propagationRecords == {}  # ...and dropped by the session on other voxels
            resumed.propagate()
        assert factories[-1].decoded > SHAPE[0] // 2
    finally:
        widget.cleanup()
