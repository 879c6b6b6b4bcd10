"""The segmentation session on a real volume: clicks, propagation, undo/redo, files, bad input."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from isegformer.errors import FileFormatError, InvalidInputError, SessionFileError
from isegformer.output.atomic import OutputPathError
from isegformer.propagation.base import Propagator, frames_along_axis
from isegformer.session import Session
from isegformer.volume import Volume, write_volume
from session_testkit import brats_crop, single_torch_thread, tiny_predictor

pytestmark = pytest.mark.data

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

one_torch_thread = pytest.fixture(scope="module", autouse=True)(single_torch_thread)


@pytest.fixture(scope="module")
def predictor(golden_dir):
    return tiny_predictor(golden_dir)


@pytest.fixture(scope="module")
def volume_and_labels(data_dir):
    return brats_crop(data_dir)


@pytest.fixture
def volume(volume_and_labels):
    return volume_and_labels[0]


@pytest.fixture
def session(volume, predictor):
    return Session.open(volume, click_model=predictor)


def tumour_point(labels: np.ndarray, k: int) -> tuple[int, int]:
    """(j, i) of a tumour voxel on slice k, the one nearest the tumour's centre there."""
    points = np.argwhere(labels[k] > 0)
    centre = points.mean(axis=0)
    return tuple(int(v) for v in points[np.argmin(((points - centre) ** 2).sum(axis=1))])


class ConstantPropagator(Propagator):
    """A deliberately bad propagator: says 'object' everywhere, annotated frames included."""

    name = "constant"

    def __init__(self, frames: int, shape, log):
        self._t, self._shape, self._annotated, self._log = frames, tuple(shape), {}, log

    num_frames = property(lambda self: self._t)
    num_objects = property(lambda self: 1)
    annotated = property(lambda self: dict(self._annotated))

    @property
    def probabilities(self):
        probs = np.zeros((2, self._t) + self._shape, np.float32)
        probs[1] = 1.0
        return probs

    def annotate(self, index, label_map, progress=None):
        self._log.append(index)
        self._annotated[index] = label_map
        return self.probabilities


def constant_factory(log):
    def factory(method, volume, axis, num_objects, **kwargs):
        frames = frames_along_axis(volume, axis)
        return ConstantPropagator(frames.shape[0], frames.shape[1:], log)

    return factory


# --------------------------------------------------------------------------------- clicks


def test_ras_click_lands_on_the_right_voxel_of_each_axis(session, volume):
    k, j, i = 5, 20, 31
    ras = volume.ijk_to_ras @ np.array([i, j, k, 1.0])
    session.add_segment("tumour")
    session.click(ras[:3], positive=True, axis=0)
    (click,) = session.segment("tumour").annotation(0, k).clicks
    assert (click.row, click.col) == (j, i)
    session.click(ras[:3], positive=True, axis=2)
    (click,) = session.segment("tumour").annotation(2, i).clicks
    assert (click.row, click.col) == (k, j)


def test_click_mask_is_the_click_engines_mask_for_that_slice(session, volume, predictor):
    from isegformer.click_engine.session import ClickSession

    mask = session.click_slice(0, 6, 24.0, 20.0, positive=True)
    direct = ClickSession(predictor, volume.array[6], window=session.window)
    _, expected = direct.add_click(24.0, 20.0, True)
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(session.segment_mask()[6], expected)
    assert not session.segment_mask()[5].any()  # nothing propagated yet


def test_first_click_without_segment_creates_one_and_undo_removes_it(session):
    session.click_slice(0, 3, 10, 10)
    assert [s.name for s in session.segments] == ["Segment_1"]
    assert session.undo() is not None
    assert session.segments == [] and not session.can_undo


# --------------------------------------------------------------------------------- undo/redo


