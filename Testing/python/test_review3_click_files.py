"""Click files: what the reader cannot use later is refused at once, naming the file and the
point (an axis of 1.0, a segment named by a list or a blank); the writer's coordinate system
is checked with the package's error whatever its type."""
from __future__ import annotations

import json

import pytest

from isegformer.errors import FileFormatError, InvalidInputError
from isegformer.output.markups import ClickPoint, read_clicks, write_clicks


def _file(tmp_path, extra):
    path = tmp_path / "clicks.mrk.json"
    write_clicks(path, [ClickPoint((1.0, 2.0, 3.0), True, "femur", 0)])
    data = json.loads(path.read_text())
    data["markups"][0]["controlPoints"][0]["isegformer"].update(extra)
    path.write_text(json.dumps(data))
    return path


def test_a_well_formed_file_reads_back(tmp_path):
    [click] = read_clicks(_file(tmp_path, {}))
    assert (click.segment, click.axis, click.positive) == ("femur", 0, True)


@pytest.mark.parametrize("extra, message", [
    ({"axis": 1.0}, "axis 1.0"),
    ({"axis": "1"}, "axis '1'"),
    ({"segment": [1, 2]}, r"segment \[1, 2\]"),
    ({"segment": "  "}, "segment '  '"),
    ({"segment": 7}, "segment 7"),
    ({"segment": "a\rb"}, "segment 'a.rb'.*line-break"),
    ({"segment": "ok\u2028no"}, "line-break"),
    ({"segment": "x" * 2000}, "under 1000 characters"),
])
def test_what_a_replay_could_not_use_is_refused_when_the_file_is_read(tmp_path, extra, message):
    path = _file(tmp_path, extra)
    with pytest.raises(FileFormatError, match=f"clicks.mrk.json: control point 1 .*{message}"):
        read_clicks(path)


@pytest.mark.parametrize("system", [None, 3, "XYZ"])
def test_a_bad_coordinate_system_is_the_packages_error(tmp_path, system):
    with pytest.raises(InvalidInputError, match="coordinate_system must be 'LPS' or 'RAS'"):
        write_clicks(tmp_path / "c.mrk.json", [ClickPoint((1.0, 2.0, 3.0))], coordinate_system=system)
    assert not (tmp_path / "c.mrk.json").exists()
