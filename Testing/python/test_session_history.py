"""Undo/redo building blocks: the action stack, transactions, and slice-wise volume diffs."""
from __future__ import annotations

import numpy as np
import pytest

from isegformer.segments.history import Action, History, VolumeDiff
from isegformer.segments.segment import Segment, SliceAnnotation


def counter_action(state: dict, key: str, value: int) -> Action:
    before = state.get(key)

    def redo():
        state[key] = value

    def undo():
        if before is None:
            state.pop(key, None)
        else:
            state[key] = before

    redo()
    return Action(f"set {key}", undo, redo)


def test_undo_redo_order_and_redo_forgotten_by_a_new_action():
    state: dict = {}
    history = History()
    history.push(counter_action(state, "a", 1))
    history.push(counter_action(state, "a", 2))
    assert history.undo().label == "set a" and state == {"a": 1}
    history.undo()
    assert state == {} and history.undo() is None
    history.redo()
    assert state == {"a": 1} and history.can_redo
    history.push(counter_action(state, "b", 5))
    assert not history.can_redo and history.redo() is None


def test_failed_transaction_restores_state_and_both_stacks():
    state: dict = {}
    history = History()
    history.push(counter_action(state, "a", 1))
    history.push(counter_action(state, "a", 2))
    history.undo()  # something to redo
    with pytest.raises(RuntimeError):
        with history.transaction("many"):
            history.push(counter_action(state, "b", 1))
            history.push(counter_action(state, "c", 1))
            raise RuntimeError("boom")
    assert state == {"a": 1}
    assert history.undo_labels == ["set a"] and history.redo_labels == ["set a"]


def test_transaction_is_one_undo_step():
    state: dict = {}
    history = History(max_actions=2)
    with history.transaction("three"):
        for key in "xyz":
            history.push(counter_action(state, key, 1))
    assert history.undo_labels == ["three"]
    history.undo()
    assert state == {}
    history.redo()
    assert state == {"x": 1, "y": 1, "z": 1}


def test_history_forgets_the_oldest_beyond_its_limit():
    state: dict = {}
    history = History(max_actions=3)
    for value in range(5):
        history.push(counter_action(state, "a", value))
    assert len(history.undo_labels) == 3


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_volume_diff_keeps_only_changed_slices_and_restores_both_ways(axis):
    rng = np.random.default_rng(axis)
    before = rng.random((6, 7, 9)) > 0.5
    after = before.copy()
    view = np.moveaxis(after, axis, 0)
    view[2] = ~view[2]
    view[4, 0, 0] = ~view[4, 0, 0]
    diff = VolumeDiff(before, after, axis)
    assert list(diff.indices) == [2, 4]
    assert diff.nbytes < before.nbytes / 2  # two bit-packed slices, not the volume
    np.testing.assert_array_equal(diff.apply(before, reverse=False), after)
    np.testing.assert_array_equal(diff.apply(after, reverse=True), before)


def test_volume_diff_from_nothing_restores_nothing():
    after = np.zeros((3, 4, 5), bool)
    after[1, 2, 3] = True
    diff = VolumeDiff(None, after, 0)
    assert diff.apply(after, reverse=True) is None
    np.testing.assert_array_equal(diff.apply(None, reverse=False), after)


def test_segment_mask_puts_annotations_over_the_propagated_result_latest_last():
    segment = Segment("a", (1.0, 0.0, 0.0), 1)
    segment.propagated = np.ones((4, 5, 6), bool)
    segment.set_annotation(0, 1, SliceAnnotation(np.zeros((5, 6), bool), order=2))
    cross = np.zeros((4, 5), bool)  # a slice along i, crossing slice k=1
    cross[1, :] = True
    segment.set_annotation(2, 3, SliceAnnotation(cross, order=1))
    mask = segment.mask((4, 5, 6))
    assert not mask[1].any()  # the later k-annotation wins where they cross
    assert not mask[0, :, 3].any() and not mask[2, :, 3].any()  # the i-slice is empty off k=1
    assert np.delete(mask, 3, axis=2)[[0, 2, 3]].all()  # elsewhere: the propagated result
    with pytest.raises(ValueError):
        SliceAnnotation(np.zeros(3, bool))
