"""Review 6, item 8: NaN and inf read back from every NIfTI/Analyze layout ITK's reader zeroes them
in (``.hdr``/``.img`` pairs too), with the file's scl_slope/scl_inter applied as the reader applies
it, and never a voxel put back where the reader's array shows the file was read otherwise.

Files are written by SimpleITK, or their header bytes by hand where SimpleITK writes no such
field (scaling, NIfTI-2, Analyze); each expected array is computed here from the written values,
and the finite voxels are checked against SimpleITK's own read of the same file."""
from __future__ import annotations

import gzip
import shutil
import struct

import numpy as np
import pytest
import SimpleITK as sitk

from isegformer.volume import read_volume
from isegformer.volume.nifti_nonfinite import restore_nonfinite


def written_array(dtype=np.float32):
    array = np.arange(3 * 4 * 5, dtype=dtype).reshape(3, 4, 5) + 1
    array[0, 0, 0], array[1, 2, 3], array[2, 3, 4] = np.nan, np.inf, -np.inf
    return array


def write(path, array):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.5, 0.7, 2.0))
    sitk.WriteImage(image, str(path))


def scaled(array, slope, inter):
    """What a reader applying scl_slope/scl_inter (in double) gives for every stored voxel."""
    return (array.astype(np.float64) * slope + inter).astype(array.dtype)


