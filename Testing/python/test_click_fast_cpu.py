"""The opt-in fast CPU mode (precision="int8"): int8 linear layers on a copy of the model, close
to float32 on the reference's own cases, refused where it cannot run."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from isegformer.click_engine.build import build_isegformer, load_click_model
from isegformer.click_engine.predictor import ClickPredictor
from isegformer.errors import InvalidInputError


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def _linear_types(model: nn.Module) -> set[str]:
    return {type(m).__module__ + "." + type(m).__name__ for m in model.modules()
            if type(m).__name__ == "Linear"}


def test_int8_quantizes_a_copy_and_leaves_the_float_model_as_it_was():
    torch.manual_seed(0)
    model = build_isegformer("tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = ClickPredictor(model, device="cpu", precision="int8")
    assert fast.model is not model
    assert _linear_types(fast.model) == {"torch.ao.nn.quantized.dynamic.modules.linear.Linear"}
    assert _linear_types(model) == {"torch.nn.modules.linear.Linear"}
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_unknown_precision_is_refused_with_the_choices_before_any_file_is_read(tmp_path):
    with pytest.raises(InvalidInputError, match="int8"):
        ClickPredictor(build_isegformer("tiny"), device="cpu", precision="int4")
    # a missing checkpoint would raise another error: the precision is checked first
    with pytest.raises(InvalidInputError, match="Unknown precision"):
        ClickPredictor(tmp_path / "absent.pth", device="cpu", precision="fp8")


@pytest.mark.golden
def test_int8_masks_agree_with_the_reference_noc_run(golden_dir):
    """The trained tiny model on the reference's NoC cases: at every step, the int8 mask (after
    the reference's own clicks) must overlap the reference's mask with IoU >= 0.85: the same
    object with a few boundary pixels moved, which a wrong layer or bias would not give."""
    from isegformer.click_engine.session import ClickSession

    path = golden_dir / "predictor_trained.npz"
    if not path.is_file():
        pytest.skip(f"{path} is missing from the golden folder")
    data = np.load(path)
    state = torch.load(golden_dir / "tiny_isegformer_state_dict.pth", map_location="cpu",
                       weights_only=True)
    state.update(torch.load(golden_dir / "tiny_isegformer_trained_delta.pth",
                            map_location="cpu", weights_only=True))
    fast = ClickPredictor(load_click_model(state, device="cpu"), device="cpu",
                          precision="int8")
    for k in range(int(data["num_cases"])):
        image = data[f"case{k}_image"]
        session = ClickSession(fast, image)
        for j, (y, x, positive) in enumerate(data[f"case{k}_clicks"]):
            session.add_click(int(y), int(x), bool(positive))
            ours = session.probability > 0.49
            ref = data[f"case{k}_pred_masks"][j].astype(bool)
            union = (ours | ref).sum()
            iou = 1.0 if union == 0 else float((ours & ref).sum() / union)
            assert iou >= 0.85, f"case{k} click {j}: int8 mask IoU {iou:.3f} with the reference"


def test_session_passes_click_precision_to_its_predictor():
    import isegformer

    torch.manual_seed(0)
    volume = (np.random.default_rng(0).normal(size=(2, 24, 24)).astype(np.float32), np.eye(4))
    session = isegformer.Session.open(volume, device="cpu", click_precision="int8",
                                      click_model=build_isegformer("tiny").state_dict())
    assert session.predictor.precision == "int8"
    assert "torch.nn.modules.linear.Linear" not in _linear_types(session.predictor.model)
    assert session.click_slice(0, 1, row=12, col=12).shape == (24, 24)


def test_session_checks_click_precision_when_it_opens_not_at_the_first_click(monkeypatch):
    """A typo, int8 on a torch without an int8 engine, or a predictor built with another
    precision is answered by Session.open, before the click model is resolved (a registry
    name would be downloaded first)."""
    import isegformer
    from isegformer.click_engine import fast_cpu
    from isegformer.session import session as session_module

    volume = (np.zeros((2, 24, 24), np.float32), np.eye(4))
    monkeypatch.setattr(session_module.Session, "_build_predictor",
                        lambda self: pytest.fail("the click model was resolved before the precision was checked"))
    for precision in ("fp8", None, 8):
        with pytest.raises(InvalidInputError, match="Unknown precision"):
            isegformer.Session.open(volume, device="cpu", click_precision=precision)
    with pytest.raises(InvalidInputError, match="the ClickPredictor given runs in float32"):
        isegformer.Session.open(volume, device="cpu", click_precision="int8",
                                click_model=ClickPredictor(build_isegformer("tiny"), device="cpu"))
    monkeypatch.setattr(fast_cpu, "_ENGINES", ("no-such-engine",))
    with pytest.raises(InvalidInputError, match="no int8 engine"):
        isegformer.Session.open(volume, device="cpu", click_precision="int8")
    # float32 (the default) needs no check and imports nothing at opening
    assert isegformer.Session.open(volume, device="cpu").segments == []
