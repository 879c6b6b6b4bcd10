"""`isegformer demo` end to end on a small knee, and what it says when it cannot download.

The end-to-end run uses the golden tiny official-format checkpoint and STCN/FusionNet weights
made by the golden weight formula: the masks are meaningless, the plumbing is real. Every file
goes through ``--weights-dir`` under its registry filename while the registry points to a closed
port, which is exactly the offline recovery the demo's own error message prescribes.
"""
from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest

from isegformer.cli.main import main
from isegformer.weights import ModelCache
from session_testkit import crop, single_torch_thread

one_torch_thread = pytest.fixture(scope="module", autouse=True)(single_torch_thread)

DEMO_NAMES = ("isegformer_swin_base_oaizib", "stcn", "mivos_fusion", "oaizib_sample_image",
              "oaizib_sample_label")
#: A crop of the CLAIR-Knee template around the femoral cartilage: 16 sagittal slices of 48 x 48.
CROP_START, CROP_SHAPE = (40, 40, 20), (48, 48, 16)
FEMORAL_CARTILAGE = 2


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the socket closes


@pytest.fixture(scope="module")
def unreachable_registry(tmp_path_factory) -> Path:
    """The bundled registry's demo entries with every URL on a closed local port."""
    from isegformer.weights.registry import bundled_registry_path

    port = closed_port()
    bundled = json.loads(bundled_registry_path().read_text())
    entries = []
    for entry in bundled["models"]:
        if entry["name"] in DEMO_NAMES:
            entry = dict(entry, url=f"http://127.0.0.1:{port}/{entry['name']}/{entry['filename']}",
                         mirrors=[], size=None, sha256=None)
            entries.append(entry)
    path = tmp_path_factory.mktemp("registry") / "models.json"
    path.write_text(json.dumps({"schema_version": 1, "models": entries}))
    return path


