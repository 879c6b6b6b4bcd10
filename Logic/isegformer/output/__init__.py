"""Output files Slicer reads as its own: ``.seg.nrrd``, label maps, ``.mrk.json``, PNG overlays."""
from .atomic import OutputPathError, atomic_write  # noqa: F401
from .markups import ClickPoint, read_clicks, write_clicks  # noqa: F401
from .seg_nrrd import SegmentationFile, SegmentInfo, read_seg_nrrd, write_seg_nrrd  # noqa: F401
