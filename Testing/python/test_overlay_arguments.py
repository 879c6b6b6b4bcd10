"""Issue 12 item 27 for the overlay writer: a wrong argument is an InvalidInputError, and
nothing is written."""
from __future__ import annotations

import numpy as np
import pytest

from isegformer.errors import InvalidInputError
from isegformer.output.overlay import write_overlay

VOLUME = np.zeros((4, 5, 6), np.float32)
MASKS = [np.zeros((4, 5, 6), bool)]


@pytest.mark.parametrize("kwargs, message", [
    ({"window": ("a", "b")}, "window"), ({"window": (1, 2, 3)}, "window"), ({"window": (2, 1)}, "low < high"),
    ({"indices": [99]}, "outside"), ({"indices": ["x"]}, "slice index"), ({"indices": [True]}, "slice index"),
    ({"columns": "x"}, "columns"), ({"columns": 0}, "columns"), ({"dpi": 0}, "dpi"),
    ({"names": [1]}, "name"), ({"colors": ["red"]}, "colour"), ({"colors": [(1, 2, 3)]}, "colour"),
    ({"axis": 3}, "axis"),
])
def test_bad_overlay_arguments(tmp_path, kwargs, message):
    call = {"axis": 0, "colors": [(1.0, 0.0, 0.0)], **kwargs}
    axis, colors = call.pop("axis"), call.pop("colors")
    with pytest.raises(InvalidInputError, match=message):
        write_overlay(tmp_path / "o.png", VOLUME, axis, MASKS, colors, **call)
    assert list(tmp_path.iterdir()) == []


def test_a_good_overlay_is_written(tmp_path):
    path = write_overlay(tmp_path / "o.png", VOLUME + np.arange(6), 1, MASKS, [np.array([0.0, 1.0, 0.0])],
                         indices=[np.int64(2)], window=(0, 5), columns=np.int32(2), names=["femur"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