def test_undo_redo_of_clicks_and_propagation(session, volume):
    session.add_segment("tumour")
    first = session.click_slice(0, 4, 20, 20, True)
    second = session.click_slice(0, 4, 5, 5, False)
    session.click_slice(0, 8, 22, 25, True)
    propagated = session.propagate(method="interpolation").copy()
    assert propagated[5:8].any()  # interpolation filled the slices between the annotations

    assert session.undo().startswith("propagate")
    assert session.segment("tumour").propagated is None
    session.undo()
    assert session.annotated_slices() == [4]
    session.undo()
    np.testing.assert_array_equal(session.segment_mask()[4], first)
    assert len(session.segment("tumour").annotation(0, 4).clicks) == 1

    session.redo()
    np.testing.assert_array_equal(session.segment_mask()[4], second)
    session.redo()
    session.redo()
    np.testing.assert_array_equal(session.segment_mask(), propagated)
    assert not session.can_redo

    # a click after an undo continues from the undone state (the click engine is in step)
    session.undo()
    session.undo()
    session.undo()
    again = session.click_slice(0, 4, 5, 5, False)
    np.testing.assert_array_equal(again, second)


def test_new_action_after_undo_forgets_redo(session):
    session.add_segment("a")
    session.click_slice(0, 2, 10, 10)
    session.undo()
    session.set_slice_mask(0, 2, np.ones((48, 48), bool))
    assert not session.can_redo


# --------------------------------------------------------------------------------- propagation


def test_propagation_never_overwrites_annotated_slices_or_other_segments(session, volume_and_labels):
    labels = volume_and_labels[1]
    calls: list[int] = []
    session = Session.open(session.volume, click_model=session.predictor, propagator_factory=constant_factory(calls))
    session.add_segment("other")
    session.set_slice_mask(0, 1, labels[1] > 0)
    other_before = session.segment_mask("other")

    session.add_segment("tumour")
    drawn = np.zeros((48, 48), bool)
    drawn[10:20, 10:30] = True
    session.set_slice_mask(0, 3, drawn)
    clicked = session.click_slice(0, 7, 24, 24, True)
    result = session.propagate(method="constant")

    np.testing.assert_array_equal(result[3], drawn)  # the propagator said "everywhere"
    np.testing.assert_array_equal(result[7], clicked)
    assert result[0].all() and result[10].all()  # elsewhere the propagator's answer is used
    np.testing.assert_array_equal(session.segment_mask("other"), other_before)
    assert session.segment("other").propagated is None

    # a correction recomputes from that annotation only (the propagator is kept)
    calls.clear()
    session.set_slice_mask(0, 5, drawn)
    session.propagate(method="constant")
    assert calls == [5]
    # undoing the correction removes an annotation the propagator holds: it starts over
    session.undo()
    session.undo()
    calls.clear()
    session.propagate(method="constant")
    assert sorted(calls) == [3, 7]


def test_interpolation_between_annotated_slices_along_another_axis(session, volume_and_labels):
    labels = volume_and_labels[1]
    session.add_segment("tumour")
    names = session.annotate_from_label_map((labels > 0).astype(np.uint8), axis=2, indices=[14, 34])
    assert names == [14, 34]
    result = session.propagate(method="interpolation")
    np.testing.assert_array_equal(result[:, :, 14], labels[:, :, 14] > 0)
    assert result[:, :, 24].any() and not result[:, :, 40].any()
    assert session.segment("tumour").propagation_axis == 2


@pytest.mark.golden
def test_stcn_propagation_with_formula_weights(volume, predictor, golden_dir, weights_formula):
    import torch

    manifest = json.loads((golden_dir / "manifest_stcn.json").read_text())
    weights = {k: torch.from_numpy(np.asarray(v)) for k, v in weights_formula.fill(manifest).items()}
    session = Session.open(volume, click_model=predictor, stcn_weights=weights, device="cpu")
    session.add_segment("tumour")
    drawn = np.zeros((48, 48), bool)
    drawn[14:30, 12:34] = True
    session.set_slice_mask(0, 5, drawn)
    steps = []
    result = session.propagate(progress=lambda done, total, message: steps.append((done, total)))
    assert result.shape == volume.shape and result.dtype == bool
    np.testing.assert_array_equal(result[5], drawn)
    assert steps and steps[-1][0] == steps[-1][1]


