"""Reading and writing volumes with SimpleITK: NIfTI, NRRD, MHA, and DICOM series folders."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import FileFormatError, InvalidInputError
from .volume import Volume

log = logging.getLogger(__name__)

#: Suffixes SimpleITK reads for us; anything else is still tried (ITK guesses by content).
KNOWN_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


def read_volume(path: str | os.PathLike, series_id: Optional[str] = None) -> Volume:
    """Read a 3D volume from a file, or from a folder holding one DICOM series.

    For a folder with several series, ``series_id`` picks one; without it the series with
    the most files is read (and the choice is logged).
    """
    import SimpleITK as sitk

    p = Path(path).expanduser()
    if not p.exists():
        raise InvalidInputError(f"No such file or folder: {p}. Check the path.")
    if p.is_dir():
        image = _read_dicom_series(p, series_id)
    else:
        try:
            image = sitk.ReadImage(str(p))
        except RuntimeError as err:
            raise FileFormatError(
                f"Could not read {p} as an image ({_first_line(err)}). Give a NIfTI (.nii, .nii.gz), "
                "NRRD (.nrrd), MetaImage (.mha/.mhd) file, or a folder with one DICOM series."
            ) from err
    try:
        return Volume.from_sitk(image)
    except InvalidInputError as err:
        raise InvalidInputError(f"{p}: {err}") from err


def read_label_map(path: str | os.PathLike, reference: Volume) -> Volume:
    """Read a label map and check it lies on ``reference``'s grid (raises InvalidInputError if not)."""
    label = read_volume(path)
    try:
        reference.check_label_map(label)
    except InvalidInputError as err:
        raise InvalidInputError(f"{Path(path).name}: {err}") from err
    return label


def write_volume(volume: Volume, path: str | os.PathLike, array: Optional[np.ndarray] = None,
                 compress: bool = True) -> Path:
    """Write ``volume`` (or ``array`` on its grid) to ``path``; the suffix picks the format."""
    import SimpleITK as sitk

    p = Path(path).expanduser()
    if not p.parent.exists():
        raise InvalidInputError(f"Cannot write {p}: the folder {p.parent} does not exist. Create it first.")
    image = volume.to_sitk(array)
    try:
        sitk.WriteImage(image, str(p), useCompression=compress)
    except RuntimeError as err:
        raise InvalidInputError(
            f"Could not write {p} ({_first_line(err)}). Check that the folder is writable and the "
            "suffix is one of .nii.gz, .nii, .nrrd, .mha."
        ) from err
    return p


def _read_dicom_series(folder: Path, series_id: Optional[str]):
    import SimpleITK as sitk

    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise FileFormatError(
            f"The folder {folder} holds no DICOM series. Point to a folder of .dcm files of one "
            "series, or to a single NIfTI/NRRD/MHA file."
        )
    if series_id is not None and series_id not in ids:
        raise InvalidInputError(
            f"DICOM series {series_id!r} is not in {folder}; it holds: {', '.join(ids)}."
        )
    files_by_id = {sid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in ids}
    chosen = series_id or max(ids, key=lambda sid: len(files_by_id[sid]))
    if len(ids) > 1 and series_id is None:
        log.warning("%s holds %d DICOM series; reading %s (%d files), the largest.",
                    folder, len(ids), chosen, len(files_by_id[chosen]))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files_by_id[chosen])
    try:
        return reader.Execute()
    except RuntimeError as err:
        raise FileFormatError(f"Could not read the DICOM series in {folder}: {_first_line(err)}") from err


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    # ITK's messages start with a file:line banner; the explanation is usually the last line.
    return lines[-1] if lines else type(err).__name__
