"""isegformer: interactive segmentation of 3D medical images.

A click in one slice becomes that slice's mask (iSegFormer, MICCAI 2022); a memory network
(STCN) carries the annotated slices through the volume. This package never imports slicer,
qt or ctk: the Slicer module in ``iSegFormerSlicer/`` wraps it.

Where things live (the data path, in order):

- ``volume/``        reading volumes, geometry (IJK/LPS/RAS), slices and intensity windows
- ``clicks/``        clicks, and the simulated user of the NoC protocol
- ``click_engine/``  the iSegFormer network and the predictor that turns clicks into a mask
- ``segments/``      per-segment state: annotated and propagated slices, undo/redo
- ``propagation/``   STCN and the interpolation baseline: annotated slices to the whole volume
- ``output/``        .seg.nrrd, label maps, .mrk.json and PNG overlays
- ``weights/``       the model registry, downloads and the verified cache
- ``evaluation/``    NoC (Table 1) and propagation (Table 2) protocols
"""
from .errors import (  # noqa: F401
    CancelledError,
    CheckpointError,
    ChecksumMismatchError,
    DownloadError,
    FileFormatError,
    InvalidInputError,
    ISegFormerError,
    SessionFileError,
    WeightsError,
)

__version__ = "0.1.0"


def __getattr__(name: str):
    # Session pulls in torch on first use only, so `import isegformer` stays light.
    if name == "Session":
        from .session import Session

        return Session
    raise AttributeError(f"module 'isegformer' has no attribute {name!r}")
