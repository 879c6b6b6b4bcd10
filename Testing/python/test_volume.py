"""Volumes: reading real files with the right geometry, LPS/RAS, slices, label-grid checks, windows."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from isegformer.errors import FileFormatError, InvalidInputError
from isegformer.propagation.base import frames_along_axis
from isegformer.volume import Volume, read_label_map, read_volume, write_volume
from isegformer.volume import geometry, intensity, slicing


def _sitk_ras(image: sitk.Image, ijk) -> np.ndarray:
    x, y, z = image.TransformContinuousIndexToPhysicalPoint([float(v) for v in ijk])
    return np.array([-x, -y, z])  # ITK is LPS


def _check_against_sitk(volume: Volume, image: sitk.Image) -> None:
    size = image.GetSize()
    corners = [(0, 0, 0), (size[0] - 1, 0, 0), (0, size[1] - 1, 0), (0, 0, size[2] - 1),
               (size[0] - 1, size[1] - 1, size[2] - 1), (1.5, 2.25, 0.75)]
    for ijk in corners:
        np.testing.assert_allclose(volume.ijk_to_ras_points(ijk), _sitk_ras(image, ijk), atol=1e-6)
        np.testing.assert_allclose(volume.ras_to_ijk_points(_sitk_ras(image, ijk)), ijk, atol=1e-6)
    # Array index (k, j, i) is ITK's index (i, j, k) reversed.
    arr = sitk.GetArrayFromImage(image)
    i, j, k = size[0] // 3, size[1] // 2, size[2] - 1
    assert volume.array[k, j, i] == arr[k, j, i] == image.GetPixel(i, j, k)


@pytest.mark.data
def test_dicom_series_geometry(data_dir: Path):
    folder = data_dir / "knee_dess_dicom"
    volume = read_volume(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    assert volume.shape == (80, 512, 512)
    assert volume.size_ijk == image.GetSize()
    np.testing.assert_allclose(volume.spacing, image.GetSpacing(), rtol=1e-9)
    _check_against_sitk(volume, image)


@pytest.mark.data
@pytest.mark.parametrize("relative", [
    "oaizib_label/9092628_label.nii.gz",          # oblique direction
    "radiomics_brain/brain1_label.nrrd",          # NRRD, flipped j axis
    "knee_template/CLAIR-Knee-103R_segmentation_64x128x128.nii.gz",
])
def test_nifti_and_nrrd_geometry(data_dir: Path, relative: str):
    path = data_dir / relative
    volume = read_volume(path)
    image = sitk.ReadImage(str(path))
    _check_against_sitk(volume, image)
    np.testing.assert_allclose(volume.origin_lps, image.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(volume.direction_lps.reshape(-1), image.GetDirection(), atol=1e-9)


@pytest.mark.data
def test_nrrd_ras_matches_header_space(data_dir: Path):
    """The NRRD header (read independently with pynrrd) and our IJK->RAS agree."""
    nrrd = pytest.importorskip("nrrd")
    path = data_dir / "radiomics_brain" / "brain1_label.nrrd"
    _, header = nrrd.read(str(path))
    directions = np.asarray(header["space directions"], dtype=float)  # rows: world vector of axis i, j, k
    origin = np.asarray(header["space origin"], dtype=float)
    flip = np.array([-1.0, -1.0, 1.0]) if header["space"] in ("left-posterior-superior",) else np.ones(3)
    volume = read_volume(path)
    np.testing.assert_allclose(volume.ijk_to_ras[:3, :3], (directions * flip).T, atol=1e-6)
    np.testing.assert_allclose(volume.ijk_to_ras[:3, 3], origin * flip, atol=1e-6)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_write_read_round_trip(tmp_path: Path, suffix: str):
    rng = np.random.default_rng(0)
    direction = geometry.ijk_to_ras_matrix((10.0, -20.0, 5.0), (0.5, 0.7, 2.0),
                                           (0, 0, -1, 1, 0, 0, 0, -1, 0))
    volume = Volume(rng.integers(0, 1000, size=(4, 5, 6)).astype(np.int16), direction)
    out = write_volume(volume, tmp_path / f"v{suffix}")
    back = read_volume(out)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.ijk_to_ras, volume.ijk_to_ras, atol=1e-5)
    volume.check_label_map(back)


def test_sitk_round_trip_and_geometry_inverse():
    matrix = geometry.ijk_to_ras_matrix((1.0, 2.0, 3.0), (0.3, 0.4, 1.5), (1, 0, 0, 0, 0, 1, 0, -1, 0))
    volume = Volume(np.zeros((3, 4, 5), np.uint8), matrix)
    image = volume.to_sitk()
    assert image.GetSize() == (5, 4, 3)
    np.testing.assert_allclose(image.GetOrigin(), (1.0, 2.0, 3.0))
    np.testing.assert_allclose(image.GetSpacing(), (0.3, 0.4, 1.5))
    np.testing.assert_allclose(image.GetDirection(), (1, 0, 0, 0, 0, 1, 0, -1, 0), atol=1e-12)
    assert np.allclose(Volume.from_sitk(image).ijk_to_ras, matrix)
    # RAS is LPS with x and y negated.
    assert np.allclose(geometry.lps_to_ras([1.0, 2.0, 3.0]), [-1.0, -2.0, 3.0])
    assert geometry.ijk_to_array_index([4.6, 1.2, 2.0]) == (2, 1, 5)


def _volume(shape=(4, 5, 6), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0),
            direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> Volume:
    return Volume(np.zeros(shape, np.float32), geometry.ijk_to_ras_matrix(origin, spacing, direction))


@pytest.mark.parametrize("label, word", [
    (_volume(shape=(4, 5, 7)), "shape"),
    (_volume(spacing=(1.0, 1.0, 2.5)), "spacing"),
    (_volume(origin=(0.0, 0.5, 0.0)), "origin"),
    # the same axes reversed around the same origin: the voxels lie beside the volume
    (_volume(direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1)), "outside the volume"),
    (_volume(direction=(0.8, 0.6, 0, -0.6, 0.8, 0, 0, 0, 1)), "oriented differently"),
    (_volume(origin=(0.0, 0.0, 4.0)), "outside the volume"),  # one slice past the end
])
def test_label_map_on_another_grid_is_refused(label: Volume, word: str):
    with pytest.raises(InvalidInputError, match=word):
        _volume().check_label_map(label)


def test_label_map_within_tolerance_is_accepted():
    _volume().check_label_map(_volume(origin=(0.0, 1e-5, 0.0), spacing=(1.0, 1.0 + 1e-6, 2.0)))


@pytest.mark.data
def test_read_label_map_on_another_grid(data_dir: Path):
    brain = read_volume(data_dir / "brats" / "pat0001" / "Flair_subtrMeanDivStd.nii.gz")
    read_label_map(data_dir / "brats" / "pat0001" / "OTMultiClass.nii.gz", brain)
    with pytest.raises(InvalidInputError, match="spacing"):
        read_label_map(data_dir / "radiomics_brain" / "brain1_label.nrrd", brain)


def test_2d_and_4d_are_refused(tmp_path: Path):
    with pytest.raises(InvalidInputError, match="3D"):
        Volume(np.zeros((4, 5)), np.eye(4))
    with pytest.raises(InvalidInputError, match="3D"):
        Volume(np.zeros((2, 3, 4, 5)), np.eye(4))
    sitk.WriteImage(sitk.Image([8, 9], sitk.sitkUInt8), str(tmp_path / "flat.nrrd"))
    with pytest.raises(InvalidInputError, match="2D"):
        read_volume(tmp_path / "flat.nrrd")
    sitk.WriteImage(sitk.Image([3, 4, 5, 2], sitk.sitkFloat32), str(tmp_path / "series.nii.gz"))
    with pytest.raises(InvalidInputError, match="4D"):
        read_volume(tmp_path / "series.nii.gz")


def test_missing_and_bad_files(tmp_path: Path):
    with pytest.raises(InvalidInputError, match="No such file"):
        read_volume(tmp_path / "absent.nii.gz")
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not an image")
    with pytest.raises(FileFormatError):
        read_volume(junk)
    with pytest.raises(FileFormatError, match="no DICOM"):
        read_volume(tmp_path)


def test_slices_match_frames_and_ijk():
    array = np.arange(3 * 4 * 5).reshape(3, 4, 5)
    for axis in range(3):
        frames = frames_along_axis(array, axis)
        for index in range(array.shape[axis]):
            np.testing.assert_array_equal(slicing.extract_slice(array, axis, index), frames[index])
    # The point (slice index, row, col) names the voxel whose array value we read.
    for axis in range(3):
        index, row, col = 1, 2, 3
        ijk = slicing.slice_point_to_ijk(axis, index, row, col)
        k, j, i = geometry.ijk_to_array_index(ijk)
        assert array[k, j, i] == slicing.extract_slice(array, axis, index)[row, col]
        assert slicing.ijk_to_slice_point(axis, ijk) == (index, row, col)
    # Spacing (i, j, k) = (0.5, 0.7, 2.0): rows/cols are (j, i), (k, i), (k, j).
    assert [slicing.slice_spacing((0.5, 0.7, 2.0), axis) for axis in range(3)] == [
        (0.7, 0.5), (2.0, 0.5), (2.0, 0.7)]
    out = np.zeros((3, 4, 5), np.uint8)
    slicing.insert_slice(out, 2, 4, np.ones((3, 4), np.uint8))
    assert out[:, :, 4].all() and out.sum() == 12
    with pytest.raises(InvalidInputError, match="shape"):
        slicing.insert_slice(out, 2, 4, np.ones((4, 3), np.uint8))
    with pytest.raises(InvalidInputError, match="outside"):
        slicing.extract_slice(out, 0, 3)
    with pytest.raises(InvalidInputError, match="Axis"):
        slicing.extract_slice(out, 3, 0)


def test_intensity_window():
    rng = np.random.default_rng(1)
    volume = rng.normal(size=(20, 30, 30)).astype(np.float32)
    volume[0, 0, 0] = 1e6  # one outlier must not squash the rest
    low, high = intensity.robust_window(volume)
    assert high < 10
    scaled = intensity.normalize(volume)
    assert scaled.dtype == np.float32 and scaled.min() == 0.0 and scaled.max() == 1.0
    assert 0.4 < float(np.median(scaled)) < 0.6
    window = intensity.normalize(np.array([[[0.0, 50.0, 100.0, 200.0]]]), window=(0.0, 100.0))
    np.testing.assert_allclose(window.ravel(), [0.0, 0.5, 1.0, 1.0])
    rgb = intensity.gray_to_rgb(scaled[3])
    assert rgb.shape == (30, 30, 3) and np.array_equal(rgb[..., 2], scaled[3])
    # Mostly constant with a small object: falls back to min/max instead of dividing by zero.
    sparse = np.zeros((20, 20, 20), np.float32)
    sparse[5, 5, 5] = 3.0
    assert intensity.robust_window(sparse) == (0.0, 3.0)


@pytest.mark.parametrize("array, word", [
    (np.full((3, 3, 3), 7.0), "constant"),
    (np.array([[[np.nan, 1.0, 2.0]]]), "NaN"),
    (np.zeros((0, 3, 3)), "empty"),
])
def test_intensity_bad_volumes(array: np.ndarray, word: str):
    with pytest.raises(InvalidInputError, match=word):
        intensity.normalize(array)


# --- DICOM series: every slice where its file says it is (issue 12, item 6) -------------------
def _series_voxels(count=12):
    return np.random.default_rng(0).integers(0, 1000, (count, 16, 20)).astype(np.int16)


def test_dicom_series_loads_each_slice_at_its_position(tmp_path: Path):
    from dicom_testkit import write_dicom_series

    voxels = _series_voxels()
    write_dicom_series(tmp_path / "series", voxels, spacing=(0.5, 0.6, 1.5), origin_lps=(10.0, -20.0, 30.0))
    volume = read_volume(tmp_path / "series")
    np.testing.assert_array_equal(volume.array, voxels)
    np.testing.assert_allclose(volume.spacing, (0.5, 0.6, 1.5), atol=1e-9)
    np.testing.assert_allclose(volume.origin_lps, (10.0, -20.0, 30.0), atol=1e-9)


def test_dicom_series_with_a_missing_slice_is_refused(tmp_path: Path):
    """ITK reads the 11 slices left as one volume 1.65 mm apart (only a warning on stderr), so
    slices 6..11 would sit up to 0.75 mm from their true positions."""
    from dicom_testkit import write_dicom_series

    files = write_dicom_series(tmp_path / "series", _series_voxels(), spacing=(0.5, 0.6, 1.5))
    files[5].unlink()
    with pytest.raises(FileFormatError, match="not evenly spaced") as caught:
        read_volume(tmp_path / "series")
    message = str(caught.value)
    assert "slice004.dcm and slice006.dcm are 3 mm apart" in message
    assert "1.5 mm apart" in message and "0.75 mm" in message


def test_dicom_positions_rounded_in_the_files_still_load(tmp_path: Path):
    """Scanners write ImagePositionPatient with a few decimals: 0.002 mm off is no gap."""
    from dicom_testkit import write_dicom_series

    voxels = _series_voxels(8)
    positions = [(10.0, -20.0, 30.0 + 1.5 * k + (0.002 if k % 2 else 0.0)) for k in range(8)]
    write_dicom_series(tmp_path / "series", voxels, spacing=(0.5, 0.6, 1.5), positions_lps=positions)
    np.testing.assert_array_equal(read_volume(tmp_path / "series").array, voxels)


# --- label values: checked before any cast (issue 12, item 7) ---------------------------------
def _grid_volume(shape=(4, 5, 6)) -> Volume:
    return Volume(np.zeros(shape, np.int16), geometry.ijk_to_ras_matrix((1.0, 2.0, 3.0), (0.5, 0.75, 2.0),
                                                                       (1, 0, 0, 0, 1, 0, 0, 0, 1)))


@pytest.mark.parametrize("value", [2**32 + 1, 2**31, -1])
def test_label_values_that_do_not_fit_are_refused_by_every_label_reader(tmp_path: Path, value: int):
    from isegformer.finetune.data import slices_from_volume
    from isegformer.output.labelmap import read_label_map as read_label_array
    from isegformer.output.seg_nrrd import read_seg_nrrd
    from isegformer.session import Session

    volume = _grid_volume()
    labels = np.zeros(volume.shape, np.int64)
    labels[1, 1:3, 1:4] = value
    volume_path = write_volume(volume, tmp_path / "v.nrrd")
    label_path = write_volume(volume, tmp_path / "l.nrrd", labels)
    assert sitk.ReadImage(str(label_path)).GetPixelID() == sitk.sitkInt64  # the file holds the value
    with pytest.raises(InvalidInputError, match="label values"):
        read_label_map(label_path, volume)
    with pytest.raises(InvalidInputError, match="label values"):
        read_label_array(label_path, volume)
    with pytest.raises(InvalidInputError, match="label values"):
        slices_from_volume(volume_path, label_path, slices="all", min_area=1)
    session = Session.open(volume)
    with pytest.raises(InvalidInputError, match="label values"):
        session.annotate_from_label_map(labels)
    with pytest.raises(InvalidInputError, match="label values"):
        session.annotate_from_label_map(volume.with_array(labels))
    assert session.segments == []
    plain = write_volume(volume, tmp_path / "plain.seg.nrrd", labels)  # a label map named .seg.nrrd
    with pytest.raises(InvalidInputError, match="label values"):
        read_seg_nrrd(plain)


def test_wide_label_types_with_small_values_are_read():
    from isegformer.volume.labels import as_label_array

    labels = np.array([[[0, 1, 2**31 - 1]]], np.int64)
    out = as_label_array(labels)
    assert out.dtype == np.int32 and out.tolist() == labels.tolist()
    assert as_label_array(np.array([[[0.0, 3.0]]], np.float32)).tolist() == [[[0, 3]]]
    with pytest.raises(InvalidInputError, match="fractional"):
        as_label_array(np.array([[[0.5]]]))
    with pytest.raises(InvalidInputError, match="NaN"):
        as_label_array(np.array([[[np.nan]]]))


# --- the same voxels in another layout (issue 12, item 11) -------------------------------------
def _world_index_map(source: Volume, reference: Volume) -> dict:
    """For every source voxel, the reference voxel at the same RAS point (by the matrices alone)."""
    k, j, i = np.indices(source.shape).reshape(3, -1)
    ras = source.ijk_to_ras_points(np.stack([i, j, k], axis=1).astype(float))
    ijk = np.rint(reference.ras_to_ijk_points(ras)).astype(int)
    return {(a, b, c): (z, y, x) for a, b, c, (x, y, z) in zip(k, j, i, ijk)}


@pytest.mark.parametrize("layout", ["k reversed (Slicer's left-handed grid)", "i and j swapped", "all reversed"])
def test_label_map_in_another_layout_of_the_same_voxels_is_placed_exactly(tmp_path: Path, layout: str):
    volume = _grid_volume()
    truth = np.random.default_rng(1).integers(0, 4, volume.shape).astype(np.uint8)
    matrix = volume.ijk_to_ras.copy()
    K, J, I = volume.shape
    if layout.startswith("k reversed"):
        matrix[:3, 2] *= -1
        matrix[:3, 3] = volume.ijk_to_ras_points([0, 0, K - 1])
        stored = truth[::-1]
    elif layout == "i and j swapped":
        matrix[:3, [0, 1]] = matrix[:3, [1, 0]]
        stored = np.transpose(truth, (0, 2, 1))
    else:
        matrix[:3, :3] *= -1
        matrix[:3, 3] = volume.ijk_to_ras_points([I - 1, J - 1, K - 1])
        stored = truth[::-1, ::-1, ::-1]
    label = Volume(np.ascontiguousarray(stored), matrix)
    # the layouts are the same voxels: every stored voxel has the truth's value at its RAS point
    for source, target in _world_index_map(label, volume).items():
        assert label.array[source] == truth[target]
    path = write_volume(label, tmp_path / "l.nrrd")
    np.testing.assert_array_equal(read_label_map(path, volume).array, truth)
    np.testing.assert_array_equal(volume.label_on_grid(label).array, truth)
    with pytest.raises(InvalidInputError, match="another layout"):
        volume.check_label_map(label)  # its array alone would be read wrongly


def test_label_map_covering_part_of_the_volume_is_refused(tmp_path: Path):
    volume = _grid_volume()
    part = Volume(np.ones((2, 5, 6), np.uint8), volume.ijk_to_ras)
    with pytest.raises(InvalidInputError, match="covers only part"):
        read_label_map(write_volume(part, tmp_path / "part.nrrd"), volume)


def test_dicom_series_sheared_by_a_gantry_tilt_is_refused(tmp_path: Path):
    """Evenly spaced slices shifted 0.5 mm in y each: ITK stacks them along z as if upright."""
    from dicom_testkit import write_dicom_series

    positions = [(10.0, -20.0 + 0.5 * k, 30.0 + 1.5 * k) for k in range(8)]
    write_dicom_series(tmp_path / "series", _series_voxels(8), spacing=(0.5, 0.6, 1.5), positions_lps=positions)
    with pytest.raises(FileFormatError, match="gantry tilt"):
        read_volume(tmp_path / "series")
