"""Issue 12 item 27: every public Session argument is checked; a wrong one raises
InvalidInputError saying what is expected, and changes nothing (no silent conversion such as
``bool("no")`` or slice ``True``)."""
from __future__ import annotations

import numpy as np
import pytest

from isegformer.errors import InvalidInputError
from isegformer.session import Session

SHAPE = (6, 8, 10)


def _volume():
    return np.random.default_rng(0).normal(size=SHAPE).astype(np.float32), np.eye(4)


@pytest.fixture
def session():
    s = Session.open(_volume())
    s.add_segment("femur")
    s.set_slice_mask(0, 2, np.eye(8, 10, dtype=bool))
    return s


@pytest.mark.parametrize("options, message", [
    ({"window": (1, 2, 3)}, "two numbers"),
    ({"window": ("a", "b")}, "two numbers"),
    ({"window": "ab"}, "two numbers"),
    ({"window": (5, 1)}, "low < high"),
    ({"window": (0, float("nan"))}, "low < high"),
    ({"window": 3}, "two numbers"),
    ({"axis": 3}, "axis"),
    ({"axis": True}, "axis"),
    ({"axis": 1.0}, "axis"),
    ({"axis": "k"}, "axis"),
    ({"axis": np.array([0, 1])}, "axis"),
    ({"device": "gpu please"}, "device"),
    ({"device": 0}, "device"),
    ({"propagator_factory": "stcn"}, "function"),
    ({"windw": (0, 1)}, "no option 'windw'"),
])
def test_open_options(options, message):
    with pytest.raises(InvalidInputError, match=message):
        Session.open(_volume(), **options)


@pytest.mark.parametrize("volume, message", [
    ((np.zeros(SHAPE, np.complex64), np.eye(4)), "real numbers"),
    ((np.zeros(SHAPE, bool), np.eye(4)), "real numbers"),
    ((np.full(SHAPE, "a"), np.eye(4)), "real numbers"),
    ((np.full(SHAPE, np.nan, np.float32), np.eye(4)), "NaN"),
    ((np.zeros(SHAPE, np.float32), "eye"), "4x4"),
    ((np.zeros(SHAPE, np.float32), np.eye(3)), "4x4"),
    ((np.zeros(SHAPE, np.float32),), "two items"),
    (42, "path, a Volume"),
])
def test_open_volumes(volume, message):
    with pytest.raises(InvalidInputError, match=message):
        Session.open(volume)


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "tibia", "color": "red"}, "colour"),
    ({"name": "tibia", "color": (1, 0)}, "colour"),
    ({"name": "tibia", "color": (255, 0, 0)}, "colour"),
    ({"name": "tibia", "color": (True, 0, 0)}, "colour"),
    ({"name": "tibia", "label_value": "one"}, "label value"),
    ({"name": "tibia", "label_value": 2.0}, "label value"),
    ({"name": "tibia", "label_value": True}, "label value"),
    ({"name": "tibia", "label_value": 256}, "label value"),
    ({"name": "tibia", "label_value": 1}, "used by another"),
    ({"name": 7}, "name"),
    ({"name": "  "}, "name"),
    ({"name": "femur"}, "exists already"),
])
def test_add_segment(session, kwargs, message):
    before = [s.name for s in session.segments]
    with pytest.raises(InvalidInputError, match=message):
        session.add_segment(**kwargs)
    assert [s.name for s in session.segments] == before
    assert session.add_segment("tibia", color=np.array([1.0, 0.5, 0.0]), label_value=np.uint8(7)).label_value == 7


