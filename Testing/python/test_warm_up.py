"""Session.warm_up_click_model: the click model loads once, before the first click, and a failed
load is reported at the first click instead of being lost in a background thread."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

import isegformer
from isegformer.click_engine import build
from isegformer.errors import CheckpointError

SHAPE = (3, 40, 44)  # (k, j, i): slices along k are 40 x 44


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture
def volume():
    rng = np.random.default_rng(0)
    array = rng.normal(100, 10, SHAPE).astype(np.float32)
    array[:, 10:30, 12:32] += 80  # a bright square to click on
    return array, np.diag([0.8, 0.8, 2.0, 1.0])


@pytest.fixture
def tiny_state():
    torch.manual_seed(0)
    return build.build_isegformer("tiny").state_dict()


@pytest.fixture
def loads(monkeypatch):
    """Counts load_click_model calls (ClickPredictor imports it from build at call time)."""
    calls = []
    real = build.load_click_model

    def counting(*args, **kwargs):
        calls.append(threading.current_thread().name)
        if getattr(counting, "delay", 0):
            time.sleep(counting.delay)
        return real(*args, **kwargs)

    monkeypatch.setattr(build, "load_click_model", counting)
    counting.calls = calls
    return counting


def _wait_done(handle, seconds=120.0):
    deadline = time.monotonic() + seconds
    while not handle.done():
        assert time.monotonic() < deadline, "the warm-up did not finish"
        time.sleep(0.05)


def test_open_with_warm_up_loads_once_and_the_first_click_reuses_it(volume, tiny_state, loads):
    session = isegformer.Session.open(volume, click_model=tiny_state, device="cpu", warm_up=True)
    handle = session.warm_up_click_model()  # the running warm-up, not a second one
    predictor = handle.result(timeout=120)
    assert loads.calls == ["isegformer-click-warm-up"], "loaded in the background, once"
    # The warm-up ran the network once at the first click's size (the slice and its mirror).
    assert predictor.last_call is not None and predictor.last_call.input_hw == SHAPE[1:]
    assert handle.load_seconds is not None and handle.warm_seconds is not None

    mask = session.click_slice(0, 1, row=20, col=22)
    assert mask.shape == SHAPE[1:]
    assert session.predictor is predictor
    assert len(loads.calls) == 1, "the first click loaded the model again"


def test_a_click_during_the_warm_up_waits_for_it_instead_of_loading_again(volume, tiny_state,
                                                                          loads):
    loads.delay = 1.0  # the click arrives while the warm-up is still loading
    session = isegformer.Session.open(volume, click_model=tiny_state, device="cpu")
    handle = session.warm_up_click_model(background=True)
    assert not handle.done()
    session.click_slice(0, 1, row=20, col=22)
    assert handle.done()
    assert len(loads.calls) == 1


def test_blocking_warm_up_returns_when_ready(volume, tiny_state, loads):
    session = isegformer.Session.open(volume, click_model=tiny_state, device="cpu")
    handle = session.warm_up_click_model(background=False)
    assert handle.done() and loads.calls == [threading.current_thread().name]
    assert session.warm_up_click_model() is handle, "a finished warm-up is not repeated"
    session.click_slice(0, 0, row=5, col=5)
    assert len(loads.calls) == 1


def test_a_failed_background_warm_up_is_raised_at_the_first_click(volume, loads):
    not_a_model = {"key_encoder.conv1.weight": torch.zeros(4, 3, 3, 3)}  # an STCN-like file
    session = isegformer.Session.open(volume, click_model=not_a_model, device="cpu",
                                      warm_up=True)
    handle = session.warm_up_click_model()
    _wait_done(handle)
    assert handle.failed()
    with pytest.raises(CheckpointError, match="not an iSegFormer click model"):
        session.click_slice(0, 1, row=20, col=22)
    assert session.segments == [] or all(not s.annotations[0] for s in session.segments)
    # Reported once; the next click tries to load again (and fails again, loudly).
    with pytest.raises(CheckpointError):
        session.click_slice(0, 1, row=20, col=22)
    assert len(loads.calls) == 2


def test_a_blocking_warm_up_raises_its_error(volume, loads):
    session = isegformer.Session.open(volume, click_model={"x": torch.zeros(2)}, device="cpu")
    with pytest.raises(CheckpointError):
        session.warm_up_click_model(background=False)