@pytest.fixture(autouse=True)
def offline_environment(tmp_path, monkeypatch, unreachable_registry):
    monkeypatch.setenv("ISEGFORMER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ISEGFORMER_REGISTRY", str(unreachable_registry))


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory, data_dir, golden_dir, weights_formula) -> Path:
    """A folder as a user fills it by hand: every demo file under its registry filename."""
    import torch

    from isegformer.volume import read_volume, write_volume
    from isegformer.weights import load_registry
    from isegformer.weights.registry import bundled_registry_path

    folder = tmp_path_factory.mktemp("weights")
    names = {e.name: e.filename for e in load_registry(bundled_registry_path())}
    (folder / names["isegformer_swin_base_oaizib"]).symlink_to(golden_dir / "tiny_isegformer.pth")
    for manifest, name in (("manifest_stcn.json", "stcn"), ("manifest_fusion.json", "mivos_fusion")):
        entries = json.loads((golden_dir / manifest).read_text())
        state = {k: torch.from_numpy(np.asarray(v)) for k, v in weights_formula.fill(entries).items()}
        for key, _, dtype in entries:
            if "int" in dtype:  # the formula leaves integer buffers out: num_batches_tracked
                state[key] = torch.zeros((), dtype=torch.int64)
        torch.save(state, folder / names[name])
    template = data_dir / "knee_template"
    image = read_volume(template / "CLAIR-Knee-103R_template_64x128x128.nii.gz")
    labels = read_volume(template / "CLAIR-Knee-103R_segmentation_64x128x128.nii.gz")
    write_volume(crop(image, CROP_START, CROP_SHAPE), folder / names["oaizib_sample_image"])
    write_volume(crop(labels, CROP_START, CROP_SHAPE), folder / names["oaizib_sample_label"])
    return folder


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_offline_demo_names_what_is_missing_and_how_to_supply_it(tmp_path, capsys, unreachable_registry):
    out = tmp_path / "demo-out"
    rc = main(["demo", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 1
    assert "Traceback" not in captured.err
    registry = json.loads(unreachable_registry.read_text())["models"]
    for entry in registry:
        assert entry["filename"] in captured.err
        assert entry["url"] in captured.err
    assert "offline" in captured.err
    assert f"isegformer demo --out {out} --weights-dir" in captured.err
    assert "--volume" in captured.err  # the sample knee is missing too: your own volume also works
    # where the cache looks for each file, and nothing half-written there or in --out
    home = tmp_path / "home"
    cache = ModelCache(home)
    for entry in registry:
        assert str(cache.model_path(entry["name"], entry["filename"])) in captured.err
    assert not out.exists()
    leftovers = [p for p in files_under(home) if p.suffix == ".part" or p.name in {e["filename"] for e in registry}]
    assert leftovers == []


def test_a_missing_explicit_file_fails_before_any_download(tmp_path, capsys):
    rc = main(["demo", "--out", str(tmp_path / "o"), "--stcn", str(tmp_path / "nope.pth")])
    captured = capsys.readouterr()
    assert rc == 1 and "nope.pth" in captured.err and "Traceback" not in captured.err
    assert "downloading" not in captured.out
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("option", [["--num-slices", "0"], ["--max-clicks", "0"], ["--target-iou", "1.5"]])
def test_bad_settings_fail_before_any_download(tmp_path, capsys, option):
    rc = main(["demo", "--out", str(tmp_path / "o"), *option])
    captured = capsys.readouterr()
    assert rc == 1 and "error:" in captured.err and "Traceback" not in captured.err
    assert "downloading" not in captured.out
    assert not (tmp_path / "o").exists()


def test_volume_without_label_is_refused(tmp_path, capsys):
    volume = tmp_path / "knee.nii.gz"
    volume.write_bytes(b"")  # never read: the missing label is noticed first
    rc = main(["demo", "--out", str(tmp_path / "o"), "--volume", str(volume)])
    assert rc == 1 and "--label" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.data
@pytest.mark.golden
def test_demo_end_to_end_from_a_weights_dir(tmp_path, capsys, weights_dir, golden_dir):
    slicerio = pytest.importorskip("slicerio")
    from isegformer.click_engine.predictor import ClickPredictor
    from isegformer.click_engine.session import ClickSession
    from isegformer.clicks import ClickSimulator
    from isegformer.output.markups import read_clicks
    from isegformer.volume import read_volume
    from isegformer.volume.intensity import robust_window
    from isegformer.volume.slicing import extract_slice, ijk_to_slice_point

    out = tmp_path / "demo"
    max_clicks = 3
    rc = main(["demo", "--out", str(out), "--weights-dir", str(weights_dir), "--num-slices", "3",
               "--max-clicks", str(max_clicks), "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    for word in ("Dice", "sensitivity", "PPV", "clicks", "propagation", "total"):
        assert word in captured.out
    report = json.loads((out / "demo.json").read_text())
    for name in ("demo.seg.nrrd", "demo_clicks.mrk.json", "demo_montage.png"):
        assert (out / name).stat().st_size > 0
        assert Path(report["files"][{"demo.seg.nrrd": "segmentation", "demo_clicks.mrk.json": "clicks",
                                     "demo_montage.png": "montage"}[name]]) == out / name
    assert (out / "demo_montage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    volume = read_volume(weights_dir / "9092628_image.nii.gz")
    gt = read_volume(weights_dir / "9092628_label.nii.gz").array == FEMORAL_CARTILAGE
    # The template's i axis runs right-to-left (LPS direction diag(-1, -1, 1)): its sagittal
    # slices are the slices along i, array axis 2.
    assert report["axis"] == 2 and report["segment_name"] == "femoral cartilage"

    # The .seg.nrrd opens in slicerio on the volume's grid and holds the figures reported.
    seg = slicerio.read_segmentation(str(out / "demo.seg.nrrd"))
    np.testing.assert_allclose(np.diag([-1, -1, 1, 1]) @ seg["ijkToLPS"], volume.ijk_to_ras, atol=1e-6)
    assert [s["name"] for s in seg["segments"]] == ["femoral cartilage"]
    result = np.transpose(slicerio.segment_mask(seg, "femoral cartilage"), (2, 1, 0)).astype(bool)
    assert result.shape == volume.shape
    tp, n_pred, n_gt = np.sum(result & gt), result.sum(), gt.sum()
    expected = {"dice": 2 * tp / (n_pred + n_gt), "sensitivity": tp / n_gt,
                "ppv": tp / n_pred if n_pred else 0.0}
    for metric, value in expected.items():
        assert 0.0 <= report["scores"][metric] <= 1.0
        assert report["scores"][metric] == pytest.approx(float(value), abs=1e-9)
        assert 0.0 <= report["scores_propagated_only"][metric] <= 1.0
    for step in ("read", "load_models", "clicks", "propagation", "save", "total"):
        assert report["seconds"][step] >= 0.0

    # Each annotated slice holds the object, its clicks follow the NoC simulated user, and the
    # output there is exactly the click engine's mask after those clicks.
    slices = [s["index"] for s in report["slices"]]
    assert len(set(slices)) == 3
    predictor = ClickPredictor(golden_dir / "tiny_isegformer.pth", device="cpu")
    window = robust_window(volume.array)
    for entry in report["slices"]:
        index = entry["index"]
        gt_slice = extract_slice(gt, 2, index)
        assert gt_slice.any()
        assert 1 <= len(entry["clicks"]) <= max_clicks
        engine = ClickSession(predictor, extract_slice(volume.array, 2, index), window=window)
        user = ClickSimulator(gt_slice.astype(np.int8))
        mask = np.zeros(gt_slice.shape, bool)
        for number, click in enumerate(entry["clicks"]):
            expected_click = user.next_click(mask)
            assert (click["row"], click["col"], click["positive"]) == \
                (expected_click.y, expected_click.x, expected_click.positive)
            _, mask = engine.add_click(click["row"], click["col"], click["positive"])
            iou = np.sum(mask & gt_slice) / max(np.sum(mask | gt_slice), 1)
            assert entry["iou_per_click"][number] == pytest.approx(float(iou), abs=1e-9)
            if number < len(entry["clicks"]) - 1:
                assert iou < report["target_iou"]  # the user stops once the slice is good enough
        if len(entry["clicks"]) < max_clicks:
            assert entry["iou_per_click"][-1] >= report["target_iou"]
        np.testing.assert_array_equal(extract_slice(result, 2, index), mask)

    # The clicks file re-reads to the same clicks, in slice order.
    points = read_clicks(out / "demo_clicks.mrk.json")
    assert len(points) == report["total_clicks"] == sum(len(s["clicks"]) for s in report["slices"])
    replayed = []
    for point in points:
        index, row, col = ijk_to_slice_point(2, volume.ras_to_ijk_points(np.asarray(point.position_ras)))
        replayed.append((round(index), round(row), round(col), point.positive))
    assert replayed == [(s["index"], c["row"], c["col"], c["positive"]) for s in report["slices"] for c in s["clicks"]]
    assert {p.segment for p in points} == {"femoral cartilage"}


@pytest.mark.data
def test_the_sample_knee_is_sliced_sagittally_along_k(data_dir):
    """OAI-ZIB 9092628's k axis runs left-right (0.995 of it): its 160 slices of 384 x 384 are
    the sagittal slices the paper and the reference's load_volume (array axis 0) use."""
    from isegformer.demo import sagittal_axis
    from isegformer.volume import read_volume

    label = read_volume(data_dir / "oaizib_label" / "9092628_label.nii.gz")
    assert label.shape == (160, 384, 384)
    assert sagittal_axis(label) == 0


@pytest.mark.parametrize("lateral_ijk, axis", [(0, 2), (1, 1), (2, 0)])
def test_sagittal_axis_follows_the_direction_matrix(lateral_ijk, axis):
    from isegformer.demo import sagittal_axis
    from isegformer.volume import Volume

    # Columns are the RAS directions of i, j, k; put left-right (x, slightly oblique) in one of them.
    columns = {lateral_ijk: [0.97, 0.24, 0.0]}
    others = [c for c in range(3) if c != lateral_ijk]
    columns[others[0]] = [-0.24, 0.97, 0.0]
    columns[others[1]] = [0.0, 0.0, 1.0]
    matrix = np.eye(4)
    matrix[:3, :3] = np.column_stack([columns[c] for c in range(3)]) * 0.5
    assert sagittal_axis(Volume(np.zeros((4, 5, 6), np.int16), matrix)) == axis


def test_demo_slices_hold_the_object_and_skip_its_gaps():
    from isegformer.demo import choose_demo_slices

    frames = np.zeros((30, 8, 8), bool)
    frames[5:25, 2:6, 2:6] = True
    frames[14:17] = False  # a gap in the middle of the extent, where a centre would fall
    chosen = choose_demo_slices(frames, 5)
    assert len(chosen) == 5 and chosen == sorted(set(chosen))
    assert all(frames[i].any() for i in chosen)
    assert 5 <= min(chosen) and max(chosen) <= 24
    # fewer slices holding the object than asked: each of them once
    few = np.zeros((10, 4, 4), bool)
    few[[2, 7], 1, 1] = True
    assert choose_demo_slices(few, 5) == [2, 7]
