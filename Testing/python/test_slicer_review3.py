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
