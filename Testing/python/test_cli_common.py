"""The axis names shared by the subcommands: one table, the same answer everywhere."""
from __future__ import annotations

import argparse

import pytest

from isegformer.cli import demo, evaluate_clicks, evaluate_propagation, finetune
from isegformer.cli.common import AXES, parse_axis


@pytest.mark.parametrize("text, axis", [("0", 0), ("k", 0), (" J ", 1), ("2", 2), ("I", 2)])
def test_axis_names(text, axis):
    assert parse_axis(text) == axis


@pytest.mark.parametrize("text", ["3", "x", "", "-1"])
def test_unknown_axis_is_an_argparse_error(text):
    with pytest.raises(argparse.ArgumentTypeError, match="axis must be 0, 1, 2"):
        parse_axis(text)


def test_every_command_reads_the_same_table():
    assert AXES == {"k": 0, "j": 1, "i": 2, "0": 0, "1": 1, "2": 2}
    assert evaluate_clicks.AXES is evaluate_propagation.AXES is finetune.AXES is AXES
    assert demo._parse_axis("j") == 1 and demo._parse_axis("sagittal") is None
