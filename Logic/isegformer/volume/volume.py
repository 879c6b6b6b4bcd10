"""A 3D image with its geometry: a (k, j, i) array and its IJK->RAS matrix."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np

from ..errors import InvalidInputError
from . import geometry

if TYPE_CHECKING:  # SimpleITK is imported lazily: the package must import without it
    import SimpleITK as sitk

#: Tolerances for "same grid". Labels saved separately from their image (float32 headers,
#: another writer) differ in the last digits; anything above these is a different grid.
SPACING_RTOL = 1e-4
ORIGIN_TOL_VOXELS = 1e-3  # in units of the smallest spacing
DIRECTION_ATOL = 1e-4


@dataclass(eq=False)
class Volume:
    """A 3D array indexed ``[k, j, i]`` and the 4x4 matrix from continuous ``(i, j, k)`` to RAS mm.

    See :mod:`isegformer.volume.geometry` for the coordinate conventions.
    """

    array: np.ndarray
    ijk_to_ras: np.ndarray

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        if self.array.ndim != 3:
            raise InvalidInputError(
                f"Expected a 3D volume, got an array of shape {self.array.shape} "
                f"({self.array.ndim}D). Give a single 3D image (for a 4D series, pick one volume; "
                "for a 2D image, stack it into a volume first)."
            )
        if min(self.array.shape) < 1:
            raise InvalidInputError(f"The volume is empty: shape {self.array.shape}.")
        self.ijk_to_ras = geometry.check_matrix(self.ijk_to_ras)

    # --- geometry -------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(K, J, I)``."""
        return tuple(int(v) for v in self.array.shape)  # type: ignore[return-value]

    @property
    def size_ijk(self) -> tuple[int, int, int]:
        """Number of voxels along ``(i, j, k)``, as ITK's GetSize gives it."""
        k, j, i = self.shape
        return i, j, k

    @property
    def ras_to_ijk(self) -> np.ndarray:
        return geometry.invert(self.ijk_to_ras)

    @property
    def ijk_to_lps(self) -> np.ndarray:
        return geometry.RAS_TO_LPS @ self.ijk_to_ras

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along ``(i, j, k)``."""
        return geometry.itk_geometry_from_ijk_to_ras(self.ijk_to_ras)[1]  # type: ignore[return-value]

    @property
    def origin_lps(self) -> tuple[float, float, float]:
        return geometry.itk_geometry_from_ijk_to_ras(self.ijk_to_ras)[0]  # type: ignore[return-value]

    @property
    def origin_ras(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in self.ijk_to_ras[:3, 3])  # type: ignore[return-value]

    @property
    def direction_lps(self) -> np.ndarray:
        """ITK's 3x3 direction matrix (columns: LPS directions of i, j, k)."""
        return np.asarray(geometry.itk_geometry_from_ijk_to_ras(self.ijk_to_ras)[2]).reshape(3, 3)

    @property
    def direction_ras(self) -> np.ndarray:
        """3x3 direction matrix in RAS (columns: RAS directions of i, j, k)."""
        return geometry.LPS_TO_RAS[:3, :3] @ self.direction_lps

    def ijk_to_ras_points(self, ijk: np.ndarray) -> np.ndarray:
        return geometry.transform_points(self.ijk_to_ras, ijk)

    def ras_to_ijk_points(self, ras: np.ndarray) -> np.ndarray:
        return geometry.transform_points(self.ras_to_ijk, ras)

    def with_array(self, array: np.ndarray) -> "Volume":
        """A volume on this grid holding ``array`` (e.g. a label map); the shape must match."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise InvalidInputError(
                f"An array of shape {array.shape} cannot go on this volume's grid {self.shape}."
            )
        return Volume(array, self.ijk_to_ras.copy())

    # --- SimpleITK ------------------------------------------------------------------------
    @classmethod
    def from_sitk(cls, image: "sitk.Image") -> "Volume":
        """From a 3D scalar SimpleITK image (LPS geometry), converting to RAS once, here."""
        dim = image.GetDimension()
        if dim != 3:
            raise InvalidInputError(
                f"Expected a 3D image, got a {dim}D one of size {image.GetSize()}. "
                "Give a single 3D volume."
            )
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InvalidInputError(
                f"Expected a scalar (gray) image, got {image.GetNumberOfComponentsPerPixel()} "
                "components per voxel (colour or vector image). Convert it to a gray volume first."
            )
        import SimpleITK as sitk

        matrix = geometry.ijk_to_ras_matrix(image.GetOrigin(), image.GetSpacing(), image.GetDirection())
        return cls(sitk.GetArrayFromImage(image), matrix)

    def to_sitk(self, array: Optional[np.ndarray] = None) -> "sitk.Image":
        """A SimpleITK image with this geometry, holding ``array`` (default: this volume's)."""
        import SimpleITK as sitk

        data = self.array if array is None else np.asarray(array)
        if data.shape != self.array.shape:
            raise InvalidInputError(f"Array shape {data.shape} differs from the volume's {self.shape}.")
        if data.dtype == np.bool_:
            data = data.astype(np.uint8)
        image = sitk.GetImageFromArray(np.ascontiguousarray(data))
        origin, spacing, direction = geometry.itk_geometry_from_ijk_to_ras(self.ijk_to_ras)
        image.SetOrigin(origin)
        image.SetSpacing(spacing)
        image.SetDirection(direction)
        return image

    # --- checks -----------------------------------------------------------------------------
    def check_label_map(self, label: "Volume", what: str = "label map") -> None:
        """Raise InvalidInputError naming the first mismatch (shape, spacing, origin, direction)."""
        if label.shape != self.shape:
            raise InvalidInputError(
                f"The {what} has shape {label.shape} (k, j, i) but the volume has {self.shape}: "
                "it was drawn on another grid. Resample it onto the volume (e.g. Slicer's "
                "'Resample Image (BRAINS)' with the volume as reference) and try again."
            )
        spacing_v, spacing_l = np.array(self.spacing), np.array(label.spacing)
        if not np.allclose(spacing_l, spacing_v, rtol=SPACING_RTOL, atol=0.0):
            raise InvalidInputError(
                f"The {what}'s spacing {tuple(np.round(spacing_l, 6))} differs from the volume's "
                f"{tuple(np.round(spacing_v, 6))} mm: it belongs to another grid. Resample it onto the volume."
            )
        direction_v, direction_l = self.direction_lps, label.direction_lps
        if not np.allclose(direction_l, direction_v, atol=DIRECTION_ATOL, rtol=0.0):
            raise InvalidInputError(
                f"The {what}'s direction {np.round(direction_l, 5).tolist()} differs from the "
                f"volume's {np.round(direction_v, 5).tolist()}: it is oriented differently. "
                "Resample it onto the volume."
            )
        origin_tol = ORIGIN_TOL_VOXELS * float(spacing_v.min())
        offset = float(np.max(np.abs(np.array(label.origin_ras) - np.array(self.origin_ras))))
        if offset > origin_tol:
            raise InvalidInputError(
                f"The {what}'s origin {tuple(np.round(label.origin_lps, 4))} (LPS) is {offset:.4g} mm "
                f"away from the volume's {tuple(np.round(self.origin_lps, 4))}: it is shifted. "
                "Resample it onto the volume."
            )
