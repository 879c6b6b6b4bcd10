"""The module's Logic on Slicer's own MRML: the rules a script's writes follow stay the same from
its first click on, and a result that arrives after its volume changed or was removed is not
written (FakeSession stands in for the torch side, as in test_slicer_module_logic.py)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from isegformer.errors import InvalidInputError
from test_slicer_module_logic import SHAPE, add_volume, env, paint, segment, to_world  # noqa: F401 (env: fixture)


def test_a_script_without_an_editor_node_never_overwrites_other_segments_not_even_after_its_first_click(env):
    logic = env.logic
    assert logic.segmentEditorNode is None  # a console script that never asked for one
    bone = env.segmentation.GetSegmentation().AddEmptySegment("", "bone")
    paint(env.slicer, env.segmentation, bone, env.volume,
          lambda a: a.__setitem__((slice(None), slice(3, 6), slice(6, 9)), 1))
    before = env.array(bone).copy()
    for k in (2, 4):  # the first click used to make the history's editor node ("overwrite all")
        logic.addClick(to_world(env.world, (7, 5, k)), axis=0)
        assert env.array(env.segment_id)[k].any()
        assert np.array_equal(env.array(bone), before), f"the click on slice {k} erased another segment"
    assert logic.segmentEditorNode is None


def _slow_clicks(env):
    """Clicks that wait until released, so that a test can act while one runs."""
    release = threading.Event()
    click = env.session.click_slice

    def slow(*args, **kwargs):
        release.wait(10)
        return click(*args, **kwargs)

    env.session.click_slice = slow
    return release


def _click_in_flight(env, ijk):
    positive, _ = env.logic.getClickNodes()
    index = positive.AddControlPointWorld(*to_world(env.world, ijk))
    env.logic.submitClick(positive.GetNthControlPointID(index), to_world(env.world, ijk), True, axis=0)


def test_a_click_still_running_when_the_volume_changes_writes_nothing(env):
    release = _slow_clicks(env)
    _click_in_flight(env, (2, 2, 3))
    other = add_volume(env.slicer, np.zeros(SHAPE, np.int16), name="T2")
    other.SetAndObserveTransformNodeID(env.parent.GetID())
    env.logic.setVolume(other)  # the user picks another volume while the click runs
    release.set()
    env.logic.waitForJobs()
    assert not segment(env.slicer, env.segmentation, env.segment_id, other).any()
    assert not segment(env.slicer, env.segmentation, env.segment_id, env.volume).any()


def test_a_click_still_running_when_the_volume_is_removed_fails_with_the_packages_error(env):
    release = _slow_clicks(env)
    _click_in_flight(env, (2, 2, 3))
    env.scene.RemoveNode(env.volume)  # the user deletes it in the Data module
    release.set()
    with pytest.raises(InvalidInputError, match="removed from the scene"):
        env.logic.waitForJobs()


def test_after_an_undone_propagation_propagating_again_fills_the_slices_again(env):
    logic = env.logic
    logic.setModelSettings(propagation="interpolation")
    for k in (1, 4):
        logic.addClick(to_world(env.world, (7, 5, k)), axis=0)
    logic.propagate()
    propagated = env.array().copy()
    between = [k for k in range(SHAPE[0]) if k not in (1, 4) and propagated[k].any()]
    assert between, "the stand-in propagation fills slices between the clicks"
    logic.undo()
    assert not env.array()[between].any()  # the history took the propagation back
    logic.propagate()
    assert np.array_equal(env.array(), propagated)  # not adopted as empty hand-drawn slices
    assert not logic._handEdited.get((env.segment_id, 0))
    logic.undo()
    logic.redo()  # a redo is the history's too
    logic.propagate()
    assert np.array_equal(env.array(), propagated)


def test_a_point_dragged_off_the_volume_goes_back_and_other_edits_still_apply(env):
    logic = env.logic
    logic.addClick(to_world(env.world, (2, 2, 3)), axis=0)
    logic.addClick(to_world(env.world, (7, 5, 1)), axis=0)
    positive, _ = logic.getClickNodes()
    assert env.array()[1].any() and env.array()[3].any()
    positive.SetNthControlPointPositionWorld(0, *to_world(env.world, (2, 2, 30)))  # off the volume
    positive.RemoveNthControlPoint(1)  # and the point on slice 1 deleted
    with pytest.raises(InvalidInputError, match="outside the volume.*put back where it was used") as refused:
        logic.submitPointsChanged()
    assert len(refused.value.jobIds) == 1  # slice 1's update, to watch
    logic.waitForJobs()
    assert not env.array()[1].any()  # the deletion was applied all the same
    assert env.array()[3].any()
    assert [(r.point.index, r.point.axis) for r in logic._records] == [(3, 0)]
    back = [0.0, 0.0, 0.0]
    positive.GetNthControlPointPositionWorld(0, back)
    assert np.allclose(back, to_world(env.world, (2, 2, 3)), atol=1e-6)
    assert logic.submitPointsChanged() == []  # nothing left to recompute, no error


def test_each_segmentation_keeps_its_own_points_and_undo_takes_back_only_the_shown_ones(env):
    from isegformer.slicer_support.session_bridge import SessionBridge
    from session_fakes import FakeSession

    logic = env.logic
    a, a_id = env.segmentation, env.segment_id
    logic.addClick(to_world(env.world, (2, 2, 3)), axis=0)
    b = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "B")
    b.CreateDefaultDisplayNodes()
    b.SetReferenceImageGeometryParameterFromVolumeNode(env.volume)
    b.SetAndObserveTransformNodeID(env.parent.GetID())
    logic.setSegmentation(segmentationNode=b)
    assert logic._bridge is None and not logic._records  # B gets its own session (reopened on use)
    logic._bridge = SessionBridge(FakeSession(SHAPE))  # what the reopen gives, without a model
    b_id = logic.segmentId
    logic.addClick(to_world(env.world, (7, 5, 1)), axis=0)
    assert a_id not in (b.GetAttribute("iSegFormer.Session") or "")  # B's stored session is B's
    positive, _ = logic.getClickNodes()
    assert positive.GetNumberOfControlPoints() == 2  # A's point stays in the list

    logic.setSegmentation(segmentationNode=a, segmentId=a_id)  # back to A: its session resumes
    assert logic.hasClicks()
    assert [(r.segmentId, r.point.index) for r in logic._records] == [(a_id, 3)]
    logic._bridge = SessionBridge(FakeSession(SHAPE))
    logic.undoLastClick()  # A's last point, not B's later one
    assert not segment(env.slicer, a, a_id, env.volume)[3].any()
    assert segment(env.slicer, b, b_id, env.volume)[1].any()
    assert positive.GetNumberOfControlPoints() == 1


def test_a_node_that_is_not_a_segmentation_is_refused_with_the_packages_error(env):
    with pytest.raises(InvalidInputError, match="is not a segmentation"):
        env.logic.setSegmentation(segmentationNode=env.volume)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_segment_drawn_by_hand_only_propagates_from_its_drawn_slices(env, axis):
    logic = env.logic
    logic.setModelSettings(propagation="interpolation")
    first, last = 1, 4
    block = [slice(2, 5), slice(2, 6), slice(3, 8)]

    def draw(index):
        def edit(array):
            where = list(block)
            where[axis] = index
            array[tuple(where)] = 1
        return edit

    for index in (first, last):
        paint(env.slicer, env.segmentation, env.segment_id, env.volume, draw(index))
    drawn = env.array().copy()
    logic.propagate()
    result = np.moveaxis(env.array(), axis, 0)
    assert np.array_equal(result[[first, last]], np.moveaxis(drawn, axis, 0)[[first, last]])  # kept as drawn
    assert all(result[index].any() for index in range(first + 1, last))  # the slices between are filled


def test_propagating_an_empty_segment_without_points_names_it_and_says_what_to_do(env):
    name = env.segmentation.GetSegmentation().GetSegment(env.segment_id).GetName()
    with pytest.raises(InvalidInputError, match=f"segment '{name}' has no point and nothing drawn"):
        env.logic.propagate()


@pytest.mark.parametrize("point", [(1.0, 2.0), (1.0, float("nan"), 2.0), "here", None])
def test_a_malformed_console_point_is_refused_with_the_packages_error_and_adds_no_point(env, point):
    positive, negative = env.logic.getClickNodes()
    with pytest.raises(InvalidInputError, match="three finite world"):
        env.logic.addClick(point, axis=0)
    assert positive.GetNumberOfControlPoints() == 0 and negative.GetNumberOfControlPoints() == 0


def test_a_mistyped_segment_id_is_named_as_such(env):
    with pytest.raises(InvalidInputError, match="mistyped.*'typo'"):
        env.logic.segmentArray("typo")


def test_an_undo_leaves_a_slice_drawn_by_hand_before_it_a_hand_edit(env):
    logic = env.logic
    logic.setModelSettings(propagation="interpolation")
    logic.addClick(to_world(env.world, (7, 5, 1)), axis=0)
    paint(env.slicer, env.segmentation, env.segment_id, env.volume,
          lambda a: a.__setitem__((5, slice(2, 5), slice(2, 8)), 1))  # drawn with an editor effect
    drawn = env.array()[5].copy()
    logic.addClick(to_world(env.world, (7, 5, 3)), axis=0)
    logic.undo()  # takes back the click on slice 3 only
    assert not env.array()[3].any() and np.array_equal(env.array()[5], drawn)
    logic.propagate()
    assert 5 in logic._handEdited[(env.segment_id, 0)]  # still the user's annotation
    annotation, _clicks = env.session.annotations[(env.segment_id, 0, 5)]
    assert np.array_equal(annotation, drawn.astype(bool))  # handed to the session as drawn


def test_choosing_another_segmentation_while_a_point_runs_is_refused_and_changes_nothing(env):
    release = _slow_clicks(env)
    _click_in_flight(env, (2, 2, 3))
    b = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "B")
    with pytest.raises(InvalidInputError, match="still working on the segmentation"):
        env.logic.setSegmentation(segmentationNode=b)
    assert env.logic.segmentationNode is env.segmentation
    release.set()
    env.logic.waitForJobs()
    assert env.array()[3].any()  # the point's result landed where it was placed


def test_the_axis_of_a_drawing_is_the_one_its_slices_lie_apart_on_even_for_a_thin_structure():
    from iSegFormerSlicerLib.logic import _drawnAxis

    vessel = np.zeros((40, 30, 30), bool)
    for k in (5, 20, 35):
        vessel[k, 14:16, 10:20] = True  # two rows wide: fewer rows than drawn k slices
    assert _drawnAxis(vessel) == 0
    assert _drawnAxis(np.moveaxis(vessel, 0, 2)) == 2
    one = np.zeros((8, 9, 10), bool)
    one[3, 2:7, 1:9] = True  # a single drawn slice: the fewest slices
    assert _drawnAxis(one) == 0
    assert _drawnAxis(np.zeros((4, 4, 4), bool)) is None


def test_a_point_for_a_mistyped_segment_is_refused_before_the_model_runs(env):
    calls = len(env.session.calls)
    positive, _ = env.logic.getClickNodes()
    with pytest.raises(InvalidInputError, match="mistyped.*'typo'"):
        env.logic.addClick(to_world(env.world, (2, 2, 3)), axis=0, segmentId="typo")
    assert len(env.session.calls) == calls  # no click reached the session
    assert positive.GetNumberOfControlPoints() == 0 and not env.logic._records