def test_cancelled_propagation_leaves_the_segment_as_it_was(session):
    from isegformer.errors import CancelledError

    session.add_segment("tumour")
    session.set_slice_mask(0, 2, np.pad(np.ones((8, 8), bool), 20))
    session.set_slice_mask(0, 9, np.pad(np.ones((10, 10), bool), 19))
    labels_before = session.history.undo_labels

    def cancel(done, total, message):
        if done > 2:
            raise CancelledError("stop")

    with pytest.raises(CancelledError):
        session.propagate(method="interpolation", progress=cancel)
    assert session.segment("tumour").propagated is None
    assert session.history.undo_labels == labels_before
    assert session.propagate(method="interpolation")[5].any()  # and it still works afterwards


# --------------------------------------------------------------------------------- files


def test_segmentation_file_reads_in_slicerio_with_the_volumes_geometry(session, volume, tmp_path):
    slicerio = pytest.importorskip("slicerio")
    session.add_segment("tumour", color=(0.9, 0.2, 0.1))
    session.click_slice(0, 6, 24, 24, True)
    session.add_segment("background")
    session.set_slice_mask(0, 2, np.eye(48, dtype=bool))
    path = session.save_segmentation(tmp_path / "s.seg.nrrd")

    seg = slicerio.read_segmentation(str(path))
    np.testing.assert_allclose(LPS_TO_RAS @ seg["ijkToLPS"], volume.ijk_to_ras, atol=1e-9)
    assert [s["name"] for s in seg["segments"]] == ["tumour", "background"]
    np.testing.assert_allclose(seg["segments"][0]["color"], [0.9, 0.2, 0.1], atol=1e-6)
    for name in ("tumour", "background"):
        mask = np.transpose(slicerio.segment_mask(seg, name), (2, 1, 0))
        np.testing.assert_array_equal(mask, session.segment_mask(name))


def test_clicks_file_replays_to_the_same_result(session, volume, volume_and_labels, predictor, tmp_path):
    labels = volume_and_labels[1]
    session.add_segment("tumour")
    j, i = tumour_point(labels, 6)
    session.click(volume.ijk_to_ras_points(np.array([i, j, 6.0])), positive=True)
    session.click_slice(0, 6, 2.4, 3.7, positive=False)
    session.add_segment("edge")
    session.click_slice(1, 30, 5, 12, positive=True)
    session.click_slice(0, 6, 40, 40, positive=True, segment="tumour")
    path = session.save_clicks(tmp_path / "clicks.mrk.json")

    replay = Session.open(volume, click_model=predictor)
    assert replay.load_clicks(path) == 4
    assert [s.name for s in replay.segments] == ["tumour", "edge"]
    for name in ("tumour", "edge"):
        np.testing.assert_array_equal(replay.segment_mask(name), session.segment_mask(name))
    np.testing.assert_array_equal(replay.label_map(), session.label_map())
    # the whole replay is one undo step
    replay.undo()
    assert replay.segments == []


def test_save_and_load_round_trip(session, volume, predictor, tmp_path):
    session.add_segment("tumour", color=(0.1, 0.2, 0.3))
    session.click_slice(0, 3, 20, 20, True)
    session.set_slice_mask(0, 9, np.pad(np.ones((6, 6), bool), 21))
    session.propagate(method="interpolation")
    session.add_segment("other")
    session.click_slice(2, 10, 4, 30, False)
    path = session.save(tmp_path / "work.isegsession")

    loaded = Session.load(path, click_model=predictor)
    assert [s.name for s in loaded.segments] == ["tumour", "other"]
    assert loaded.segment("tumour").color == (0.1, 0.2, 0.3)
    np.testing.assert_array_equal(loaded.label_map(), session.label_map())
    np.testing.assert_array_equal(loaded.volume.array, volume.array)
    np.testing.assert_allclose(loaded.volume.ijk_to_ras, volume.ijk_to_ras)
    assert loaded.segment("tumour").annotation(0, 3).clicks == session.segment("tumour").annotation(0, 3).clicks
    assert loaded.segment("tumour").propagation_axis == 0

    # work continues where it stopped: the next click matches the original session's
    expected = session.click_slice(0, 3, 30, 30, False, segment="tumour")
    np.testing.assert_array_equal(loaded.click_slice(0, 3, 30, 30, False, segment="tumour"), expected)

    small = session.save(tmp_path / "small.isegsession", include_volume=False)
    assert small.stat().st_size < path.stat().st_size
    with pytest.raises(SessionFileError, match="without its volume"):
        Session.load(small)
    again = Session.load(small, volume=volume, click_model=predictor)
    np.testing.assert_array_equal(again.label_map(), session.label_map())
    other = Volume(volume.array + 1.0, volume.ijk_to_ras)
    with pytest.raises(SessionFileError, match="not the one"):
        Session.load(small, volume=other)


