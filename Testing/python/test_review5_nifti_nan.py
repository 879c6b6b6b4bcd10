"""A NIfTI reads as stored: ITK's NIfTI reader writes 0 where the file holds NaN or inf (its NRRD
and MetaImage readers keep them), so the package's reader puts them back. Every consumer then
sees the same volume whatever the format: a Session refuses it, as it refuses an NRRD with NaN."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from isegformer.errors import InvalidInputError
from isegformer.session import Session
from isegformer.volume import read_volume


def stored(path, dtype=np.float32):
    array = np.arange(4 * 5 * 6, dtype=dtype).reshape(4, 5, 6)
    array[1, 2, 3], array[3, 4, 5], array[0, 0, 1] = np.nan, np.inf, -np.inf
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.5, 0.7, 2.0))
    sitk.WriteImage(image, str(path))
    return array


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz", "v.nrrd", "v.mha"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_and_inf_read_back_where_the_file_stores_them(tmp_path, name, dtype):
    written = stored(tmp_path / name, dtype)
    volume = read_volume(tmp_path / name)
    np.testing.assert_array_equal(volume.array, written)  # NaN == NaN here
    assert volume.array.dtype == dtype


def test_a_session_refuses_a_nifti_with_nan_as_it_refuses_an_nrrd(tmp_path):
    for name in ("v.nii.gz", "v.nrrd"):
        stored(tmp_path / name)
        with pytest.raises(InvalidInputError, match="NaN or infinite"):
            Session.open(tmp_path / name, click_model="swin_base")


def test_a_finite_float_or_integer_nifti_is_read_unchanged(tmp_path):
    array = np.linspace(-3, 3, 120, dtype=np.float32).reshape(4, 5, 6)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "f.nii.gz"))
    np.testing.assert_array_equal(read_volume(tmp_path / "f.nii.gz").array, array)
    labels = np.arange(120, dtype=np.int16).reshape(4, 5, 6)
    sitk.WriteImage(sitk.GetImageFromArray(labels), str(tmp_path / "i.nii"))
    np.testing.assert_array_equal(read_volume(tmp_path / "i.nii").array, labels)
