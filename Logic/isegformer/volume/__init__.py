"""Volumes: reading them (SimpleITK), their geometry (IJK/LPS/RAS), slices and intensity windows."""
from .image_io import read_label_map, read_volume, write_volume  # noqa: F401
from .volume import Volume  # noqa: F401