def test_session_saved_without_volume_reopens_its_source_file(volume, predictor, tmp_path):
    source = write_volume(volume, tmp_path / "v.nii.gz")
    session = Session.open(source, click_model=predictor)
    session.add_segment("a")
    session.set_slice_mask(0, 1, np.ones((48, 48), bool))
    path = session.save(tmp_path / "s.isegsession", include_volume=False)
    np.testing.assert_array_equal(Session.load(path).label_map(), session.label_map())


def test_overlay_png_is_written(session, tmp_path):
    from skimage import io

    session.add_segment("tumour")
    session.click_slice(0, 6, 24, 24, True)
    session.set_slice_mask(0, 2, np.pad(np.ones((10, 10), bool), 19))
    path = session.save_overlay(tmp_path / "o.png")
    image = io.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 50  # not blank


# --------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("shape", [(48, 48), (2, 4, 8, 8)])
def test_2d_and_4d_volumes_are_refused(shape):
    with pytest.raises(InvalidInputError, match="3D"):
        Session.open((np.zeros(shape, np.float32), np.eye(4)))


def test_4d_file_is_refused(tmp_path):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.random.default_rng(0).random((2, 3, 8, 8)).astype(np.float32), isVector=False)
    sitk.WriteImage(image, str(tmp_path / "v4.nii.gz"))
    with pytest.raises(InvalidInputError, match="3D"):
        Session.open(tmp_path / "v4.nii.gz")


def test_label_map_on_another_grid_is_refused_and_changes_nothing(session, volume, tmp_path):
    session.add_segment("a")
    before = session.history.undo_labels
    shifted = Volume(np.ones(volume.shape, np.uint8), volume.ijk_to_ras @ np.diag([1.0, 1.0, 2.0, 1.0]))
    path = write_volume(shifted, tmp_path / "l.nii.gz")
    with pytest.raises(InvalidInputError, match="spacing"):
        session.annotate_from_label_map(path)
    with pytest.raises(InvalidInputError, match="another grid"):
        session.annotate_from_label_map(np.ones((12, 48, 47), np.uint8))
    with pytest.raises(InvalidInputError):
        session.set_slice_mask(0, 1, np.ones((47, 48), bool))
    assert session.history.undo_labels == before and not session.segment("a").has_annotations


def test_clicks_outside_the_volume_are_refused_and_change_nothing(session, volume):
    outside = volume.ijk_to_ras @ np.array([10.0, 10.0, 12.6, 1.0])  # k rounds to 13 of 0..11
    with pytest.raises(InvalidInputError, match="outside the volume"):
        session.click(outside[:3])
    with pytest.raises(InvalidInputError, match="outside"):
        session.click_slice(0, 3, 48.0, 3)
    with pytest.raises(InvalidInputError, match="outside"):
        session.click_slice(0, 12, 3, 3)
    assert session.segments == [] and not session.can_undo


def test_clicks_file_with_a_point_outside_changes_nothing(session, volume, tmp_path):
    session.add_segment("a")
    session.click_slice(0, 2, 10, 10)
    inside = volume.ijk_to_ras @ np.array([5.0, 5.0, 5.0, 1.0])
    outside = volume.ijk_to_ras @ np.array([5.0, 500.0, 5.0, 1.0])
    from isegformer.output.markups import ClickPoint, write_clicks

    path = write_clicks(tmp_path / "c.mrk.json", [ClickPoint(tuple(inside[:3])), ClickPoint(tuple(outside[:3]))])
    labels = session.history.undo_labels
    with pytest.raises(InvalidInputError, match="Click 2"):
        session.load_clicks(path)
    assert session.history.undo_labels == labels
    assert session.segment("a").annotated_indices(0) == [2]


def test_a_file_that_is_not_markups_changes_nothing(session, tmp_path):
    bad = tmp_path / "c.mrk.json"
    bad.write_text(json.dumps({"@schema": "something-else", "markups": []}))
    with pytest.raises(FileFormatError):
        session.load_clicks(bad)
    assert session.segments == []


