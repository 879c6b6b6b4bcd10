"""Issue 12 item 13: an object absent from every annotated slice propagates to nothing.

Empty annotated slices say "not here"; the result is an empty segment (an undoable step), for
every method, whatever the number of empty slices or their axis."""
from __future__ import annotations

import numpy as np
import pytest

from isegformer.errors import InvalidInputError
from isegformer.segments.history import VolumeDiff
from isegformer.session import Session

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _session(**options) -> Session:
    volume = np.random.default_rng(0).normal(size=(6, 32, 40)).astype(np.float32)
    return Session.open((volume, np.eye(4)), device="cpu", **options)


def test_the_issue_repro_gives_an_empty_undoable_result():
    session = Session.open((np.zeros((6, 8, 10), np.int16), np.eye(4)))
    session.add_segment("x")
    session.set_slice_mask(0, 2, np.zeros((8, 10), bool))
    result = session.propagate(method="interpolation")
    assert result.shape == (6, 8, 10) and not result.any()
    assert session.segment("x").propagated is not None and session.segment("x").propagation_axis == 0
    assert session.undo().startswith("propagate")
    assert session.segment("x").propagated is None
    session.redo()
    assert not session.segment_mask("x").any()


@pytest.mark.parametrize("method", ["interpolation", "stcn"])
@pytest.mark.parametrize("axis, indices", [(0, [0]), (0, [1, 3, 5]), (1, [0, 31]), (2, [7, 20])])
def test_empty_annotated_slices_propagate_to_nothing(random_stcn_networks, method, axis, indices):
    network, _ = random_stcn_networks
    session = _session(stcn_weights=network)
    session.add_segment("absent")
    shape = {0: (32, 40), 1: (6, 40), 2: (6, 32)}[axis]
    for index in indices:
        session.set_slice_mask(axis, index, np.zeros(shape, bool))
    result = session.propagate(method=method, axis=axis)
    assert not result.any()  # STCN's guesses from an all-background memory are not a result


def test_an_object_removed_from_every_annotated_slice_is_removed_from_the_volume(random_stcn_networks):
    network, _ = random_stcn_networks
    session = _session(stcn_weights=network)
    session.add_segment("x")
    drawn = np.zeros((32, 40), bool)
    drawn[10:20, 12:24] = True
    session.set_slice_mask(0, 1, drawn)
    session.set_slice_mask(0, 4, drawn)
    assert session.propagate(method="interpolation")[2].any()
    session.set_slice_mask(0, 1, np.zeros_like(drawn))  # the user erases the object again
    session.set_slice_mask(0, 4, np.zeros_like(drawn))
    assert not session.propagate(method="interpolation").any()
    session.undo()
    assert session.segment_mask("x")[2].any()  # the previous result is back


def test_an_unknown_method_is_refused_even_with_empty_annotations():
    session = _session()
    session.add_segment("x")
    session.set_slice_mask(0, 2, np.zeros((32, 40), bool))
    with pytest.raises(InvalidInputError, match="interpolation, stcn"):
        session.propagate(method="magic")
    assert session.segment("x").propagated is None


def test_progress_completes_when_there_is_nothing_to_propagate():
    session = _session()
    session.add_segment("x")
    session.set_slice_mask(0, 2, np.zeros((32, 40), bool))
    seen = []
    session.propagate(method="interpolation", progress=lambda done, total, message="": seen.append((done, total)))
    assert seen[-1] == (100, 100)


def test_a_volume_diff_with_no_changed_slice():
    before, after = None, np.zeros((3, 4, 5), bool)
    diff = VolumeDiff(before, after, axis=1)
    assert len(diff.indices) == 0 and not diff.empty  # None -> zeros is still a change
    assert np.array_equal(diff.apply(None, reverse=False), after)
    assert diff.apply(after, reverse=True) is None
    same = VolumeDiff(after, after.copy(), axis=2)
    assert same.empty and same.nbytes == 0
