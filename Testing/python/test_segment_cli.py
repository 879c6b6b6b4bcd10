"""`isegformer segment` and `isegformer propagate` end to end on a real volume crop."""
from __future__ import annotations

import json

import numpy as np
import pytest

from isegformer.cli.main import main
from isegformer.output.markups import ClickPoint, write_clicks
from isegformer.output.seg_nrrd import SegmentInfo, read_seg_nrrd, write_seg_nrrd
from isegformer.session import Session
from isegformer.volume import Volume, read_volume, write_volume
from session_testkit import brats_crop, single_torch_thread

pytestmark = pytest.mark.data

one_torch_thread = pytest.fixture(scope="module", autouse=True)(single_torch_thread)


@pytest.fixture(autouse=True)
def private_weights_cache(tmp_path, monkeypatch):
    # The CLI checks weight files through the verified cache; keep its records out of $HOME.
    monkeypatch.setenv("ISEGFORMER_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def case(data_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("case")
    volume, labels = brats_crop(data_dir)
    path = write_volume(volume, folder / "flair.nii.gz")
    return read_volume(path), labels, path


def ras(volume: Volume, i: float, j: float, k: float) -> tuple[float, float, float]:
    return tuple(float(v) for v in volume.ijk_to_ras_points(np.array([i, j, k])))


def test_segment_writes_a_seg_nrrd_slicer_reads_like_the_python_api(case, golden_dir, tmp_path, capsys):
    slicerio = pytest.importorskip("slicerio")
    volume, _, path = case
    positives = write_clicks(tmp_path / "tumour.mrk.json", [ClickPoint(ras(volume, 24, 22, 6))])
    negatives = write_clicks(tmp_path / "F_neg.mrk.json", [ClickPoint(ras(volume, 3, 4, 6), positive=False)])
    # A Slicer-made list has no descriptions: the file name says it is negative.
    document = json.loads(negatives.read_text())
    document["markups"][0].pop("name")
    document["markups"][0]["controlPoints"][0]["description"] = ""
    negatives.write_text(json.dumps(document))
    out = tmp_path / "out.seg.nrrd"

    rc = main(["segment", str(path), "--clicks", str(positives), str(negatives), "--segment", "tumour",
               "--model", str(golden_dir / "tiny_isegformer.pth"), "--device", "cpu", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert "2 click(s) on 1 segment(s): tumour" in capsys.readouterr().out

    seg = slicerio.read_segmentation(str(out))
    np.testing.assert_allclose(np.diag([-1, -1, 1, 1]) @ seg["ijkToLPS"], volume.ijk_to_ras, atol=1e-6)
    assert [s["name"] for s in seg["segments"]] == ["tumour"]
    written = np.transpose(slicerio.segment_mask(seg, "tumour"), (2, 1, 0))

    # the same clicks through the Python API, with the CLI's predictor settings (zoom-in on)
    session = Session.open(path, click_model=golden_dir / "tiny_isegformer.pth", device="cpu")
    session.add_segment("tumour")
    session.click_slice(0, 6, 22, 24, positive=True)
    session.click_slice(0, 6, 4, 3, positive=False)
    np.testing.assert_array_equal(written, session.segment_mask("tumour"))


def test_segment_with_interpolation_keeps_the_clicked_slices(case, golden_dir, tmp_path, capsys):
    volume, _, path = case
    clicks = write_clicks(tmp_path / "c.mrk.json", [ClickPoint(ras(volume, 24, 24, 2)), ClickPoint(ras(volume, 24, 24, 9))])
    out = tmp_path / "o.seg.nrrd"
    overlay = tmp_path / "o.png"
    rc = main(["segment", str(path), "--clicks", str(clicks), "--propagate", "--method", "interpolation",
               "--model", str(golden_dir / "tiny_isegformer.pth"), "--device", "cpu",
               "--out", str(out), "--overlay", str(overlay)])
    assert rc == 0, capsys.readouterr().err
    result = read_seg_nrrd(out).mask("Segment_1")
    session = Session.open(path, click_model=golden_dir / "tiny_isegformer.pth", device="cpu")
    np.testing.assert_array_equal(result[2], session.click_slice(0, 2, 24, 24))
    np.testing.assert_array_equal(result[9], session.click_slice(0, 9, 24, 24))
    assert not result[0].any() and not result[11].any()  # interpolation does not extrapolate
    assert overlay.stat().st_size > 1000


def test_propagate_from_drawn_label_slices(case, tmp_path, capsys):
    volume, labels, path = case
    drawn = np.zeros(volume.shape, np.uint8)
    drawn[2] = (labels[2] > 0) * 1
    drawn[9] = (labels[9] > 0) * 1
    drawn[2][:6, :6] = 2
    drawn[9][:5, :5] = 2
    label_path = write_volume(volume, tmp_path / "drawn.nii.gz", drawn)
    out = tmp_path / "p.seg.nrrd"
    rc = main(["propagate", str(path), "--labels", str(label_path), "--method", "interpolation",
               "--axis", "k", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    result = read_seg_nrrd(out)
    assert [s.name for s in result.segments] == ["Label_1", "Label_2"]
    for k in (2, 9):  # the drawn slices are annotated slices, kept exactly
        np.testing.assert_array_equal(result.mask("Label_1")[k], drawn[k] == 1)
        np.testing.assert_array_equal(result.mask("Label_2")[k], drawn[k] == 2)
    for name in ("Label_1", "Label_2"):
        assert result.mask(name)[5].any() and not result.mask(name)[11].any()

    # the command is the Python API's plumbing: the same steps give the same masks
    session = Session.open(path)
    session.annotate_from_label_map(drawn, axis=0)
    for name in ("Label_1", "Label_2"):
        np.testing.assert_array_equal(session.propagate(name, method="interpolation"), result.mask(name))


def test_propagate_keeps_segment_names_and_colours_of_a_seg_nrrd(case, tmp_path, capsys):
    volume, labels, path = case
    drawn = np.zeros(volume.shape, bool)
    drawn[3] = labels[3] > 0
    drawn[8] = labels[8] > 0
    labels_path = write_seg_nrrd(tmp_path / "in.seg.nrrd", [drawn], [SegmentInfo("oedema", (0.1, 0.8, 0.3))], volume.ijk_to_ras)
    out = tmp_path / "out.nii.gz"
    rc = main(["propagate", str(path), "--labels", str(labels_path), "--method", "interpolation", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert "oedema" in capsys.readouterr().out
    result = read_volume(out)
    np.testing.assert_array_equal(result.array[3] > 0, drawn[3])
    assert result.array[5].any()


@pytest.mark.golden
def test_propagate_with_stcn_weights_file(case, tmp_path, capsys, golden_dir, weights_formula):
    import torch

    volume, labels, path = case
    manifest = json.loads((golden_dir / "manifest_stcn.json").read_text())
    weights = {k: torch.from_numpy(np.asarray(v)) for k, v in weights_formula.fill(manifest).items()}
    torch.save(weights, tmp_path / "stcn_formula.pth")
    drawn = np.zeros(volume.shape, np.uint8)
    drawn[6] = labels[6] > 0
    label_path = write_volume(volume, tmp_path / "drawn.nii.gz", drawn)
    out = tmp_path / "p.seg.nrrd"
    rc = main(["propagate", str(path), "--labels", str(label_path), "--stcn", str(tmp_path / "stcn_formula.pth"),
               "--device", "cpu", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    np.testing.assert_array_equal(read_seg_nrrd(out).mask(0)[6], drawn[6] == 1)


def test_bad_inputs_fail_clearly_and_write_nothing(case, golden_dir, tmp_path, capsys):
    volume, _, path = case
    model = str(golden_dir / "tiny_isegformer.pth")
    out = tmp_path / "o.seg.nrrd"

    bad = tmp_path / "bad.mrk.json"
    bad.write_text("{not json")
    assert main(["segment", str(path), "--clicks", str(bad), "--model", model, "--device", "cpu", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "bad.mrk.json" in err and "markups" in err.lower()

    outside = write_clicks(tmp_path / "far.mrk.json", [ClickPoint(ras(volume, 24, 24, 40))])
    assert main(["segment", str(path), "--clicks", str(outside), "--model", model, "--device", "cpu", "--out", str(out)]) == 1
    assert "outside the volume" in capsys.readouterr().err

    other_grid = Volume(np.ones((4, 8, 8), np.uint8), volume.ijk_to_ras)
    labels = write_volume(other_grid, tmp_path / "small.nii.gz")
    assert main(["propagate", str(path), "--labels", str(labels), "--method", "interpolation", "--out", str(out)]) == 1
    assert "another grid" in capsys.readouterr().err

    clicks = write_clicks(tmp_path / "ok.mrk.json", [ClickPoint(ras(volume, 24, 24, 5))])
    missing = tmp_path / "no" / "o.seg.nrrd"
    assert main(["segment", str(path), "--clicks", str(clicks), "--model", model, "--out", str(missing)]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not out.exists() and not missing.exists()


def test_segment_int8_is_the_python_apis_int8_and_float32_stays_the_default(case, golden_dir, tmp_path, capsys):
    slicerio = pytest.importorskip("slicerio")
    volume, _, path = case
    clicks = write_clicks(tmp_path / "tumour.mrk.json", [ClickPoint(ras(volume, 24, 22, 6)),
                                                         ClickPoint(ras(volume, 30, 26, 6))])
    model = golden_dir / "tiny_isegformer.pth"

    def cli_mask(name, *extra):
        out = tmp_path / f"{name}.seg.nrrd"
        rc = main(["segment", str(path), "--clicks", str(clicks), "--segment", "tumour", "--model", str(model),
                   "--device", "cpu", "--out", str(out), *extra])
        assert rc == 0, capsys.readouterr().err
        seg = slicerio.read_segmentation(str(out))
        return np.transpose(slicerio.segment_mask(seg, "tumour"), (2, 1, 0)).astype(bool)

    def api_mask(precision):
        session = Session.open(path, click_model=model, device="cpu", click_precision=precision)
        session.add_segment("tumour")
        session.click_slice(0, 6, 22, 24, positive=True)
        session.click_slice(0, 6, 26, 30, positive=True)
        return session.segment_mask("tumour")

    int8, float32 = api_mask("int8"), api_mask("float32")
    assert (int8 != float32).any(), "this case no longer tells int8 from float32: pick other clicks"
    np.testing.assert_array_equal(cli_mask("int8", "--precision", "int8"), int8)
    np.testing.assert_array_equal(cli_mask("default"), float32)
    assert int8[6].any() and not int8[[k for k in range(int8.shape[0]) if k != 6]].any()

    with pytest.raises(SystemExit):
        main(["segment", str(path), "--clicks", str(clicks), "--model", str(model), "--precision", "int4",
              "--out", str(tmp_path / "x.seg.nrrd")])
    assert "invalid choice: 'int4'" in capsys.readouterr().err
