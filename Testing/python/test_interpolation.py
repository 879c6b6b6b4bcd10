"""The interpolation baseline on shapes whose in-between is known exactly."""
from __future__ import annotations

import numpy as np
import pytest

from isegformer.errors import CancelledError, InvalidInputError
from isegformer.propagation.base import Propagator
from isegformer.propagation.interpolation import InterpolationPropagator

H = W = 96


def disk(radius: float, center=(48.0, 48.0), shape=(H, W)) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return ((rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2).astype(np.uint8)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * np.sum(a & b) / (a.sum() + b.sum())


def test_is_a_propagator_with_background_start():
    prop = InterpolationPropagator(5, (H, W), 2)
    assert isinstance(prop, Propagator) and prop.name == "interpolation"
    assert prop.probabilities.shape == (3, 5, H, W) and prop.probabilities.dtype == np.float32
    assert not prop.labels().any()


def test_growing_disk_is_reproduced_between_annotations():
    """Radius 10 at frame 2 and 30 at frame 22: frame 2 + t has radius 10 + t."""
    prop = InterpolationPropagator(30, (H, W), 1)
    prop.annotate(2, disk(10))
    probs = prop.annotate(22, disk(30))
    labels = prop.labels()
    for t in range(3, 22):
        expected = disk(10 + (t - 2))
        assert dice(labels[t], expected) > 0.97, t
        # The soft value agrees with the hard one, and sums to one over channels.
        assert np.all((probs[1, t] > 0.5) == (labels[t] == 1))
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    with pytest.raises(ValueError):
        probs[1, 10] = 0.0  # the state is read-only to callers
    # Annotated frames are exactly the annotation; frames outside the annotated range stay empty.
    assert np.array_equal(labels[2], disk(10)) and np.array_equal(labels[22], disk(30))
    assert np.all(probs[1, 22][disk(30) == 1] == 1.0)
    assert not labels[:2].any() and not labels[23:].any()


def test_objects_are_independent_and_stop_where_an_annotation_lacks_them():
    a = disk(12, center=(30, 30)) + 2 * disk(8, center=(70, 70))
    b = disk(12, center=(30, 30))  # object 2 absent here
    prop = InterpolationPropagator(21, (H, W), 2)
    prop.annotate(0, a)
    prop.annotate(10, b)
    prop.annotate(20, a)
    labels = prop.labels()
    for t in range(1, 20):
        assert dice(labels[t] == 1, disk(12, center=(30, 30))) > 0.98
    # Object 2 is on frames 0 and 20 only: the annotation of frame 10 says it is not in between.
    assert [t for t in range(21) if (labels[t] == 2).any()] == [0, 20]


def test_incremental_recomputes_only_between_neighbours():
    prop = InterpolationPropagator(31, (H, W), 1)
    for index, radius in ((0, 10), (15, 20), (30, 10)):
        prop.annotate(index, disk(radius))
    before = prop.probabilities.copy()
    calls = []
    prop.annotate(22, disk(25), progress=lambda done, total, msg: calls.append(total))
    after = prop.probabilities
    assert calls and calls[-1] == 1 + 6 + 7  # the frame itself, 16..21 and 23..29
    np.testing.assert_array_equal(after[:, :16], before[:, :16])
    assert not np.array_equal(after[:, 16:22], before[:, 16:22])
    assert not np.array_equal(after[:, 23:30], before[:, 23:30])
    np.testing.assert_array_equal(after[:, 30], before[:, 30])
    assert list(prop.annotated) == [0, 15, 30, 22]
    # Re-annotating a frame replaces it and moves it last in annotation order.
    prop.annotate(15, disk(18))
    assert list(prop.annotated) == [0, 30, 22, 15]
    assert np.array_equal(prop.labels()[15], disk(18))


def test_same_result_whatever_the_annotation_order():
    frames = {0: disk(10), 8: disk(22), 20: disk(14), 27: disk(5)}
    forward = InterpolationPropagator(28, (H, W), 1)
    backward = InterpolationPropagator(28, (H, W), 1)
    for index in sorted(frames):
        forward.annotate(index, frames[index])
    for index in sorted(frames, reverse=True):
        backward.annotate(index, frames[index])
    np.testing.assert_array_equal(forward.probabilities, backward.probabilities)


def test_cancel_leaves_state_intact():
    prop = InterpolationPropagator(21, (H, W), 1)
    prop.annotate(0, disk(10))
    prop.annotate(20, disk(30))
    before = prop.probabilities.copy()

    def cancel_midway(done: int, total: int, message: str) -> None:
        if done >= 3:
            raise CancelledError("user cancelled")

    with pytest.raises(CancelledError):
        prop.annotate(10, np.zeros((H, W), np.uint8), progress=cancel_midway)
    np.testing.assert_array_equal(prop.probabilities, before)
    assert list(prop.annotated) == [0, 20]


def test_edge_cases_give_sensible_results():
    one = InterpolationPropagator(1, (8, 8), 1)
    assert one.annotate(0, np.ones((8, 8), np.uint8)).shape == (2, 1, 8, 8)
    assert one.labels().all()
    every = InterpolationPropagator(3, (H, W), 1)
    for index in range(3):
        every.annotate(index, disk(5 + index))
    assert all(np.array_equal(every.labels()[i], disk(5 + i)) for i in range(3))
    empty = InterpolationPropagator(5, (H, W), 1)
    empty.annotate(0, np.zeros((H, W), np.uint8))
    empty.annotate(4, np.zeros((H, W), bool))
    assert not empty.labels().any()
    full = InterpolationPropagator(5, (H, W), 1)
    full.annotate(0, np.ones((H, W), np.uint8))
    full.annotate(4, np.ones((H, W), np.uint8))
    assert full.labels().all()


@pytest.mark.parametrize("index, label_map, word", [
    (0, np.zeros((H, W + 1), np.uint8), "shape"),
    (0, np.full((H, W), 3, np.uint8), "labels"),
    (0, np.full((H, W), -1, np.int16), "labels"),
    (0, np.full((H, W), 0.5), "whole-number"),
    (5, np.zeros((H, W), np.uint8), "outside"),
    (-1, np.zeros((H, W), np.uint8), "outside"),
])
def test_bad_annotations_are_refused(index, label_map, word):
    prop = InterpolationPropagator(5, (H, W), 2)
    with pytest.raises(InvalidInputError, match=word):
        prop.annotate(index, label_map)
    assert not prop.annotated


def test_from_volume_follows_the_axis():
    volume = np.zeros((7, 9, 11), np.float32)
    assert InterpolationPropagator.from_volume(volume, 0, 1).probabilities.shape == (2, 7, 9, 11)
    assert InterpolationPropagator.from_volume(volume, 2, 3).probabilities.shape == (4, 11, 7, 9)
    with pytest.raises(InvalidInputError, match="Axis"):
        InterpolationPropagator.from_volume(volume, 3, 1)


def test_only_empty_annotations_give_background_everywhere():
    # Issue 12 item 13 at the propagator level: "not here" on every annotated frame.
    prop = InterpolationPropagator(7, (9, 11), 2)
    for index in (0, 3, 6):
        probs = prop.annotate(index, np.zeros((9, 11), np.uint8))
    assert probs.shape == (3, 7, 9, 11)
    assert np.array_equal(prop.labels(), np.zeros((7, 9, 11), np.uint8))
    assert np.all(probs[1:] == 0.0) and np.all(probs[0] == 1.0)
    np.testing.assert_array_equal(prop.annotate_many([]), probs)
