"""Clicks, the simulated user, zoom-in and flip arithmetic, and ClickSession semantics.

Expected values are worked out by hand in the comments; the network is a small stand-in
(``fake_click_net.FakeClickNet``) so these tests are fast and need no weights.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from isegformer.click_engine.predictor import ClickPredictor, clicks_to_points
from isegformer.click_engine.session import ClickSession
from isegformer.click_engine.transforms import HorizontalFlip, Roi, ZoomIn, object_roi
from isegformer.clicks import Click, ClickList, ClickSimulator, next_click
from isegformer.errors import InvalidInputError

from fake_click_net import FakeClickNet


def _as_tuple(click: Click) -> tuple:
    return click.y, click.x, click.positive


# -- simulated user ------------------------------------------------------------------------------
def test_first_click_goes_to_the_centre_of_a_block():
    gt = np.zeros((7, 7), np.uint8)
    gt[2:5, 2:5] = 1  # 3x3 block: its centre (3, 3) is 2 px from the nearest background pixel
    assert _as_tuple(next_click(gt, np.zeros_like(gt))) == (3, 3, True)


def test_tie_between_false_negative_and_false_positive_gives_a_negative_click():
    gt = np.zeros((7, 14), np.uint8)
    gt[2:5, 2:5] = 1                      # missed 3x3 block (FN), deepest point (3, 3), depth 2
    pred = np.zeros_like(gt, dtype=bool)
    pred[2:5, 9:12] = True                # wrong 3x3 block (FP), deepest point (3, 10), depth 2
    assert _as_tuple(next_click(gt, pred)) == (3, 10, False)
    pred[2:5, 9:12] = False
    pred[3, 10] = True                    # FP now 1 px deep: FN wins
    assert _as_tuple(next_click(gt, pred)) == (3, 3, True)


def test_first_pixel_in_row_major_order_wins():
    gt = np.zeros((5, 9), np.uint8)
    gt[2, 3:7] = 1                        # a 1-px strip: every pixel is at distance 1
    assert _as_tuple(next_click(gt, np.zeros_like(gt))) == (2, 3, True)


def test_image_border_counts_as_background():
    gt = np.zeros((5, 5), np.uint8)
    gt[:3, :] = 1
    # Padding makes row -1 and columns -1 and 5 background: the deepest pixels (distance 2) are
    # (1, 1), (1, 2), (1, 3); without the padding row 0 would be deepest.
    assert _as_tuple(next_click(gt, np.zeros_like(gt))) == (1, 1, True)


def test_clicked_pixels_are_excluded():
    gt = np.zeros((7, 7), np.uint8)
    gt[2:5, 2:5] = 1
    sim = ClickSimulator(gt)
    empty = np.zeros_like(gt, dtype=bool)
    assert _as_tuple(sim.next_click(empty)) == (3, 3, True)
    # (3, 3) is taken; the other 8 pixels are at distance 1; first in row-major order: (2, 2)
    assert _as_tuple(sim.next_click(empty)) == (2, 2, True)
    assert [c.index for c in sim.clicks] == [0, 1]


def test_ignored_pixels_are_neither_missed_nor_wrong():
    gt = np.zeros((7, 7), np.int8)
    gt[2:5, 2:5] = -1                     # ignored block
    gt[0, 0] = 1
    pred = np.zeros(gt.shape, bool)
    pred[2:5, 2:5] = True                 # predicting an ignored region is not an error
    assert _as_tuple(next_click(gt, pred)) == (0, 0, True)


def test_simulator_rejects_wrong_shapes():
    with pytest.raises(InvalidInputError):
        ClickSimulator(np.zeros((3, 3, 3)))
    with pytest.raises(InvalidInputError):
        ClickSimulator(np.zeros((4, 4))).next_click(np.zeros((4, 5), bool))


def test_click_list_indices_and_groups():
    clicks = ClickList()
    clicks.add(1, 2, True)
    clicks.add(3, 4, False)
    clicks.add(5.5, 6.25, True)
    assert [c.index for c in clicks] == [0, 1, 2]
    assert [c.y for c in clicks.positives] == [1, 5.5]
    assert clicks.pop().index == 2 and len(clicks) == 2


# -- points for the network ----------------------------------------------------------------------
def test_points_put_positives_first_and_pad_with_minus_one():
    clicks = [Click(1, 2, True, 0), Click(3, 4, False, 1), Click(5, 6, False, 2)]
    points = clicks_to_points([clicks])
    assert points.dtype == np.float64 and points.shape == (1, 4, 3)
    assert points[0].tolist() == [[1, 2, 0], [-1, -1, -1], [3, 4, 1], [5, 6, 2]]
    assert clicks_to_points([[]]).tolist() == [[[-1, -1, -1], [-1, -1, -1]]]


# -- zoom-in arithmetic --------------------------------------------------------------------------
def test_object_roi_uses_min_crop_and_round_half_to_even():
    mask = np.zeros((300, 300), bool)
    mask[10:20, 30:40] = True
    # rows: centre 14.5, height max(1.4*10, 200) = 200 -> round(-85.5) = -86 -> 0,
    # round(114.5) = 114 (half to even, not 115); columns: centre 34.5 -> 0 .. round(134.5) = 134
    assert object_roi(mask, [], 1.4, 200) == Roi(0, 114, 0, 134)


def test_object_roi_expands_large_objects_and_clamps():
    mask = np.zeros((300, 400), bool)
    mask[100:300, 50:250] = True
    # rows 100..299: centre 199.5, height 1.4*200 = 280 -> round(59.5) = 60, round(339.5) = 340
    # -> clamped to 299; columns 50..249: centre 149.5 -> round(9.5) = 10, round(289.5) = 290
    assert object_roi(mask, [], 1.4, 200) == Roi(60, 299, 10, 290)


def test_object_roi_includes_positive_clicks_only():
    mask = np.zeros((1000, 1000), bool)
    mask[500:510, 500:510] = True
    far_negative = Click(10.0, 10.0, False)
    assert object_roi(mask, [far_negative], 1.4, 200) == object_roi(mask, [], 1.4, 200)
    far_positive = Click(900.7, 505.2, True)  # truncated to pixel (900, 505)
    # rows 500..900: centre 700, height 1.4*401 = 561.4 -> round(419.3) = 419, round(980.7) = 981
    assert object_roi(mask, [far_positive], 1.4, 200).as_tuple()[:2] == (419, 981)


def test_roi_box_iou_is_product_of_overlaps():
    a, b = Roi(0, 9, 0, 9), Roi(5, 14, 0, 9)
    assert a.iou(b) == pytest.approx(5 / 15)          # rows overlap 5 of 15, columns fully
    assert a.iou(Roi(20, 29, 0, 9)) == 0.0


def test_positive_click_on_the_last_roi_row_counts_as_outside():
    roi = Roi(10, 20, 30, 40)
    assert roi.holds_positive_clicks([Click(10, 30, True), Click(19.9, 39.9, True)])
    assert not roi.holds_positive_clicks([Click(20, 35, True)])       # y >= rmax
    assert not roi.holds_positive_clicks([Click(15, 40, True)])       # x >= cmax
    assert roi.holds_positive_clicks([Click(0, 0, False)])            # negatives never count


def _zoom_with_prev(prev: torch.Tensor) -> ZoomIn:
    zoom = ZoomIn()
    zoom.inv_transform(prev)  # what the first click leaves behind
    return zoom


def test_zoom_in_crops_resizes_and_maps_clicks_as_the_reference():
    prev = torch.zeros(1, 1, 300, 600)
    prev[0, 0, 100:110, 200:210] = 1.0
    zoom = _zoom_with_prev(prev)
    image = torch.rand(1, 4, 300, 600)
    clicks = [Click(105.0, 205.0, True, 0), Click(150.0, 250.0, False, 1)]
    out, mapped = zoom.transform(image, clicks)
    # bbox 100..109 / 200..209, min crop 200: rows round(4.5) = 4 .. round(204.5) = 204,
    # columns round(104.5) = 104 .. round(304.5) = 304 -> 201 x 201, resized to 400 x 400
    assert zoom.roi == Roi(4, 204, 104, 304)
    assert tuple(out.shape) == (1, 4, 400, 400)
    # clicks: 400 * (y - rmin) / 201, not the align_corners mapping 399 * (y - rmin) / 200
    assert mapped[0].y == 400 * (105.0 - 4) / 201 and mapped[0].x == 400 * (205.0 - 104) / 201
    assert mapped[1].index == 1 and not mapped[1].positive
    # corners of an align_corners=True resize are the crop's corners
    assert torch.equal(out[0, :, 0, 0], image[0, :, 4, 104])
    assert torch.equal(out[0, :, -1, -1], image[0, :, 204, 304])


def test_zoom_in_pastes_back_with_exact_zeros_outside():
    prev = torch.zeros(1, 1, 300, 600)
    prev[0, 0, 100:110, 200:210] = 1.0
    zoom = _zoom_with_prev(prev)
    zoom.transform(torch.rand(1, 4, 300, 600), [Click(105, 205, True), Click(1, 1, False)])
    full = zoom.inv_transform(torch.full((1, 1, 400, 400), 0.7))
    assert tuple(full.shape) == (1, 1, 300, 600)
    inside = full[0, 0, 4:205, 104:305]
    assert torch.allclose(inside, torch.tensor(0.7))
    outside = full.clone()
    outside[0, 0, 4:205, 104:305] = 0
    assert torch.count_nonzero(outside) == 0


def test_zoom_in_skips_the_first_click():
    zoom = ZoomIn()
    image = torch.rand(1, 4, 50, 60)
    out, mapped = zoom.transform(image, [Click(3.5, 4.5, True)])
    assert out is image and mapped[0].y == 3.5
    assert zoom.roi is None


def test_empty_prediction_keeps_the_stale_roi_and_the_full_image():
    prev = torch.zeros(1, 1, 300, 600)
    prev[0, 0, 100:110, 200:210] = 1.0
    zoom = _zoom_with_prev(prev)
    zoom.transform(torch.rand(1, 4, 300, 600), [Click(105, 205, True), Click(1, 1, False)])
    stale = zoom.roi
    zoom.inv_transform(torch.zeros(1, 1, 400, 400))   # nothing above 0.5 any more
    image = torch.rand(1, 4, 300, 600)
    clicks = [Click(105, 205, True), Click(1, 1, False), Click(7, 9, False, 2)]
    out, mapped = zoom.transform(image, clicks)
    assert out is image and [(c.y, c.x) for c in mapped] == [(105, 205), (1, 1), (7, 9)]
    assert zoom.roi == stale
    # the full-size output is squeezed into the stale ROI, zeros elsewhere
    full = zoom.inv_transform(torch.ones(1, 1, 300, 600))
    assert full[0, 0, stale.rmin:stale.rmax + 1, stale.cmin:stale.cmax + 1].min() == 1
    assert full.sum() == stale.height * stale.width


def test_roi_recomputed_when_a_positive_click_leaves_it():
    prev = torch.zeros(1, 1, 600, 600)
    prev[0, 0, 100:110, 100:110] = 1.0
    zoom = _zoom_with_prev(prev)
    zoom.transform(torch.rand(1, 4, 600, 600), [Click(105, 105, True), Click(5, 5, False)])
    first = zoom.roi
    zoom.inv_transform(torch.zeros(1, 1, 400, 400))
    zoom._prev_probs = prev  # same prediction, but a positive click far away
    zoom.transform(torch.rand(1, 4, 600, 600),
                   [Click(105, 105, True), Click(5, 5, False), Click(500, 500, True)])
    assert zoom.roi != first and zoom.roi.rmax >= 500


# -- flip ----------------------------------------------------------------------------------------
def test_flip_mirrors_clicks_and_averages_back():
    flip = HorizontalFlip()
    image = torch.rand(1, 4, 5, 8)
    doubled, lists = flip.transform(image, [[Click(1.5, 2.25, True)]])
    assert torch.equal(doubled[1], torch.flip(image[0], dims=[2]))
    assert lists[1][0].x == 8 - 2.25 - 1 and lists[1][0].y == 1.5
    # a network that copies its input: the mirrored half, flipped back, equals the original
    assert torch.allclose(flip.inv_transform(doubled[:, :1]), image[:, :1])
    a, b = torch.zeros(1, 1, 2, 3), torch.ones(1, 1, 2, 3)
    assert torch.equal(flip.inv_transform(torch.cat([a, b])), torch.full((1, 1, 2, 3), 0.5))


def test_flip_averages_logits_not_probabilities():
    net = FakeClickNet()
    predictor = ClickPredictor(net, zoom_in=False, flip=True, device="cpu")
    image = torch.rand(1, 3, 40, 50)
    prob = predictor.predict(image, torch.zeros(1, 1, 40, 50), [Click(20, 10, True)], None)
    # the fake net's logits for the two halves, recomputed here
    logits = torch.cat([net(image, None, torch.tensor([[[20., 10, 0], [-1, -1, -1]]])),
                        net(torch.flip(image, dims=[3]), None,
                            torch.tensor([[[20., 39, 0], [-1, -1, -1]]]))])
    expected = torch.sigmoid(0.5 * (logits[:1] + torch.flip(logits[1:], dims=[3])))
    assert torch.allclose(prob, expected, atol=1e-6)


# -- the session ---------------------------------------------------------------------------------
def _session(shape=(120, 160), **kwargs) -> tuple[ClickSession, FakeClickNet]:
    rng = np.random.default_rng(0)
    net = FakeClickNet()
    predictor = ClickPredictor(net, device="cpu", **kwargs)
    return ClickSession(predictor, rng.integers(0, 256, shape, dtype=np.uint8)), net


def test_session_click_runs_the_network_once_and_thresholds_at_0_49():
    session, net = _session()
    prob, mask = session.add_click(60, 80, positive=True)
    assert len(net.calls) == 1 and net.calls[0]["batch"] == 2   # flip doubles the batch
    assert prob.dtype == np.float32 and prob.shape == (120, 160)
    assert mask.dtype == bool and np.array_equal(mask, prob > 0.49)
    assert mask[60, 80] and not mask[0, 0]
    assert session.clicks[0] == Click(60.0, 80.0, True, 0)


def test_undo_restores_probability_clicks_and_zoom_state():
    session, net = _session((300, 300))
    p1, _ = session.add_click(150, 150)
    p2, _ = session.add_click(160, 170)
    roi2 = session.roi
    assert roi2 is not None                                     # zoomed from the 2nd click
    session.add_click(100, 100, positive=False)
    prob, mask = session.undo()
    assert np.array_equal(prob, p2) and len(session.clicks) == 2 and session.roi == roi2
    session.undo()
    assert np.array_equal(session.probability, p1) and session.roi is None
    # redoing the same click gives the same result as the first time
    again, _ = session.add_click(160, 170)
    assert np.array_equal(again, p2)
    session.undo()
    session.undo()
    assert session.clicks == () and not session.probability.any()
    prob, mask = session.undo()                                 # nothing left: a no-op
    assert not mask.any()


def test_reset_forgets_everything():
    session, net = _session((300, 300))
    first, _ = session.add_click(150, 150)
    session.add_click(160, 170)
    session.reset()
    assert session.clicks == () and session.roi is None and not session.probability.any()
    again, _ = session.add_click(150, 150)
    assert np.array_equal(again, first)


def test_gray_float_image_with_a_window_equals_the_uint8_image():
    rng = np.random.default_rng(1)
    u8 = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    predictor = ClickPredictor(FakeClickNet(), device="cpu")
    a, _ = ClickSession(predictor, u8).add_click(30, 30)
    b, _ = ClickSession(predictor, u8.astype(np.float64) * 4 - 100,
                        window=(-100, 255 * 4 - 100)).add_click(30, 30)
    c, _ = ClickSession(predictor, np.repeat(u8[..., None], 3, axis=2)).add_click(30, 30)
    assert np.allclose(a, b, atol=1e-6) and np.array_equal(a, c)


def test_predict_batch_equals_first_clicks_of_sessions():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (2, 48, 64), dtype=np.uint8)
    predictor = ClickPredictor(FakeClickNet(), device="cpu")
    batch = predictor.predict_batch(
        np.repeat(images[:, None], 3, axis=1) / np.float32(255),
        [[Click(10, 12, True, 0)], [Click(30, 40, True, 0), Click(5, 5, False, 1)]])
    one = ClickSession(predictor, images[0])
    two = ClickSession(predictor, images[1])
    one.add_click(10, 12)
    two.add_click(30, 40)
    # the second session's 2nd click is zoomed; compare its first one only
    assert batch.shape == (2, 48, 64) and np.allclose(batch[0], one.probability, atol=1e-6)
    with pytest.raises(InvalidInputError, match="one list"):
        predictor.predict_batch(np.zeros((1, 3, 8, 8)), [])
    with pytest.raises(InvalidInputError, match="outside"):
        predictor.predict_batch(np.zeros((1, 3, 8, 8)), [[Click(3, 9, True)]])
    with pytest.raises(InvalidInputError, match="NaN"):
        predictor.predict_batch(np.full((1, 3, 8, 8), np.nan), [[Click(3, 3, True)]])


@pytest.mark.parametrize("image, what", [
    (np.zeros((4, 5, 6)), "2D"),
    (np.zeros((0, 10)), "empty"),
    (np.full((10, 10), 0.3), "constant"),
    (np.where(np.eye(10) > 0, np.nan, 0.5), "NaN"),
    (np.linspace(-5, 5, 100).reshape(10, 10), "window"),
    (np.array([["a", "b"], ["c", "d"]]), "real numbers"),
])
def test_bad_images_are_refused_clearly(image, what):
    predictor = ClickPredictor(FakeClickNet(), device="cpu")
    with pytest.raises(InvalidInputError, match=what):
        ClickSession(predictor, image)


@pytest.mark.parametrize("y, x", [(-1, 5), (5, 40), (30, 5), (float("nan"), 3), ("a", 1)])
def test_clicks_outside_the_image_are_refused(y, x):
    session, net = _session((30, 40))
    with pytest.raises(InvalidInputError):
        session.add_click(y, x)
    assert session.clicks == () and not net.calls


def test_clicks_on_the_outer_half_of_border_pixels_snap_inside():
    session, net = _session((30, 40))
    session.add_click(-0.4, -0.5)
    assert (session.clicks[0].y, session.clicks[0].x) == (0.0, 0.0)
    assert net.calls[0]["points"][0, 0, :2].tolist() == [0.0, 0.0]


def test_a_failing_network_call_leaves_the_session_unchanged():
    session, net = _session((60, 60))
    p1, _ = session.add_click(30, 30)

    def broken(*args):
        raise RuntimeError("out of memory")

    original = net.forward
    net.forward = broken
    with pytest.raises(RuntimeError):
        session.add_click(10, 10)
    net.forward = original
    assert len(session.clicks) == 1 and np.array_equal(session.probability, p1)


# -- NoC metrics ---------------------------------------------------------------------------------
from isegformer.evaluation.noc import (Sample, SampleResult, evaluate, iou, mean_iou_curve,  # noqa: E402
                                       number_of_clicks, summarize)


def test_number_of_clicks_is_the_first_click_reaching_the_target():
    assert number_of_clicks([0.5, 0.86, 0.91], 0.85, 20) == 2
    assert number_of_clicks([0.5, 0.86, 0.91], 0.90, 20) == 3
    assert number_of_clicks([0.5, 0.6], 0.80, 20) == 20       # never reached: counts as the max


def test_summary_counts_samples_at_the_click_limit_like_the_reference():
    def result(ious):
        return SampleResult("s", [], np.asarray(ious, np.float32), seconds=0.5)

    reached_late = [0.1, 0.2, 0.95]           # reaches every target at the last allowed click
    never = [0.1, 0.2, 0.3]
    fast = [0.95]
    metrics = summarize([result(reached_late), result(never), result(fast)], max_clicks=3)
    assert metrics["noc@85"]["mean"] == pytest.approx((3 + 3 + 1) / 3)
    assert metrics["noc@85"]["std"] == pytest.approx(np.std([3, 3, 1]))
    assert metrics[">=3@85"] == 2 and metrics[">=3@90"] == 2
    assert metrics["clicks"] == 7 and metrics["seconds_per_click"] == pytest.approx(1.5 / 7)
    # a sample that stopped keeps its last IoU in the curve
    assert metrics["mean_iou_per_click"] == pytest.approx(
        [(0.1 + 0.1 + 0.95) / 3, (0.2 + 0.2 + 0.95) / 3, (0.95 + 0.3 + 0.95) / 3])
    assert len(mean_iou_curve([result(fast)], 5)) == 5


def test_iou_skips_ignored_pixels():
    gt = np.array([[1, 1, 0, -1]])
    pred = np.array([[True, False, False, True]])
    assert iou(gt, pred) == pytest.approx(1 / 2)             # the ignored pixel counts nowhere


def test_evaluate_stops_at_the_target_but_not_before_min_clicks():
    yy, xx = np.mgrid[:64, :64]
    gt = ((yy - 32) ** 2 + (xx - 32) ** 2 <= 12 ** 2).astype(np.int8)
    image = (gt.astype(np.uint8) * 200 + 20)
    predictor = ClickPredictor(FakeClickNet(), zoom_in=False, flip=False, device="cpu")
    report = evaluate(predictor, [Sample("disc", image, gt)], max_clicks=5, stop_iou=0.5)
    [only] = report.results
    # the fake net paints a disc of radius ~15 around the first click, the disc's centre
    assert (only.clicks[0].y, only.clicks[0].x) == (32, 32) and len(only.ious) == 1
    assert only.ious[0] >= 0.5 and number_of_clicks(only.ious, 0.50, 5) == 1
    # The loop stopped at 0.5, so NoC@80 was never tried: not measured, not "5 clicks".
    assert report.metrics["noc@80"]["mean"] is None and report.metrics[">=5@80"] is None
    assert report.peak_memory_mb > 0 and report.device == "cpu"
    # any IoU reaches a target of 0: the loop stops as soon as min_clicks allows
    longer = evaluate(predictor, [Sample("disc", image, gt)], max_clicks=5, stop_iou=0.0,
                      min_clicks=3)
    assert len(longer.results[0].ious) == 3
    with pytest.raises(InvalidInputError, match="no object"):
        evaluate(predictor, [Sample("empty", image, np.zeros_like(gt))])