@pytest.mark.parametrize("call, message", [
    (lambda s: s.click_slice(0, 1, 3.0, 4.0, positive="no"), "True or False"),
    (lambda s: s.click_slice(0, True, 3.0, 4.0), "slice index"),
    (lambda s: s.click_slice(0, 2.0, 3.0, 4.0), "slice index"),
    (lambda s: s.click_slice(0, 6, 3.0, 4.0), "slice index"),
    (lambda s: s.click_slice(0, 1, "3", 4.0), "row"),
    (lambda s: s.click_slice(0, 1, 3.0, None), "col"),
    (lambda s: s.click_slice("0", 1, 3.0, 4.0), "axis"),
    (lambda s: s.click((0.0, 0.0, 0.0), positive=1), "True or False"),
    (lambda s: s.click_ijk((1.0, 1.0, 1.0), positive="yes"), "True or False"),
    (lambda s: s.click_ijk((1.0, 1.0, 1.0), axis=5), "axis"),
    (lambda s: s.click_slice(0, 1, 3.0, 4.0, segment=3), "name"),
    (lambda s: s.set_slice_mask(0, 1, np.full((8, 10), 0.7)), "only 0 and 1"),
    (lambda s: s.set_slice_mask(0, 1, np.full((8, 10), 2)), "only 0 and 1"),
    (lambda s: s.set_slice_mask(0, 1, np.full((8, 10), "x")), "True/False"),
    (lambda s: s.set_slice_mask(0, 1, np.ones((10, 8), bool)), "shape"),
    (lambda s: s.set_slice_mask(0, True, np.ones((8, 10), bool)), "slice index"),
    (lambda s: s.clear_slice(0, "2"), "slice index"),
    (lambda s: s.clear_slice(7, 2), "axis"),
    (lambda s: s.annotated_slices(axis=9), "axis"),
    (lambda s: s.propagate(method=3), "method"),
    (lambda s: s.propagate(method="interpolation", progress="bar"), "function"),
    (lambda s: s.propagate(method="interpolation", axis=-1), "axis"),
    (lambda s: s.annotate_from_label_map(np.ones(SHAPE, np.uint8), indices=[1.5]), "slice index"),
    (lambda s: s.annotate_from_label_map(np.ones(SHAPE, np.uint8), indices=5), "list"),
    (lambda s: s.annotate_from_label_map(np.ones(SHAPE, np.uint8), names={1: 5}), "name"),
    (lambda s: s.annotate_from_label_map(np.ones(SHAPE, np.uint8), names=["a"]), "names"),
    (lambda s: s.load_clicks(5), "file name"),
    (lambda s: s.load_clicks([None]), "file name"),
    (lambda s: s.save(None), "path"),
    (lambda s: s.save_label_map(3), "path"),
    (lambda s: s.save_segmentation(""), "path"),
    (lambda s: s.save("x.isegsession", include_volume="no"), "True or False"),
    (lambda s: s.save_overlay("x.png", indices=[99]), "slice index"),
    (lambda s: s.save_overlay("x.png", columns=0), "columns"),
    (lambda s: s.save_overlay("x.png", columns="4"), "columns"),
    (lambda s: s.segment(5), "name"),
    (lambda s: s.remove_segment(["femur"]), "name"),
])
def test_bad_arguments_change_nothing(session, tmp_path, monkeypatch, call, message):
    monkeypatch.chdir(tmp_path)
    state = ([s.name for s in session.segments], session.history.undo_labels, session.segment_mask("femur"))
    with pytest.raises(InvalidInputError, match=message):
        call(session)
    assert [s.name for s in session.segments] == state[0]
    assert session.history.undo_labels == state[1]
    assert np.array_equal(session.segment_mask("femur"), state[2])
    assert list(tmp_path.iterdir()) == []


def test_numbers_of_any_numpy_kind_are_still_accepted(session):
    session.set_slice_mask(np.int64(0), np.int32(3), np.zeros((8, 10), np.uint8))
    session.set_slice_mask(0, 4, np.ones((8, 10), np.float32))
    assert session.annotated_slices(axis=np.int8(0)) == [2, 3, 4]
    session.propagate(method="interpolation", axis=np.int64(0))


@pytest.mark.parametrize("kwargs", [
    {"color": "red"}, {"color": "rgb"}, {"color": (1, 0)}, {"color": None},
    {"label_value": "one"}, {"label_value": "7"}, {"label_value": True}, {"label_value": 7.5}, {"label_value": None},
])
def test_segments_made_directly_check_their_fields(kwargs):
    from isegformer.segments.segment import Segment

    fields = {"name": "femur", "color": (1.0, 0.0, 0.0), "label_value": 1, **kwargs}
    with pytest.raises(InvalidInputError, match="colour|label value"):
        Segment(**fields)


def test_load_options_are_checked_like_open(session, tmp_path):
    saved = session.save(tmp_path / "s.isegsession")
    with pytest.raises(InvalidInputError, match="no option 'windw'"):
        Session.load(saved, windw=(0, 1))
    with pytest.raises(InvalidInputError, match="two numbers"):
        Session.load(saved, window=("a", "b"))
    assert Session.load(saved, window=(0.0, 1.0)).window == (0.0, 1.0)
