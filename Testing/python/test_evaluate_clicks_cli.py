"""`isegformer evaluate-clicks` end to end, on tiny PNG and volume datasets made from the goldens.

The trained tiny model (golden §2.3) makes the reference's clicks; the first clicks and IoUs
of the written results must be the reference's own (predictor_trained.npz).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from isegformer.cli.main import main
from isegformer.evaluation.noc import number_of_clicks

pytestmark = pytest.mark.golden

MAX_CLICKS = 2


@pytest.fixture(scope="module")
def trained_checkpoint(golden_dir, tmp_path_factory):
    state = torch.load(golden_dir / "tiny_isegformer_state_dict.pth", map_location="cpu",
                       weights_only=True)
    state.update(torch.load(golden_dir / "tiny_isegformer_trained_delta.pth", map_location="cpu",
                            weights_only=True))
    path = tmp_path_factory.mktemp("model") / "tiny_trained.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def reference(golden_dir):
    return np.load(golden_dir / "predictor_trained.npz")


def _write_png(path, array):
    from PIL import Image

    Image.fromarray(array).save(path)


def test_png_folder_gives_reference_clicks_json_table_and_plot(tmp_path, trained_checkpoint,
                                                                reference, capsys):
    root = tmp_path / "dataset"
    (root / "test" / "image").mkdir(parents=True)
    (root / "test" / "annotations").mkdir(parents=True)
    names = {}
    for k in (0,):
        image = reference[f"case{k}_image"]
        gt = reference[f"case{k}_gt"].astype(np.uint8)
        labels = gt.copy()
        labels[:8, :8] = 2  # a second object: a mask with two labels gives two samples
        _write_png(root / "test" / "image" / f"slice{k}.png", image[:, :, 0])
        _write_png(root / "test" / "annotations" / f"slice{k}.png", labels)
        names[f"slice{k}.png#1"] = k
    out = tmp_path / "out"

    code = main(["evaluate-clicks", "--model", str(trained_checkpoint), "--images", str(root),
                 "--max-clicks", str(MAX_CLICKS), "--device", "cpu", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "NoC@85" in printed and ">=2@90" in printed

    result = json.loads((out / "results.json").read_text())
    samples = {s["name"]: s for s in result["samples"]}
    assert set(samples) == {"slice0.png#1", "slice0.png#2"}
    for name, k in names.items():
        ref_clicks = reference[f"case{k}_clicks"][:MAX_CLICKS].tolist()
        assert samples[name]["clicks"] == ref_clicks, name
        assert np.allclose(samples[name]["ious"], reference[f"case{k}_ious"][:MAX_CLICKS],
                           atol=1e-4), name

    metrics = result["metrics"]
    assert metrics["samples"] == 2 and result["protocol"]["max_clicks"] == MAX_CLICKS
    for t in (80, 85, 90):
        nocs = [number_of_clicks(s["ious"], t / 100, MAX_CLICKS) for s in result["samples"]]
        assert metrics[f"noc@{t}"]["mean"] == pytest.approx(np.mean(nocs))
        assert metrics[f"noc@{t}"]["std"] == pytest.approx(np.std(nocs))
    assert metrics[">=2@85"] == sum(number_of_clicks(s["ious"], 0.85, 2) == 2
                                    for s in result["samples"])
    assert metrics["clicks"] == sum(len(s["ious"]) for s in result["samples"])
    assert metrics["seconds_per_click"] > 0 and result["peak_memory_mb"] > 0
    assert len(metrics["mean_iou_per_click"]) == MAX_CLICKS
    assert (out / "noc_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_only_last_object_like_the_reference_script(tmp_path, trained_checkpoint, reference):
    images, masks = tmp_path / "img", tmp_path / "msk"
    images.mkdir()
    masks.mkdir()
    labels = reference["case1_gt"].astype(np.uint8)
    labels[:8, :8] = 2
    _write_png(images / "a.png", reference["case1_image"])
    _write_png(masks / "a.png", labels)
    out = tmp_path / "out"
    code = main(["evaluate-clicks", "--model", str(trained_checkpoint), "--images", str(images),
                 "--masks", str(masks), "--objects", "last", "--max-clicks", "1", "--no-flip",
                 "--device", "cpu", "--precision", "float16", "--out", str(out)])
    assert code == 0
    result = json.loads((out / "results.json").read_text())
    assert [s["name"] for s in result["samples"]] == ["a.png#2"]
    # float16 autocast applies on CUDA only: the file says what ran
    assert (result["device"], result["precision"]) == ("cpu", "float32")


def test_volume_slices(tmp_path, trained_checkpoint, reference):
    import SimpleITK as sitk

    image = reference["case0_image"][:, :, 0]
    gt = reference["case0_gt"].astype(np.uint8)
    volume = np.stack([image, image, image]).astype(np.int16) * 3 - 50
    labels = np.stack([gt, np.zeros_like(gt), gt])
    sitk.WriteImage(sitk.GetImageFromArray(volume), str(tmp_path / "v.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(labels), str(tmp_path / "l.nii.gz"))
    out = tmp_path / "out"
    code = main(["evaluate-clicks", "--model", str(trained_checkpoint),
                 "--volume", str(tmp_path / "v.nii.gz"), "--labels", str(tmp_path / "l.nii.gz"),
                 "--axis", "k", "--slices", "1-2", "--max-clicks", "1", "--no-flip",
                 "--device", "cpu", "--out", str(out)])
    assert code == 0
    result = json.loads((out / "results.json").read_text())
    # of the chosen slices 1 and 2, only slice 2 holds the object
    assert [s["name"] for s in result["samples"]] == ["v.nii.gz:axis0:2#1"]
    # the first click depends on the ground truth alone
    assert result["samples"][0]["clicks"][0] == reference["case0_clicks"][0].tolist()
    assert not result["protocol"]["flip"]


def test_bad_arguments_give_a_message_and_exit_code_1(tmp_path, trained_checkpoint, capsys):
    code = main(["evaluate-clicks", "--model", str(trained_checkpoint), "--device", "cpu"])
    assert code == 1 and "Nothing to evaluate" in capsys.readouterr().err
    (tmp_path / "img").mkdir()
    code = main(["evaluate-clicks", "--model", str(trained_checkpoint),
                 "--images", str(tmp_path / "img"), "--device", "cpu"])
    assert code == 1 and "annotations" in capsys.readouterr().err


def test_dataset_root_found_at_top_or_one_folder_down(tmp_path):
    from isegformer.evaluation.samples import find_png_folders

    for root in (tmp_path / "flat", tmp_path / "zip" / "OAI-ZIB"):
        (root / "test" / "image").mkdir(parents=True)
        (root / "test" / "annotations").mkdir(parents=True)
    assert find_png_folders(tmp_path / "flat", None) == (
        tmp_path / "flat" / "test" / "image", tmp_path / "flat" / "test" / "annotations")
    assert find_png_folders(tmp_path / "zip", None)[1] == (
        tmp_path / "zip" / "OAI-ZIB" / "test" / "annotations")
