"""Annotated slices are stored compactly, so a label map with many labels stays affordable.

Taking a complete multi-label map annotates every segment on every slice where any label is;
most of those masks are empty or small. Kept as full bool slices, a 4 MB map of 60 labels held
about 240 MB in the session and its undo history.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from isegformer.errors import InvalidInputError
from isegformer.segments.segment import SliceAnnotation
from isegformer.session import Session
from isegformer.volume import Volume

# The label map the memory benchmark measures (small boxes of 60 values over runs of slices).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from label_map_memory import many_label_map  # noqa: E402


def test_a_many_label_map_costs_less_than_the_map_itself_and_keeps_every_voxel():
    label_map = many_label_map()
    volume = Volume(np.zeros(label_map.shape, np.int16), np.diag([0.5, 0.5, 2.0, 1.0]))
    session = Session.open(volume, click_model="swin_base")  # the model is never loaded here
    indices = session.annotate_from_label_map(label_map)
    assert indices == [int(k) for k in np.flatnonzero(label_map.any(axis=(1, 2)))]
    segments = session.segments
    assert len(segments) == len(np.unique(label_map)) - 1
    stored = sum(a.nbytes for s in segments for _, _, a in s.iter_annotations())
    # Full bool slices: 60 segments x ~64 slices x 64 KiB, about 250 MB, i.e. 60 times the map.
    assert stored < label_map.nbytes / 4
    assert session.history.nbytes < label_map.nbytes / 4
    for segment in segments:
        np.testing.assert_array_equal(session.segment_mask(segment), label_map == segment.label_value)
    session.undo()
    assert all(not s.has_annotations for s in session.segments)
    session.redo()
    np.testing.assert_array_equal(session.label_map(), label_map)


@pytest.mark.parametrize("mask", [
    np.zeros((7, 9), bool),
    np.ones((7, 9), bool),
    np.eye(7, 9, k=2, dtype=bool),
    np.pad(np.ones((1, 1), bool), ((6, 0), (0, 8))),  # only the last voxel
])
def test_a_stored_mask_comes_back_exactly_and_read_only(mask):
    annotation = SliceAnnotation(mask, order=3)
    back = annotation.mask
    assert back.dtype == bool and back.shape == (7, 9)
    np.testing.assert_array_equal(back, mask)
    assert annotation.empty == (not mask.any())
    with pytest.raises(ValueError):
        back[0, 0] = True
    assert annotation.nbytes <= (mask.sum() + 7) // 8 + mask.size // 8 + 1


def test_a_stored_mask_is_a_copy_and_the_annotation_cannot_be_changed():
    mask = np.zeros((5, 6), bool)
    mask[2, 3] = True
    annotation = SliceAnnotation(mask, order=1)
    mask[0, 0] = True  # the caller's array changes later: the annotation does not
    assert annotation.mask.sum() == 1 and annotation.mask[2, 3]
    with pytest.raises(AttributeError):
        annotation.order = 5
    with pytest.raises(InvalidInputError, match="2D"):
        SliceAnnotation(np.zeros(4, bool))
