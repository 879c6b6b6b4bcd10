"""The click predictor and the NoC loop against the reference's own runs (golden §2.6).

Two checks per fixture file:

- free-running: our simulated user, predictor and model, run from the first click, must make
  the reference's clicks and reach its IoUs, ROIs, network input sizes, network points and
  probabilities;
- teacher-forced: given the reference's mask after click J-1, our simulated user alone must make
  the reference's click J (this isolates the clicker from model noise).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from isegformer.clicks import Click, next_click

pytestmark = pytest.mark.golden

FILES = ("predictor", "predictor_trained")
PROB_ATOL = 1.5e-3  # the fixtures store probabilities as float16


def _load(golden_dir, name):
    path = golden_dir / f"{name}.npz"
    if not path.is_file():
        pytest.skip(f"{path} is missing from the golden folder")
    return np.load(path)


def _tiny_model(golden_dir, trained: bool):
    from isegformer.click_engine.build import load_click_model

    state = torch.load(golden_dir / "tiny_isegformer_state_dict.pth", map_location="cpu",
                       weights_only=True)
    if trained:
        delta = torch.load(golden_dir / "tiny_isegformer_trained_delta.pth", map_location="cpu",
                           weights_only=True)
        assert set(delta) <= set(state), "the trained delta names keys the model does not have"
        state.update(delta)
    return load_click_model(state, device="cpu")


@pytest.mark.parametrize("name", FILES)
def test_teacher_forced_clicks_match_reference(golden_dir, name):
    data = _load(golden_dir, name)
    checked = 0
    for k in range(int(data["num_cases"])):
        gt = data[f"case{k}_gt"]
        ref = data[f"case{k}_clicks"]
        masks = data[f"case{k}_pred_masks"]
        first = next_click(gt, np.zeros(gt.shape, bool))
        assert (first.y, first.x, int(first.positive)) == tuple(ref[0]), f"case{k} click 0"
        for j in range(1, len(ref)):
            done = [Click(int(y), int(x), bool(p)) for y, x, p in ref[:j]]
            click = next_click(gt, masks[j - 1], done)
            assert (click.y, click.x, int(click.positive)) == tuple(ref[j]), f"case{k} click {j}"
            checked += 1
    assert checked > 0


@pytest.mark.parametrize("name", FILES)
def test_free_running_noc_loop_matches_reference(golden_dir, name):
    from isegformer.click_engine.predictor import ClickPredictor
    from isegformer.evaluation.noc import evaluate_sample

    data = _load(golden_dir, name)
    model = _tiny_model(golden_dir, trained=name.endswith("trained"))
    net_calls = []
    model.register_forward_pre_hook(lambda module, args: net_calls.append(1))
    predictor = ClickPredictor(model, device="cpu")  # zoom-in, flip, 0.49: the paper's protocol
    problems: list[str] = []

    for k in range(int(data["num_cases"])):
        ref_clicks = data[f"case{k}_clicks"]
        steps = []
        net_calls.clear()

        def record(session, click, iou):
            steps.append((session.probability, session.roi, predictor.last_call, len(net_calls)))

        # The fixtures stop at the reference's click count (no case reached IoU 0.90).
        result = evaluate_sample(predictor, data[f"case{k}_image"], data[f"case{k}_gt"],
                                 max_clicks=len(ref_clicks), stop_iou=0.90, on_click=record)
        clicks = np.array([[c.y, c.x, int(c.positive)] for c in result.clicks])
        if clicks.shape != ref_clicks.shape or not (clicks == ref_clicks).all():
            problems.append(f"case{k}: clicks {clicks.tolist()} != {ref_clicks.tolist()}")
            continue
        gt = data[f"case{k}_gt"] == 1
        for j, (prob, roi, call, calls) in enumerate(steps):
            where = f"case{k} click {j}"
            ambiguous = data[f"case{k}_ambiguous"][j].astype(bool)
            ref_prob = data[f"case{k}_probs"][j].astype(np.float32)
            err = float(np.abs(prob - ref_prob).max())
            if err > PROB_ATOL:
                problems.append(f"{where}: probability differs by {err:.2e}")
            ref_mask = data[f"case{k}_pred_masks"][j].astype(bool)
            wrong = int((((prob > 0.49) != ref_mask) & ~ambiguous).sum())
            if wrong:
                problems.append(f"{where}: {wrong} mask pixels differ outside the ambiguous ones")
            # A flipped ambiguous pixel may move the IoU by at most n / (union - n).
            union = int((ref_mask | gt).sum())
            n_amb = int(ambiguous.sum())
            iou_tol = n_amb / max(union - n_amb, 1) + 1e-6
            if abs(float(result.ious[j]) - float(data[f"case{k}_ious"][j])) > iou_tol:
                problems.append(f"{where}: IoU {result.ious[j]} != {data[f'case{k}_ious'][j]}")
            ref_roi = tuple(int(v) for v in data[f"case{k}_rois"][j])
            if (roi or (-1, -1, -1, -1)) != ref_roi:
                problems.append(f"{where}: ROI {roi} != {ref_roi}")
            ref_hw = tuple(int(v) for v in data[f"case{k}_net_hw"][j])
            if call.input_hw != ref_hw:
                problems.append(f"{where}: network input {call.input_hw} != {ref_hw}")
            ref_points = data[f"case{k}_click{j}_net_points"]
            if call.points.shape != ref_points.shape or not np.allclose(
                    call.points, ref_points, rtol=0, atol=1e-9):
                problems.append(f"{where}: network points differ:\n{call.points}\n{ref_points}")
            if calls != int(data[f"case{k}_net_calls"][j]):
                problems.append(f"{where}: {calls} network calls so far, expected one per click")
            if str(data[f"case{k}_net_points_torch_dtype"][j]) == "torch.int64":
                # the reference fed the un-zoomed image with integer clicks at this step
                if call.input_hw != gt.shape or not np.array_equal(call.points,
                                                                   np.round(call.points)):
                    problems.append(f"{where}: expected an un-zoomed call with integer clicks")
    assert not problems, "\n".join(problems)
