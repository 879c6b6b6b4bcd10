"""Review 3b items 5 and 6: the console API (ClickSession, ClickPredictor, the propagators)
applies the Session's argument rules.

Python converts too eagerly: ``bool("no")`` is True, ``float(True)`` is row 1, ``"5"`` became
5.0, and ``axis=True`` propagated along j. Each bad argument must give the package's own
InvalidInputError before anything changes, while numpy scalars stay accepted where Python
numbers are; and an error in the middle of a batch of annotations leaves the propagator exactly
as it was.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from isegformer.click_engine.predictor import ClickPredictor
from isegformer.click_engine.session import ClickSession
from isegformer.clicks import Click
from isegformer.errors import CancelledError, InvalidInputError
from isegformer.propagation.base import frames_along_axis
from isegformer.propagation.factory import create_propagator
from isegformer.propagation.interpolation import InterpolationPropagator
from isegformer.propagation.stcn import STCNPropagator

from fake_click_net import FakeClickNet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _image(shape=(48, 64)) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)


def _click_session(**predictor_options):
    net = FakeClickNet()
    predictor = ClickPredictor(net, device="cpu", **predictor_options)
    return ClickSession(predictor, _image()), net


# -- ClickSession.add_click ----------------------------------------------------------------------
@pytest.mark.parametrize("positive", ["no", "False", 0, 1, None, 1.0])
def test_add_click_takes_only_true_or_false_as_positive(positive):
    session, net = _click_session()
    with pytest.raises(InvalidInputError, match="positive is True or False"):
        session.add_click(20, 30, positive=positive)
    assert session.clicks == () and not net.calls


@pytest.mark.parametrize("y, x", [(True, 30), (20, False), ("5", 30), (20, "30"), (None, 3),
                                  (np.array([5.0]), 3), (np.float64("nan"), 3), (3, float("inf"))])
def test_add_click_refuses_coordinates_that_are_not_finite_numbers(y, x):
    session, net = _click_session()
    with pytest.raises(InvalidInputError, match="finite number"):
        session.add_click(y, x)
    assert session.clicks == () and not net.calls


def test_add_click_takes_numpy_scalars_like_python_numbers():
    plain, _ = _click_session()
    numpy, _ = _click_session()
    expected, _ = plain.add_click(20, 30.5, positive=False)
    got, _ = numpy.add_click(np.int64(20), np.float32(30.5), positive=np.bool_(False))
    assert numpy.clicks == plain.clicks == (Click(20.0, 30.5, False, 0),)
    assert type(numpy.clicks[0].y) is float and type(numpy.clicks[0].positive) is bool
    assert np.array_equal(got, expected)


# -- ClickSession(...) ---------------------------------------------------------------------------
@pytest.mark.parametrize("window", ["ab", (1,), (1, 2, 3), (5, 1), (0, float("inf")), (True, 3), ("0", "9"), 7])
def test_a_bad_window_is_refused_clearly(window):
    predictor = ClickPredictor(FakeClickNet(), device="cpu")
    with pytest.raises(InvalidInputError, match="window is"):
        ClickSession(predictor, _image().astype(np.float32), window=window)


def test_a_numpy_window_equals_the_same_window_in_python_numbers():
    predictor = ClickPredictor(FakeClickNet(), device="cpu")
    image = _image().astype(np.float32) * 2 - 50
    a, _ = ClickSession(predictor, image, window=(-50, 460)).add_click(20, 30)
    b, _ = ClickSession(predictor, image, window=np.array([-50, 460], np.int32)).add_click(20, 30)
    c, _ = ClickSession(predictor, image, window=(np.float32(-50), np.int64(460))).add_click(20, 30)
    assert np.array_equal(a, b) and np.array_equal(a, c)


@pytest.mark.parametrize("predictor", ["model.pth", FakeClickNet(), None])
def test_a_click_session_needs_a_click_predictor(predictor):
    with pytest.raises(InvalidInputError, match="ClickSession runs a ClickPredictor"):
        ClickSession(predictor, _image())


# -- ClickPredictor(...) -------------------------------------------------------------------------
@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), "x", "0.5", True, 0, 1, 1.5, -0.2])
def test_threshold_is_a_probability_strictly_between_0_and_1(threshold, tmp_path):
    # refused before any weights are read: the checkpoint does not even exist
    with pytest.raises(InvalidInputError, match="threshold"):
        ClickPredictor(tmp_path / "absent.pth", device="cpu", threshold=threshold)


def test_a_numpy_threshold_is_taken():
    session, _ = _click_session(threshold=np.float32(0.25))
    assert session.predictor.threshold == 0.25 and type(session.predictor.threshold) is float
    prob, mask = session.add_click(20, 30)
    assert np.array_equal(mask, prob > 0.25) and (prob > 0.25).sum() > (prob > 0.49).sum()


@pytest.mark.parametrize("options", [{"zoom_in": "no"}, {"zoom_in": 0}, {"flip": "False"}, {"flip": None}])
def test_zoom_in_and_flip_are_true_or_false(options, tmp_path):
    with pytest.raises(InvalidInputError, match="is True or False"):
        ClickPredictor(tmp_path / "absent.pth", device="cpu", **options)


# -- ClickPredictor.predict_batch ----------------------------------------------------------------
@pytest.mark.parametrize("click_lists, message", [
    ([[(1, 2, True)]], "must be Click objects"),
    ([[[1, 2, True]]], "must be Click objects"),
    ([Click(1, 2, True)], "must be a list of Click objects"),
    (None, "one list of Click objects per image"),
    ("ab", "one list of Click objects per image"),
    ([[Click(1, 2, "no")]], "positive"),
    ([[Click("1", 2, True)]], "row y"),
    ([[Click(1, True, True)]], "column x"),
    ([[Click(1, 2, True, -1)]], "index"),
])
def test_predict_batch_takes_lists_of_clicks_only(click_lists, message):
    net = FakeClickNet()
    predictor = ClickPredictor(net, device="cpu")
    with pytest.raises(InvalidInputError, match=message):
        predictor.predict_batch(np.zeros((1, 3, 8, 8)), click_lists)
    assert not net.calls


@pytest.mark.parametrize("images, prev", [("abc", None), ([[["a"]]], None), (np.zeros((1, 3, 8, 8)), "abc")])
def test_predict_batch_refuses_arrays_that_are_not_numbers(images, prev):
    predictor = ClickPredictor(FakeClickNet(), device="cpu")
    with pytest.raises(InvalidInputError, match="array of numbers"):
        predictor.predict_batch(images, [[Click(1, 2, True)]], prev_probs=prev)


def test_predict_batch_takes_numpy_scalar_clicks():
    predictor = ClickPredictor(FakeClickNet(), device="cpu")
    images = np.repeat(_image((16, 20))[None, None], 3, axis=1) / np.float32(255)
    plain = predictor.predict_batch(images, [[Click(5.0, 7.0, True, 0)]])
    numpy = predictor.predict_batch(images, [[Click(np.float32(5), np.int64(7), np.bool_(True), np.int64(0))]])
    assert np.array_equal(plain, numpy)


def test_click_messages_print_numbers_plainly():
    session, _ = _click_session()
    with pytest.raises(InvalidInputError) as caught:
        session.add_click(np.float64(100.0), np.float32(3.0))
    assert "row 100, column 3" in str(caught.value) and "np." not in str(caught.value)
    predictor = ClickPredictor(FakeClickNet(), device="cpu")
    with pytest.raises(InvalidInputError) as caught:
        predictor.predict_batch(np.zeros((1, 3, 8, 8)), [[Click(np.float64(9.5), np.float64(1), True)]])
    assert "row 9.5, column 1" in str(caught.value) and "np." not in str(caught.value)


# -- the axis, the number of objects ------------------------------------------------------------
VOLUME = np.zeros((5, 6, 7), np.float32)


@pytest.mark.parametrize("axis", [True, False, np.bool_(True), 1.0, "1", None, 3, -1])
def test_an_axis_is_0_1_or_2_and_never_a_bool_or_a_float(axis):
    with pytest.raises(InvalidInputError, match="Axis"):
        frames_along_axis(VOLUME, axis)
    with pytest.raises(InvalidInputError, match="Axis"):
        create_propagator("interpolation", VOLUME, axis, 1)
    with pytest.raises(InvalidInputError, match="Axis"):
        InterpolationPropagator.from_volume(VOLUME, axis, 1)


def test_a_numpy_axis_is_taken():
    assert frames_along_axis(VOLUME, np.int64(2)).shape == (7, 5, 6)
    assert create_propagator("interpolation", VOLUME, np.int32(1), np.int64(2)).probabilities.shape == (3, 6, 5, 7)


@pytest.mark.parametrize("num_objects", [True, 1.0, "1", 0, None])
def test_the_number_of_objects_is_a_positive_whole_number(num_objects, tmp_path):
    with pytest.raises(InvalidInputError, match="num_objects"):
        create_propagator("interpolation", VOLUME, 0, num_objects)
    with pytest.raises(InvalidInputError, match="num_objects"):
        InterpolationPropagator(5, (6, 7), num_objects)
    # STCN: refused before any weights are looked for (this file does not exist)
    with pytest.raises(InvalidInputError, match="num_objects"):
        create_propagator("stcn", VOLUME, 0, num_objects, weights=tmp_path / "absent.pth", device="cpu")


# -- the interpolation's own arguments -----------------------------------------------------------
@pytest.mark.parametrize("options, message", [
    ({"softness": float("inf")}, "softness"),
    ({"softness": float("nan")}, "softness"),
    ({"softness": "x"}, "softness"),
    ({"softness": True}, "softness"),
    ({"softness": 0}, "softness"),
    ({"softness": -1.0}, "softness"),
    ({"pixel_spacing": "ab"}, "pixel_spacing"),
    ({"pixel_spacing": (1,)}, "pixel_spacing"),
    ({"pixel_spacing": 1.0}, "pixel_spacing"),
    ({"pixel_spacing": (1.0, 0.0)}, "pixel_spacing"),
    ({"pixel_spacing": (True, 1.0)}, "pixel spacing"),
    ({"pixel_spacing": (1.0, float("inf"))}, "pixel spacing"),
])
def test_interpolation_options_are_checked(options, message):
    with pytest.raises(InvalidInputError, match=message):
        InterpolationPropagator(5, (6, 7), 1, **options)


@pytest.mark.parametrize("num_frames, frame_shape", [(True, (6, 7)), (5.0, (6, 7)), (0, (6, 7)),
                                                     (5, "ab"), (5, (6,)), (5, (6.0, 7)), (5, (0, 7))])
def test_interpolation_stack_shape_is_checked(num_frames, frame_shape):
    with pytest.raises(InvalidInputError):
        InterpolationPropagator(num_frames, frame_shape, 1)


def test_a_large_finite_softness_still_interpolates():
    # softness=inf made every blend 0.5 against 0.5, so every frame in between was background;
    # any finite softness keeps the sign of the blended distance, so the shape stays.
    disk = np.zeros((9, 9), np.uint8)
    disk[2:7, 2:7] = 1
    for softness in (1.0, np.float32(1e6)):
        prop = InterpolationPropagator(5, (9, 9), 1, softness=softness)
        prop.annotate_many([(0, disk), (4, disk)])
        assert np.array_equal(prop.labels()[2], disk)


# -- annotate / annotate_many: malformed items and progress --------------------------------------
@pytest.fixture(scope="module")
def stcn_propagator(random_stcn_networks):
    network, fusion = random_stcn_networks
    volume = np.random.default_rng(0).normal(100, 20, (4, 16, 16)).astype(np.float32)
    return STCNPropagator(volume, 1, network, fusion, device="cpu")


def _interpolation():
    return InterpolationPropagator(4, (16, 16), 1)


MASK = np.zeros((16, 16), np.uint8)
MASK[4:10, 5:12] = 1


def _state(prop):
    return {i: m.tobytes() for i, m in prop.annotated.items()}, np.array(prop.probabilities)


@pytest.mark.parametrize("items, message", [
    (None, "list of \\(frame index, label map\\) pairs"),
    ("ab", "list of \\(frame index, label map\\) pairs"),
    ({1: MASK}, "list of \\(frame index, label map\\) pairs"),
    (5, "list of \\(frame index, label map\\) pairs"),
    ([(1,)], "Annotation 0 is not a \\(frame index, label map\\) pair"),
    ([(1, MASK), (2, MASK, 3)], "Annotation 1 is not"),
    ([5], "Annotation 0 is not"),
    ([MASK[:2]], "Annotation 0 is not"),
])
@pytest.mark.parametrize("kind", ["interpolation", "stcn"])
def test_annotate_many_takes_index_and_label_map_pairs(kind, items, message, stcn_propagator):
    prop = _interpolation() if kind == "interpolation" else stcn_propagator
    before = _state(prop)
    with pytest.raises(InvalidInputError, match=message):
        prop.annotate_many(items)
    after = _state(prop)
    assert after[0] == before[0] and np.array_equal(after[1], before[1])


@pytest.mark.parametrize("kind", ["interpolation", "stcn"])
def test_progress_is_a_function_or_none(kind, stcn_propagator):
    prop = _interpolation() if kind == "interpolation" else stcn_propagator
    before = _state(prop)
    for call in (lambda: prop.annotate(1, MASK, progress=5),
                 lambda: prop.annotate_many([(1, MASK)], progress="bar")):
        with pytest.raises(InvalidInputError, match="progress is a function"):
            call()
    after = _state(prop)
    assert after[0] == before[0] and np.array_equal(after[1], before[1])


def test_seed_takes_index_and_label_map_pairs(random_stcn_networks):
    network, fusion = random_stcn_networks
    volume = np.random.default_rng(1).normal(100, 20, (4, 16, 16)).astype(np.float32)
    prop = STCNPropagator(volume, 1, network, fusion, device="cpu")
    with pytest.raises(InvalidInputError, match="Annotation 0 is not"):
        prop.seed(np.zeros((4, 16, 16), np.uint8), [(1,)])
    assert prop.seed(np.zeros((4, 16, 16), np.uint8), [(1, MASK)])  # still a new propagator


# -- the interpolation's annotate_many rolls back on any error -----------------------------------
class _Boom(Exception):
    pass


def _fails_in_second_item(error):
    def progress(done, total, message=""):
        if done > 50:  # annotate_many reports percent of the batch: past half is the second item
            raise error
    return progress


@pytest.mark.parametrize("error", [_Boom("the progress dialog broke"), KeyboardInterrupt(),
                                   CancelledError("cancelled")])
def test_an_error_from_progress_leaves_the_interpolation_as_before(error):
    prop = _interpolation()
    prop.annotate(0, MASK)
    before = _state(prop)
    second = np.roll(MASK, 2, axis=1)
    with pytest.raises(type(error)):
        prop.annotate_many([(3, MASK), (2, second)], progress=_fails_in_second_item(error))
    after = _state(prop)
    assert after[0] == before[0] and np.array_equal(after[1], before[1])
    # and the next propagation is the one an untouched propagator gives
    fresh = _interpolation()
    fresh.annotate(0, MASK)
    assert np.array_equal(prop.annotate_many([(3, MASK), (2, second)]), fresh.annotate_many([(3, MASK), (2, second)]))


def test_a_bad_later_item_leaves_the_interpolation_as_before():
    prop = _interpolation()
    before = _state(prop)
    with pytest.raises(InvalidInputError, match="shape"):
        prop.annotate_many([(1, MASK), (2, MASK[:8])])
    after = _state(prop)
    assert after[0] == before[0] == {} and np.array_equal(after[1], before[1])


def test_session_click_messages_print_numbers_plainly():
    # numpy 2 prints a tuple of its scalars as (np.float64(100.0), ...): the message shows numbers
    from isegformer import Session

    session = Session.open((np.zeros((4, 8, 8), np.float32), np.eye(4)),
                           click_model=ClickPredictor(FakeClickNet(), device="cpu"), device="cpu")
    with pytest.raises(InvalidInputError) as caught:
        session.click_ijk((np.float64(100), 3, 3))
    assert "IJK (100.0, 3.0, 3.0)" in str(caught.value) and "np." not in str(caught.value)
    with pytest.raises(InvalidInputError) as caught:
        session.click(np.array([1.234, 2.0, -50.0]))
    assert "RAS (1.23, 2.0, -50.0)" in str(caught.value) and "np." not in str(caught.value)


@pytest.mark.parametrize("call, shown", [
    (lambda s: s.add_click(np.float64("nan"), 3), "got nan."),
    (lambda s: s.add_click(3, np.float32("inf")), "got inf."),
    (lambda s: ClickSession(s.predictor, _image(), window=(np.float64(5), np.int64(1))), "got (5, 1)."),
    (lambda s: frames_along_axis(VOLUME, np.float64(1)), "got 1.0 (float64)."),
])
def test_argument_messages_show_numpy_scalars_as_numbers(call, shown):
    session, _ = _click_session()
    with pytest.raises(InvalidInputError) as caught:
        call(session)
    assert shown in str(caught.value) and "np." not in str(caught.value)
