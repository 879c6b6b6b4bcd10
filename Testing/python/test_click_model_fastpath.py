"""The CPU shortcuts of the click network against the plain order of operations they replace.

Swin blocks gather their windows with one precomputed index (instead of pad, roll, partition),
keep the attention bias between calls, and patch merging permutes instead of slicing; the
decoder fuses coarse maps before resizing them. Each is checked here against a direct
computation, and the bias cache against every way the weights can change.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from isegformer.click_engine.build import build_isegformer
from isegformer.click_engine.decoder import MLPDecoder
from isegformer.click_engine.swin import DropPath, PatchMerging, window_token_order


def _plain_windows(x: torch.Tensor, window: int, shift: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, windows * window², C): zero-pad, roll by -shift, cut row-major."""
    b, h, w, c = x.shape
    x = F.pad(x, (0, 0, 0, (-w) % window, 0, (-h) % window))
    if shift:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    hp, wp = x.shape[1:3]
    x = x.view(b, hp // window, window, wp // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, -1, c)


@pytest.mark.parametrize("h, w, window, shift", [
    (24, 24, 12, 6), (24, 24, 12, 0), (25, 13, 12, 6), (7, 30, 12, 6), (5, 5, 4, 2), (9, 4, 4, 0),
])
def test_window_gather_equals_pad_roll_partition(h, w, window, shift):
    x = torch.randn(2, h, w, 3)
    gather, scatter = window_token_order(h, w, window, shift, torch.device("cpu"))
    tokens = torch.cat([x.reshape(2, h * w, 3), torch.zeros(2, 1, 3)], dim=1)
    windows = tokens.index_select(1, gather)
    assert torch.equal(windows, _plain_windows(x, window, shift))
    # scatter reads every real token back from its window position, padding never
    assert torch.equal(windows.index_select(1, scatter), x.reshape(2, h * w, 3))


def test_patch_merging_concatenates_the_2x2_cell_in_the_reference_order():
    merge = PatchMerging(2).eval()
    x = torch.randn(1, 5 * 3, 2)  # odd grid: padded to 6 x 4
    grid = F.pad(x.view(1, 5, 3, 2), (0, 0, 0, 1, 0, 1))
    plain = torch.cat([grid[:, 0::2, 0::2], grid[:, 1::2, 0::2], grid[:, 0::2, 1::2],
                       grid[:, 1::2, 1::2]], dim=-1).reshape(1, -1, 8)
    with torch.no_grad():
        assert torch.equal(merge(x, 5, 3), merge.reduction(merge.norm(plain)))


def test_decoder_equals_resize_concatenate_fuse():
    torch.manual_seed(0)
    head = MLPDecoder([4, 8, 16], 6).eval()
    features = [torch.randn(2, 4, 11, 13), torch.randn(2, 8, 6, 7), torch.randn(2, 16, 3, 4)]
    resized = [F.interpolate(conv(f), size=(11, 13), mode="bilinear", align_corners=False)
               for conv, f in zip(head.convs, features)]
    with torch.no_grad():
        plain = head.conv_seg(head.fusion_conv(torch.cat(resized, dim=1)))
        torch.testing.assert_close(head(features), plain, rtol=0, atol=1e-5)


def _inputs(h: int = 40, w: int = 29):
    g = torch.Generator().manual_seed(3)
    return (torch.rand(1, 3, h, w, generator=g), torch.rand(1, 1, h, w, generator=g),
            torch.tensor([[[h / 2, w / 3, 0], [-1, -1, -1]]]))


def test_cached_attention_bias_follows_loaded_weights():
    torch.manual_seed(0)
    model = build_isegformer("tiny")
    other = build_isegformer("tiny")  # different random weights, including the bias tables
    inputs = _inputs()
    with torch.inference_mode():
        model(*inputs)  # fills the caches
        model.load_state_dict(other.state_dict())
        torch.testing.assert_close(model(*inputs), other(*inputs), rtol=0, atol=0)
    with torch.no_grad():  # an in-place change of one table only
        for m in (model, other):
            m.backbone.layers[0].blocks[1].attn.relative_position_bias_table.mul_(3.0)
        torch.testing.assert_close(model(*inputs), other(*inputs), rtol=0, atol=0)


def test_bias_cache_never_blocks_training_gradients():
    torch.manual_seed(0)
    model = build_isegformer("tiny")
    inputs = _inputs()
    with torch.inference_mode():
        model(*inputs)  # cached constants built here must still serve autograd below
    fresh = build_isegformer("tiny")  # the same weights, never run
    fresh.load_state_dict(model.state_dict())
    for m in (model, fresh):
        m.train()
        m.head.dropout = torch.nn.Identity()  # deterministic training forward
        for module in m.modules():
            if isinstance(module, DropPath):
                module.rate = 0.0
    for m in (model, fresh):
        m.zero_grad()
        m(*inputs).sum().backward()
    for (name, p), q in zip(model.named_parameters(), fresh.parameters()):
        if "relative_position_bias_table" in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
