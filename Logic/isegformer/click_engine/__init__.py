"""The click engine: clicks in one 2D slice -> a probability map, with iSegFormer.

- ``model.py``: the network (:class:`~.model.ISegFormer`); its docstring follows a click
  through it.
- ``build.py``: variants (Swin-B, Swin-L, tiny) and loading official or saved checkpoints.
- ``swin.py``, ``decoder.py``, ``disks.py``: the backbone, the decoder and the click maps.

Submodules are imported explicitly (``from isegformer.click_engine.build import ...``), so that
importing the package stays cheap.
"""
