"""Reading and writing volumes with SimpleITK: NIfTI, NRRD, MHA, and DICOM series folders."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import FileFormatError, InvalidInputError
from .labels import as_label_array
from .nifti_nonfinite import restore_nonfinite
from .sitk_path import sitk_path
from .truncation import check_not_truncated
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
    name = sitk_path(p)  # before anything else: a name SimpleITK cannot take aborts the process
    if not p.exists():
        raise InvalidInputError(f"No such file or folder: {p}. Check the path.")
    if p.is_dir():
        image = _read_dicom_series(p, series_id)
    else:
        # ITK's NIfTI reader zero-fills a short file without a word: refuse it first.
        check_not_truncated(p)
        try:
            image = sitk.ReadImage(name)
        except RuntimeError as err:
            raise FileFormatError(
                f"Could not read {p} as an image ({_first_line(err)}). Give a NIfTI (.nii, .nii.gz), "
                "NRRD (.nrrd), MetaImage (.mha/.mhd) file, or a folder with one DICOM series."
            ) from err
    try:
        volume = Volume.from_sitk(image)
    except InvalidInputError as err:
        raise InvalidInputError(f"{p}: {err}") from err
    if not p.is_dir():
        # ITK's NIfTI reader writes 0 where the file stores NaN or inf: put them back, so that a
        # NIfTI reads as stored, as an NRRD does, and no NaN passes for a dark voxel.
        restored = restore_nonfinite(p, volume.array)
        if restored is not volume.array:
            volume = Volume(restored, volume.ijk_to_ras)
    return volume


def read_label_map(path: str | os.PathLike, reference: Volume) -> Volume:
    """Read a label map (any SimpleITK format, or a Slicer ``.seg.nrrd``) onto ``reference``'s grid.

    This is the package's one label-map reader. Its values are checked (whole numbers in
    0..MAX_LABEL_VALUE, so no later cast wraps), and its grid is placed on the volume's by
    :mod:`isegformer.volume.grid`: Slicer's K-flipped grids (and a ``.seg.nrrd`` saved with
    "crop to minimum extent") land exactly where they belong; another grid raises
    InvalidInputError. A ``.seg.nrrd`` gives segment ``n`` (file
    order) the value ``n + 1``; overlapping segments cannot share one label map and are refused
    (read them with :func:`isegformer.output.seg_nrrd.read_seg_nrrd`).
    """
    p = Path(path).expanduser()
    if p.name.lower().endswith(".seg.nrrd"):
        from ..output.seg_nrrd import read_seg_nrrd

        if not p.exists():
            raise InvalidInputError(f"No such file: {p}. Check the path.")
        segmentation = read_seg_nrrd(p).on_grid(reference, what=f"segmentation {p.name}")
        return Volume(segmentation.label_map(), reference.ijk_to_ras.copy())
    label = read_volume(p)
    label = Volume(as_label_array(label.array, f"The label map {p.name}"), label.ijk_to_ras)
    try:
        return reference.label_on_grid(label)
    except InvalidInputError as err:
        raise InvalidInputError(f"{p.name}: {err}") from err


def write_volume(volume: Volume, path: str | os.PathLike, array: Optional[np.ndarray] = None,
                 compress: bool = True) -> Path:
    """Write ``volume`` (or ``array`` on its grid) to ``path``; the suffix picks the format."""
    p = Path(path).expanduser()
    if not p.parent.exists():
        raise InvalidInputError(f"Cannot write {p}: the folder {p.parent} does not exist. Create it first.")
    # The package's one SimpleITK writer: atomic, and read back before it replaces anything.
    from ..output.atomic import write_image_verified

    return write_image_verified(volume.to_sitk(array), p, compress=compress)


def _read_dicom_series(folder: Path, series_id: Optional[str]):
    import SimpleITK as sitk

    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(sitk_path(folder, "The DICOM folder"))
    if not ids:
        raise FileFormatError(
            f"The folder {folder} holds no DICOM series. Point to a folder of .dcm files of one "
            "series, or to a single NIfTI/NRRD/MHA file."
        )
    if series_id is not None and series_id not in ids:
        raise InvalidInputError(
            f"DICOM series {series_id!r} is not in {folder}; it holds: {', '.join(ids)}."
        )
    files_by_id = {sid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(sitk_path(folder), sid) for sid in ids}
    chosen = series_id or max(ids, key=lambda sid: len(files_by_id[sid]))
    if len(ids) > 1 and series_id is None:
        log.warning("%s holds %d DICOM series; reading %s (%d files), the largest.",
                    folder, len(ids), chosen, len(files_by_id[chosen]))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([sitk_path(name, f"A file of the DICOM series in {folder}:") for name in files_by_id[chosen]])
    reader.MetaDataDictionaryArrayUpdateOn()  # each file's own position, checked below
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise FileFormatError(f"Could not read the DICOM series in {folder}: {_first_line(err)}") from err
    _check_slice_positions(image, reader, files_by_id[chosen], folder)
    return image


#: How far a file's own position (ImagePositionPatient) may be from where the loaded volume puts
#: its slice: Slicer's DICOM module uses 0.01 mm; thick slices get 1% of their spacing.
SLICE_POSITION_TOL_MM = 0.01
SLICE_POSITION_TOL_SPACING = 0.01


def _check_slice_positions(image, reader, files, folder: Path) -> None:
    """Refuse a series whose slices are not where the volume's even grid puts them.

    ITK builds the grid from the first slices' spacing and only warns on stderr when a slice is
    missing or the spacing is uneven; every later slice would then sit up to half a gap away
    from its true position. Each file's ImagePositionPatient is compared with its slice's place.
    """
    count = image.GetDepth()
    if count < 2:
        return
    positions = []
    for number in range(count):
        try:
            text = reader.GetMetaData(number, "0020|0032")
            positions.append([float(v) for v in text.replace(" ", "").split("\\")])
        except (RuntimeError, ValueError):
            log.warning("%s: slice %d has no readable ImagePositionPatient; its position is "
                        "not checked.", folder, number)
            return
    positions = np.asarray(positions)
    if positions.shape != (count, 3):
        return
    placed = np.array([image.TransformIndexToPhysicalPoint((0, 0, n)) for n in range(count)])
    error = np.linalg.norm(positions - placed, axis=1)
    tolerance = max(SLICE_POSITION_TOL_MM, SLICE_POSITION_TOL_SPACING * image.GetSpacing()[2])
    if float(error.max()) <= tolerance:
        return
    gaps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    typical = float(np.median(gaps))
    worst = int(np.argmax(np.abs(gaps - typical)))
    if abs(float(gaps[worst]) - typical) <= tolerance:
        raise FileFormatError(
            f"The DICOM series in {folder} has evenly spaced slices, but they are not stacked "
            f"along the normal of the image plane (a gantry tilt or a sheared stack): read as one "
            f"volume, slices would be up to {float(error.max()):.3g} mm from their true positions. "
            "Load it with Slicer's DICOM module, which can regularize such geometry, and save it "
            "as NRRD or NIfTI."
        )
    raise FileFormatError(
        f"The DICOM series in {folder} is not evenly spaced: the slices are {typical:.4g} mm "
        f"apart, but {Path(files[worst]).name} and {Path(files[worst + 1]).name} are "
        f"{gaps[worst]:.4g} mm apart (a missing slice?). Read as one volume, slices would be up "
        f"to {float(error.max()):.3g} mm from their true positions. Add the missing files, or "
        "load the series with Slicer's DICOM module, which detects uneven spacing and can "
        "regularize it (acquisition geometry regularization), and save it as NRRD or NIfTI."
    )


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    # ITK's messages start with a file:line banner; the explanation is usually the last line.
    return lines[-1] if lines else type(err).__name__