def test_unwritable_outputs_leave_old_files(session, tmp_path):
    session.add_segment("a")
    session.set_slice_mask(0, 1, np.ones((48, 48), bool))
    seg = session.save_segmentation(tmp_path / "s.seg.nrrd")
    old = seg.read_bytes()
    for save in (session.save_segmentation, session.save_clicks, session.save, session.save_overlay):
        with pytest.raises(OutputPathError):
            save(tmp_path / "missing-folder" / "out")
        with pytest.raises(OutputPathError):
            save(tmp_path)  # a folder, not a file
    assert seg.read_bytes() == old


def test_session_file_from_a_newer_version_is_refused(session, tmp_path):
    session.add_segment("a")
    path = session.save(tmp_path / "s.isegsession")
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    manifest = json.loads(str(arrays["manifest"]))
    manifest["version"] = 99
    arrays["manifest"] = np.array(json.dumps(manifest))
    newer = tmp_path / "newer.isegsession"
    with open(newer, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    with pytest.raises(SessionFileError, match="newer"):
        Session.load(newer)


@pytest.mark.parametrize("content", [b"junk", b""])
def test_damaged_session_files_are_refused(tmp_path, content):
    path = tmp_path / "bad.isegsession"
    path.write_bytes(content)
    with pytest.raises(SessionFileError):
        Session.load(path)
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(SessionFileError, match="not an isegformer session"):
        Session.load(other)
    assert zipfile.is_zipfile(other)


def test_few_propagators_stay_alive_and_a_dropped_one_starts_over(session):
    calls: list[int] = []
    session = Session.open(session.volume, click_model=session.predictor, propagator_factory=constant_factory(calls))
    for n, name in enumerate(["a", "b", "c"]):
        session.add_segment(name)
        session.set_slice_mask(0, n, np.ones((48, 48), bool))
        session.propagate(name, method="constant")
    assert len(session._propagators) == 2  # whole-volume state is bounded
    calls.clear()
    session.set_slice_mask(0, 5, np.ones((48, 48), bool), segment="c")
    session.propagate("c", method="constant")
    assert calls == [5]  # still alive: only the new annotation
    calls.clear()
    session.set_slice_mask(0, 6, np.ones((48, 48), bool), segment="a")
    session.propagate("a", method="constant")
    assert sorted(calls) == [0, 6]  # dropped: every annotation again


def test_remove_segment_and_undo(session):
    session.add_segment("a")
    session.set_slice_mask(0, 1, np.ones((48, 48), bool))
    session.add_segment("b")
    session.remove_segment("a")
    assert [s.name for s in session.segments] == ["b"]
    assert session.label_map().max() == 0
    session.undo()
    assert [s.name for s in session.segments] == ["a", "b"]
    assert session.label_map()[1].all()


@pytest.mark.parametrize("point", [(1.0, 2.0), (1.0, float("nan"), 3.0), "abc", None])
def test_malformed_points_are_refused(session, point):
    with pytest.raises(InvalidInputError, match="three finite numbers"):
        session.click(point)
    with pytest.raises(InvalidInputError, match="three finite numbers"):
        session.click_ijk(point)
    assert not session.can_undo


def test_dicom_folder_session_writes_on_the_series_grid(data_dir, tmp_path):
    slicerio = pytest.importorskip("slicerio")
    session = Session.open(data_dir / "knee_dess_dicom", axis=2)
    k, j, i = session.volume.shape
    drawn = np.zeros((k, j), bool)
    drawn[k // 4:k // 2, j // 3:j // 2] = True
    session.set_slice_mask(2, i // 2, drawn, segment=None)
    path = session.save_segmentation(tmp_path / "knee.seg.nrrd")
    seg = slicerio.read_segmentation(str(path))
    np.testing.assert_allclose(LPS_TO_RAS @ seg["ijkToLPS"], session.volume.ijk_to_ras, atol=1e-6)
    from isegformer.output.labelmap import read_label_map

    labels = read_label_map(path, session.volume)  # on the series' own grid
    np.testing.assert_array_equal(labels[:, :, i // 2] > 0, drawn)
    assert labels.sum() == drawn.sum()
