"""iSegFormer without fixtures: click disks, batching, input checks, gradient checkpointing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from isegformer.click_engine.build import VARIANTS, build_isegformer, detect_config
from isegformer.click_engine.disks import click_disks
from isegformer.click_engine.swin import relative_position_index, shifted_window_mask
from isegformer.errors import InvalidInputError


def _numpy_disks(points: np.ndarray, h: int, w: int, radius: float = 5.0) -> np.ndarray:
    out = np.zeros((points.shape[0], 2, h, w), dtype=np.float32)
    n = points.shape[1] // 2
    rows = np.arange(h, dtype=np.float32)[:, None]
    cols = np.arange(w, dtype=np.float32)[None, :]
    for b in range(points.shape[0]):
        for i, (y, x, _) in enumerate(points[b]):
            if max(y, x) < 0:
                continue
            d = (rows - np.float32(y)) ** 2 + (cols - np.float32(x)) ** 2
            out[b, i // n] = np.maximum(out[b, i // n], (d <= radius * radius))
    return out


def test_disks_match_an_independent_computation():
    rng = np.random.default_rng(7)
    pts = np.concatenate(
        [rng.uniform(-3, 40, (2, 6, 2)).astype(np.float32), np.zeros((2, 6, 1), np.float32)], -1
    )
    pts[0, 2] = pts[1, 5] = -1  # padding rows
    pts[1, 4, :2] = (-0.5, 10.0)  # max(y, x) >= 0: a real click just above the image
    expected = _numpy_disks(pts, 37, 43)
    got = click_disks(torch.from_numpy(pts), 37, 43).numpy()
    np.testing.assert_array_equal(got, expected)
    assert got[1, 1, 0, 10] == 1.0  # the off-image (negative) click still reaches row 0
    assert click_disks(torch.full((1, 4, 3), -1.0), 5, 5).sum() == 0


def test_disk_is_radius_five_around_a_fractional_click():
    disk = click_disks(torch.tensor([[[10.5, 10.0, 0.0], [-1, -1, -1]]]), 21, 21)[0, 0]
    assert disk[10, 14] == 1 and disk[10, 15] == 0 and disk[10, 6] == 1 and disk[10, 5] == 0
    assert disk[5, 10] == 0 and disk[6, 10] == 1 and disk[15, 10] == 1 and disk[16, 10] == 0
    exact = click_disks(torch.tensor([[[10.0, 10.0, 0.0], [-1, -1, -1]]]), 21, 21)[0, 0]
    assert exact[10, 15] == 1 and exact[15, 10] == 1 and exact[14, 14] == 0  # d^2 <= 25


def test_relative_position_index_formula():
    index = relative_position_index(12)
    p, q = 5 * 12 + 7, 9 * 12 + 2  # (5, 7) and (9, 2)
    assert index[p, q] == (5 - 9 + 11) * 23 + (7 - 2 + 11)
    assert index.shape == (144, 144) and index.min() == 0 and index.max() == 528


def test_shift_mask_separates_the_rolled_regions():
    mask = shifted_window_mask(24, 24, 12, 6, torch.device("cpu"))
    assert mask.shape == (4, 144, 144)
    assert torch.all(mask[0] == 0)  # a window away from the wrap-around
    bottom_left = mask[2]  # rows 12..17 and 18..23 of it came from different places
    assert bottom_left[0, 5 * 12] == 0 and bottom_left[0, 6 * 12] == -100
    assert bottom_left[0, 11] == 0  # its columns are not split
    assert int((mask[3] == 0).sum()) == 4 * 36 * 36  # four 6x6 regions


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_isegformer("tiny")


def _inputs(b, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(b, 3, h, w, generator=g)
    prev = torch.rand(b, 1, h, w, generator=g)
    points = torch.tensor([[[h / 3, w / 2, 0], [2.5, 1.0, 1], [h / 2, w / 4, 2], [-1, -1, -1]]])
    return image, prev, points.repeat(b, 1, 1)


def test_batch_elements_are_independent(tiny):
    image, prev, points = _inputs(2, 50, 62)
    points[1, 0] = torch.tensor([30.0, 40.0, 0])
    with torch.no_grad():
        both = tiny(image, prev, points)
        first = tiny(image[:1], prev[:1], points[:1])
        second = tiny(image[1:], prev[1:], points[1:])
    torch.testing.assert_close(both, torch.cat([first, second]), rtol=0, atol=1e-5)
    assert both.shape == (2, 1, 50, 62) and both.dtype == torch.float32


def test_clicks_change_the_output(tiny):
    image, prev, points = _inputs(1, 64, 64)
    with torch.no_grad():
        a = tiny(image, prev, points)
        b = tiny(image, prev, torch.full_like(points, -1))
    assert (a - b).abs().max() > 1e-4


@pytest.mark.parametrize(
    "image, prev, points",
    [
        (torch.rand(1, 1, 32, 32), torch.zeros(1, 1, 32, 32), torch.zeros(1, 2, 3)),
        (torch.rand(3, 32, 32), torch.zeros(1, 32, 32), torch.zeros(1, 2, 3)),
        (torch.rand(1, 3, 32, 32), torch.zeros(1, 1, 16, 32), torch.zeros(1, 2, 3)),
        (torch.rand(1, 3, 32, 32), torch.zeros(1, 1, 32, 32), torch.zeros(1, 3, 3)),
        (torch.rand(1, 3, 32, 32), torch.zeros(1, 1, 32, 32), torch.zeros(1, 2)),
        (torch.randint(0, 255, (1, 3, 32, 32)), torch.zeros(1, 1, 32, 32), torch.zeros(1, 2, 3)),
        (torch.rand(1, 3, 0, 32), torch.zeros(1, 1, 0, 32), torch.zeros(1, 2, 3)),
    ],
)
def test_bad_inputs_are_refused_at_the_boundary(tiny, image, prev, points):
    with pytest.raises(InvalidInputError):
        tiny(image, prev, points)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(1)
    model = build_isegformer("tiny").train()
    for module in model.modules():  # make training deterministic: no dropout, no drop-path
        if hasattr(module, "rate"):
            module.rate = 0.0
        if isinstance(module, torch.nn.Dropout2d):
            module.p = 0.0
    image, prev, points = _inputs(1, 24, 28)

    def grads():
        model.zero_grad()
        model(image, prev, points).square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    model.backbone.use_checkpointing = False
    plain = grads()
    model.backbone.use_checkpointing = True
    assert model.backbone.use_checkpointing
    checkpointed = grads()
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_variants_are_detected_from_shapes():
    for name in VARIANTS:
        with torch.device("meta"):
            state = build_isegformer(name).state_dict()
        assert detect_config(state).name == name