def sitk_array(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def patch(path, offset, fmt, *values):
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, offset, *values)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["v.hdr", "v.img", "v.img.gz"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_nifti_pair_reads_its_nan_and_inf_back(tmp_path, name, dtype):
    array = written_array(dtype)
    write(tmp_path / name, array)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and any(".hdr" in f for f in files) and any(".img" in f for f in files)
    header = next(tmp_path.glob("v.hdr*")).read_bytes()
    if header[:2] == b"\x1f\x8b":
        header = gzip.decompress(header)
    assert header[344:348] == b"ni1\x00"  # a NIfTI-1 pair, not Analyze
    assert np.count_nonzero(sitk_array(tmp_path / name)[~np.isfinite(array)]) == 0  # ITK zeroes them
    for given in files:  # either file of the pair names it
        volume = read_volume(tmp_path / given)
        np.testing.assert_array_equal(volume.array, array)  # NaN == NaN here
        assert volume.array.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("slope, inter", [(-2.0, 5.0), (3.0, -1.0), (1.0, 7.0)])
def test_scl_slope_and_inter_apply_to_the_restored_voxels(tmp_path, dtype, slope, inter):
    array = written_array(dtype)
    path = tmp_path / "s.nii"
    write(path, array)
    patch(path, 112, "<ff", slope, inter)
    expected = scaled(array, slope, inter)
    finite = np.isfinite(array)
    np.testing.assert_array_equal(sitk_array(path)[finite], expected[finite])  # the reader scales
    np.testing.assert_array_equal(read_volume(path).array, expected)
    if slope < 0:
        assert read_volume(path).array[1, 2, 3] == -np.inf and read_volume(path).array[2, 3, 4] == np.inf


def test_a_pair_with_a_negative_slope_restores_infinities_with_the_scaled_sign(tmp_path):
    array = written_array()
    write(tmp_path / "p.hdr", array)
    patch(tmp_path / "p.hdr", 112, "<ff", -0.5, 2.0)
    np.testing.assert_array_equal(read_volume(tmp_path / "p.hdr").array, scaled(array, -0.5, 2.0))


@pytest.mark.parametrize("slope, inter", [(0.0, 5.0), (float("nan"), 5.0), (-1e-20, 0.0), (-2.0, float("inf"))])
def test_a_slope_the_reader_does_not_apply_leaves_infinities_unscaled(tmp_path, slope, inter):
    # ITK takes a zero, non-finite or sub-epsilon slope as 1, and a non-finite intercept as 0:
    # the restored voxels follow the same rule as the finite ones it returns.
    array = written_array()
    path = tmp_path / "z.nii"
    write(path, array)
    patch(path, 112, "<ff", slope, inter)
    effective_slope = slope if np.isfinite(slope) and abs(slope) >= np.finfo(np.float64).eps else 1.0
    effective_inter = inter if np.isfinite(inter) else 0.0
    expected = scaled(array, effective_slope, effective_inter)
    finite = np.isfinite(array)
    np.testing.assert_array_equal(sitk_array(path)[finite], expected[finite])
    np.testing.assert_array_equal(read_volume(path).array, expected)


def nifti2(path, array, slope, inter, magic=b"n+2\x00\r\n\x1a\n"):
    """A single-file NIfTI-2 (header bytes written here: SimpleITK writes only NIfTI-1)."""
    header = bytearray(544)
    struct.pack_into("<i", header, 0, 540)
    header[4:12] = magic
    struct.pack_into("<hh", header, 12, 16 if array.dtype == np.float32 else 64, array.dtype.itemsize * 8)
    struct.pack_into("<8q", header, 16, 3, array.shape[2], array.shape[1], array.shape[0], 1, 1, 1, 1)
    struct.pack_into("<8d", header, 104, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<q", header, 168, 544)
    struct.pack_into("<dd", header, 176, slope, inter)
    struct.pack_into("<ii", header, 344, 0, 1)  # sform_code 1
    for row in range(3):
        struct.pack_into("<4d", header, 400 + 32 * row, *[1.0 if c == row else 0.0 for c in range(4)])
    path.write_bytes(bytes(header) + array.tobytes())


def test_a_nifti2_slope_stored_as_double_applies(tmp_path):
    # This SimpleITK (ITK 5.4) finds no reader for NIfTI-2, so read_volume refuses the file
    # before any restoring; the header's float64 scl_* (offsets 176, 184) are checked on the
    # array such a reader gives: stored voxels, non-finite ones as 0, then scaled.
    array = written_array()
    path = tmp_path / "n2.nii"
    nifti2(path, array, -4.0, 1.0)
    as_read = scaled(np.where(np.isfinite(array), array, 0), -4.0, 1.0)
    np.testing.assert_array_equal(restore_nonfinite(path, as_read), scaled(array, -4.0, 1.0))


def analyze_pair(tmp_path, array, name="an"):
    """An Analyze 7.5 pair: a NIfTI-1 pair's header with the magic cleared (ITK still reads it)."""
    write(tmp_path / f"{name}.hdr", array)
    header = bytearray((tmp_path / f"{name}.hdr").read_bytes()[:348])
    header[344:348] = b"\x00" * 4
    (tmp_path / f"{name}.hdr").write_bytes(bytes(header))


def test_an_analyze_pair_reads_its_nan_and_inf_back_unscaled(tmp_path):
    array = written_array()
    analyze_pair(tmp_path, array)
    patch(tmp_path / "an.hdr", 112, "<ff", -2.0, 5.0)  # Analyze has no scl_*: the reader ignores it
    finite = np.isfinite(array)
    read = sitk_array(tmp_path / "an.hdr")
    np.testing.assert_array_equal(read[finite], array[finite])
    assert np.count_nonzero(read[~finite]) == 0
    np.testing.assert_array_equal(read_volume(tmp_path / "an.hdr").array, array)


def test_two_voxel_files_for_one_header_give_not_known(tmp_path):
    array = written_array()
    write(tmp_path / "d.hdr", array)
    other = written_array()
    other[0, 0, 0] = 9.0  # which of the two the reader took cannot be told
    write(tmp_path / "e.img.gz", other)
    shutil.copy(tmp_path / "e.img.gz", tmp_path / "d.img.gz")
    read = sitk_array(tmp_path / "d.hdr")
    np.testing.assert_array_equal(read_volume(tmp_path / "d.hdr").array, read)


def test_a_single_file_offset_inside_its_header_gives_not_known(tmp_path):
    # The reader does not take voxels from inside the header; a NaN pattern there must not be
    # put into the volume (the old code read from offset 0 and did).
    array = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5) + 1
    path = tmp_path / "o.nii"
    write(path, array)
    patch(path, 108, "<f", 0.0)
    patch(path, 148, "<4f", np.nan, np.inf, np.nan, -np.inf)  # in descrip, read as voxels 37..40
    read = sitk_array(path)
    assert np.isfinite(read).all()
    np.testing.assert_array_equal(read_volume(path).array, read)


def test_an_array_the_reader_gave_otherwise_is_left_as_read(tmp_path):
    # restore_nonfinite puts values back only where the reader's array is the stored voxels with
    # those positions zeroed: given any other array, it claims nothing.
    array = written_array()
    path = tmp_path / "g.nii"
    write(path, array)
    read = sitk_array(path)
    np.testing.assert_array_equal(restore_nonfinite(path, read), array)
    changed = read.copy()
    changed[2, 0, 0] += 1.0
    assert restore_nonfinite(path, changed) is changed
    flipped = np.ascontiguousarray(read[::-1])
    assert restore_nonfinite(path, flipped) is flipped


def test_an_integer_pair_is_read_unchanged(tmp_path):
    labels = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    write(tmp_path / "i.hdr", labels)
    np.testing.assert_array_equal(read_volume(tmp_path / "i.hdr").array, labels)
