"""compare_state_dict: the one key-and-shape check of the click model and STCN loaders."""
from __future__ import annotations

import torch

from isegformer.checkpoint import KeyMismatch, compare_state_dict, describe_keys

EXPECTED = {"a.weight": (4, 3), "a.bias": (4,), "bn.num_batches_tracked": ()}


def _given(**changes):
    state = {k: torch.zeros(shape) for k, shape in EXPECTED.items()}
    state.update(changes)
    return {k: v for k, v in state.items() if v is not None}


def test_an_exact_match_fits():
    mismatch = compare_state_dict(_given(), EXPECTED)
    assert mismatch == KeyMismatch([], [], []) and mismatch.fits and mismatch.describe() == ""


def test_each_kind_of_mismatch_is_reported_by_name():
    given = _given(**{"a.bias": None, "extra.weight": torch.zeros(2), "a.weight": torch.zeros(3, 4)})
    mismatch = compare_state_dict(given, EXPECTED)
    assert not mismatch.fits
    assert mismatch.missing == ["a.bias"]
    assert mismatch.unexpected == ["extra.weight"]
    assert mismatch.misshaped == [("a.weight", (3, 4), (4, 3))]
    assert mismatch.describe() == (
        "missing: a.bias; unexpected: extra.weight; mis-shaped: a.weight (3, 4) (expected (4, 3))"
    )


def test_only_one_kind_is_described_alone():
    mismatch = compare_state_dict(_given(**{"a.bias": torch.zeros(5)}), EXPECTED)
    assert mismatch.missing == [] and mismatch.unexpected == []
    assert mismatch.describe() == "mis-shaped: a.bias (5,) (expected (4,))"


def test_optional_keys_may_be_absent_but_not_misshaped():
    given = _given(**{"bn.num_batches_tracked": None})
    assert compare_state_dict(given, EXPECTED).missing == ["bn.num_batches_tracked"]
    relaxed = compare_state_dict(given, EXPECTED, optional_suffixes=("num_batches_tracked",))
    assert relaxed.fits
    wrong = _given(**{"bn.num_batches_tracked": torch.zeros(2)})
    assert compare_state_dict(wrong, EXPECTED, optional_suffixes=("num_batches_tracked",)).misshaped


def test_orders_follow_the_expected_and_given_dicts():
    expected = {"z": (1,), "a": (1,), "m": (1,)}
    given = {"y": torch.zeros(1), "b": torch.zeros(1), "m": torch.zeros(2)}
    mismatch = compare_state_dict(given, expected)
    assert mismatch.missing == ["z", "a"] and mismatch.unexpected == ["y", "b"]


def test_torch_sizes_compare_with_tuples():
    expected = {"w": torch.Size([2, 2])}
    assert compare_state_dict({"w": torch.zeros(2, 2)}, expected).fits


def test_long_key_lists_are_cut_with_a_count():
    keys = [f"k{i}" for i in range(10)]
    assert describe_keys(keys, 3) == "k0, k1, k2, ... (10 in all)"
    assert describe_keys(keys[:3], 3) == "k0, k1, k2"
