"""A 3D image with its geometry: a (k, j, i) array and its IJK->RAS matrix."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np

from ..errors import InvalidInputError
from . import geometry, grid

if TYPE_CHECKING:  # SimpleITK is imported lazily: the package must import without it
    import SimpleITK as sitk

#: Tolerances for "same grid", defined with the one grid comparison (:mod:`.grid`).
SPACING_RTOL = grid.SPACING_RTOL
ORIGIN_TOL_VOXELS = grid.ORIGIN_TOL_VOXELS
DIRECTION_ATOL = grid.DIRECTION_ATOL


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

    # --- label maps on this grid ------------------------------------------------------------
    def label_on_grid(self, label: "Volume", what: str = "label map") -> "Volume":
        """``label`` placed voxel for voxel on this volume's grid (see :mod:`.grid`).

        A label map on the same physical lattice with flipped or permuted axes (Slicer's K-flip
        of left-handed images) is placed exactly; any other grid, or one covering only part of
        the volume, raises InvalidInputError (segmentations, which Slicer may crop, are placed
        by :meth:`isegformer.output.seg_nrrd.SegmentationFile.on_grid`).
        Returns ``label`` itself when it is already on this grid.
        """
        placement = grid.place_grid(label.ijk_to_ras, label.shape, self.ijk_to_ras, self.shape, what)
        if placement.is_identity:
            return label
        return Volume(placement.place(label.array), self.ijk_to_ras.copy())

    def check_label_map(self, label: "Volume", what: str = "label map") -> None:
        """Raise InvalidInputError unless ``label.array`` indexes this volume's voxels as they are.

        A label map that is the same voxels in another layout (flipped or permuted axes) is
        refused here, because its array would be read wrongly; :meth:`label_on_grid` places it.
        """
        placement = grid.place_grid(label.ijk_to_ras, label.shape, self.ijk_to_ras, self.shape, what)
        if not placement.is_identity:
            raise InvalidInputError(
                f"The {what} lies on the volume's voxels but in another layout "
                f"({placement.describe()}); place it with Volume.label_on_grid (read_label_map does)."
            )
