"""Clicks as Slicer markups JSON: round trips, Slicer's own files, the positive/negative rule."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from isegformer.errors import FileFormatError
from isegformer.output.markups import (
    MARKUPS_SCHEMA,
    ClickPoint,
    is_negative_name,
    read_clicks,
    write_clicks,
)


def slicer_style_file(path: Path, positions, system="LPS", descriptions=None, name=None):
    """A point list as Slicer 5 writes it (no list name, positions in LPS by default)."""
    markup = {
        "type": "Fiducial",
        "coordinateSystem": system,
        "coordinateUnits": "mm",
        "locked": False,
        "fixedNumberOfControlPoints": False,
        "labelFormat": "%N-%d",
        "lastUsedControlPointNumber": len(positions),
        "controlPoints": [
            {
                "id": str(n + 1),
                "label": f"F-{n + 1}",
                "description": "" if descriptions is None else descriptions[n],
                "associatedNodeID": "vtkMRMLScalarVolumeNode1",
                "position": list(p),
                "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
                "selected": True,
                "locked": False,
                "visibility": True,
                "positionStatus": "defined",
            }
            for n, p in enumerate(positions)
        ],
        "measurements": [],
        "display": {"visibility": True, "color": [0.4, 1.0, 1.0]},
    }
    if name is not None:
        markup["name"] = name
    path.write_text(json.dumps({"@schema": MARKUPS_SCHEMA, "markups": [markup]}))
    return path


@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_round_trip_keeps_order_sign_segment_axis(tmp_path, system):
    clicks = [
        ClickPoint((10.5, -20.25, 3.0), True, segment="femur", axis=0),
        ClickPoint((-1.0, 2.0, -3.5), False, segment="femur", axis=0),
        ClickPoint((0.0, 0.0, 0.0), True, segment="tibia", axis=2),
        ClickPoint((7.0, 8.0, 9.0), False),
    ]
    path = write_clicks(tmp_path / "c.mrk.json", clicks, coordinate_system=system)
    back = read_clicks(path)
    assert [c.positive for c in back] == [c.positive for c in clicks]
    assert [c.segment for c in back] == ["femur", "femur", "tibia", None]
    assert [c.axis for c in back] == [0, 0, 2, None]
    np.testing.assert_allclose([c.position_ras for c in back], [c.position_ras for c in clicks])


def test_written_file_follows_slicers_layout(tmp_path):
    path = write_clicks(tmp_path / "c.mrk.json", [ClickPoint((1.0, 2.0, 3.0), False)])
    document = json.loads(path.read_text())
    assert document["@schema"] == MARKUPS_SCHEMA
    (markup,) = document["markups"]
    assert markup["type"] == "Fiducial" and markup["coordinateSystem"] == "LPS"
    (point,) = markup["controlPoints"]
    assert point["position"] == [-1.0, -2.0, 3.0]  # RAS (1, 2, 3) in LPS
    assert point["description"] == "negative"
    assert point["positionStatus"] == "defined"
    assert len(point["orientation"]) == 9
    for key in ("id", "label", "associatedNodeID", "selected", "locked", "visibility"):
        assert key in point


def test_slicer_file_positions_are_converted_from_lps(tmp_path):
    path = slicer_style_file(tmp_path / "F.mrk.json", [(1.0, 2.0, 3.0), (-4.0, 5.0, -6.0)])
    clicks = read_clicks(path)
    np.testing.assert_allclose([c.position_ras for c in clicks], [(-1, -2, 3), (4, -5, -6)])
    assert all(c.positive for c in clicks)  # no description, no negative name: positive
    assert all(c.segment is None and c.axis is None for c in clicks)


def test_ras_file_is_read_as_is(tmp_path):
    path = slicer_style_file(tmp_path / "F.mrk.json", [(1.0, 2.0, 3.0)], system="RAS")
    np.testing.assert_allclose(read_clicks(path)[0].position_ras, (1, 2, 3))


def test_file_name_marks_a_negative_list_when_the_list_has_no_name(tmp_path):
    path = slicer_style_file(tmp_path / "knee_neg.mrk.json", [(0, 0, 0), (1, 1, 1)])
    assert [c.positive for c in read_clicks(path)] == [False, False]


def test_list_name_beats_file_name_and_description_beats_both(tmp_path):
    path = slicer_style_file(
        tmp_path / "negative.mrk.json",
        [(0, 0, 0), (1, 1, 1), (2, 2, 2)],
        descriptions=["", "Positive", "some note"],
        name="background clicks NEGATIVE",
    )
    assert [c.positive for c in read_clicks(path)] == [False, True, False]
    path = slicer_style_file(tmp_path / "neg.mrk.json", [(0, 0, 0)], name="Femur")
    assert read_clicks(path)[0].positive  # the list's own name says nothing negative


def test_negative_name_rule():
    assert is_negative_name("negative") and is_negative_name("F_neg") and is_negative_name("Neg-clicks")
    assert not is_negative_name("F") and not is_negative_name("meninges") and not is_negative_name("positive")


def test_slicerio_converted_fcsv_is_read(tmp_path):
    slicerio = pytest.importorskip("slicerio")
    import slicerio.markups as slicerio_markups

    fcsv = Path(slicerio.__file__).parent / "data" / "F_1.fcsv"
    if not fcsv.exists():
        pytest.skip("slicerio's sample F_1.fcsv is not installed")
    out = tmp_path / "F_1.mrk.json"
    slicerio_markups.fcsv_to_markups_json(str(fcsv), str(out))
    expected = slicerio_markups.read_markups_fcsv(str(fcsv))["markups"][0]
    flip = np.array([-1.0, -1.0, 1.0]) if expected["coordinateSystem"] == "LPS" else np.ones(3)
    clicks = read_clicks(out)
    np.testing.assert_allclose(
        [c.position_ras for c in clicks], [np.array(p["position"]) * flip for p in expected["controlPoints"]]
    )


def test_undefined_points_and_other_markup_types_are_skipped(tmp_path):
    path = slicer_style_file(tmp_path / "F.mrk.json", [(1, 2, 3), (4, 5, 6)])
    document = json.loads(path.read_text())
    document["markups"][0]["controlPoints"][1]["positionStatus"] = "undefined"
    document["markups"].insert(0, {"type": "Line", "controlPoints": []})
    path.write_text(json.dumps(document))
    assert len(read_clicks(path)) == 1


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json at all", "not valid JSON"),
        ("[1, 2, 3]", "not a JSON object"),
        ('{"markups": []}', "@schema"),
        ('{"@schema": "https://example.org/other-schema.json#", "markups": []}', "@schema"),
        (json.dumps({"@schema": MARKUPS_SCHEMA}), "no 'markups' list"),
        (json.dumps({"@schema": MARKUPS_SCHEMA, "markups": [{"type": "Line"}]}), "no point list"),
        (
            json.dumps({"@schema": MARKUPS_SCHEMA, "markups": [
                {"type": "Fiducial", "controlPoints": [{"position": [1, 2]}]}]}),
            "position",
        ),
    ],
)
def test_files_that_are_not_markups_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.mrk.json"
    path.write_text(content)
    with pytest.raises(FileFormatError, match=message):
        read_clicks(path)


def test_binary_file_is_refused(tmp_path):
    path = tmp_path / "bad.mrk.json"
    path.write_bytes(bytes(range(256)))
    with pytest.raises(FileFormatError, match="not UTF-8 text"):
        read_clicks(path)


def test_signs_are_in_every_point_description_and_survive_any_file_or_list_name(tmp_path):
    """Slicer writes no list name into a .mrk.json, so only the description keeps the sign of a
    file that is renamed (issue 11, point 6)."""
    clicks = [ClickPoint((1.0, 2.0, 3.0), False), ClickPoint((4.0, 5.0, 6.0), True)]
    path = write_clicks(tmp_path / "negative_clicks.mrk.json", clicks, name="neg list")
    points = json.loads(path.read_text())["markups"][0]["controlPoints"]
    assert [p["description"] for p in points] == ["negative", "positive"]
    for new_name in ("positive.mrk.json", "neg.mrk.json", "F.mrk.json"):
        renamed = tmp_path / new_name
        renamed.write_bytes(path.read_bytes())
        assert [c.positive for c in read_clicks(renamed)] == [False, True]
    document = json.loads(path.read_text())
    document["markups"][0]["name"] = "negative"  # a list name that says the opposite
    path.write_text(json.dumps(document))
    assert [c.positive for c in read_clicks(path)] == [False, True]


def test_a_description_starting_with_a_sign_word_gives_the_sign(tmp_path):
    path = slicer_style_file(tmp_path / "clicks_neg.mrk.json", [(0, 0, 0)] * 4,
                             descriptions=["Positive: the femur's edge", "neg, background", "", "edge"])
    # the last two say no sign: the file name (Slicer's list name when it loads it) decides
    assert [c.positive for c in read_clicks(path)] == [True, False, False, False]


def _deep_markups(tmp_path):
    deep = tmp_path / "deep.mrk.json"
    deep.write_text('{"@schema": "' + MARKUPS_SCHEMA + '", "markups": ' + "[" * 100_000 + "]" * 100_000 + "}")
    return deep


def test_deeply_nested_markups_are_refused_by_the_reader_and_the_session(tmp_path):
    """100,000 nested lists: json.loads raises RecursionError, the bounded reader refuses them."""
    from isegformer.session import Session

    deep = _deep_markups(tmp_path)
    with pytest.raises(FileFormatError, match="nests deeper"):
        read_clicks(deep)
    session = Session.open((np.zeros((4, 8, 8), np.int16), np.eye(4)))
    with pytest.raises(FileFormatError, match="nests deeper"):
        session.load_clicks(deep)
    assert session.segments == []


@pytest.mark.golden
@pytest.mark.slow  # the CLI builds the click model before it reads the clicks (~35 s here)
def test_deeply_nested_markups_are_a_clear_cli_error(tmp_path, golden_dir, capsys):
    import SimpleITK as sitk

    from isegformer.cli.main import main

    volume = tmp_path / "v.nrrd"
    sitk.WriteImage(sitk.Image([8, 8, 4], sitk.sitkInt16), str(volume))
    code = main(["segment", str(volume), "--clicks", str(_deep_markups(tmp_path)),
                 "--model", str(golden_dir / "tiny_isegformer.pth"), "--device", "cpu",
                 "--out", str(tmp_path / "o.seg.nrrd")])
    err = capsys.readouterr().err
    assert code == 1
    assert "nests deeper" in err
    assert "Traceback" not in err and "RecursionError" not in err
    assert not (tmp_path / "o.seg.nrrd").exists()


@pytest.mark.parametrize("position", [["1", 2, 3], [True, 2, 3], [1, 2, None], {"x": 1}])
def test_positions_must_be_json_numbers(tmp_path, position):
    path = slicer_style_file(tmp_path / "p.mrk.json", [(0, 0, 0)])
    document = json.loads(path.read_text())
    document["markups"][0]["controlPoints"][0]["position"] = position
    path.write_text(json.dumps(document))
    with pytest.raises(FileFormatError, match="position"):
        read_clicks(path)


def test_axis_true_is_not_axis_one(tmp_path):
    path = write_clicks(tmp_path / "a.mrk.json", [ClickPoint((0.0, 0.0, 0.0), True, "s", 1)])
    document = json.loads(path.read_text())
    document["markups"][0]["controlPoints"][0]["isegformer"]["axis"] = True
    path.write_text(json.dumps(document))
    with pytest.raises(FileFormatError, match="axis"):
        read_clicks(path)
