"""What the Slicer module needs that can be computed without Slicer (numpy only, no torch).

- ``views``:       which volume axis a slice view looks along (sign-aware), or a refusal when oblique
- ``transforms``:  a world (RAS) point through parent transforms to continuous IJK and a slice pixel
- ``slice_write``: writing one slice of a segment the way the Segment Editor's masking and
                   overwrite settings say, on plain arrays
- ``worker``:      one persistent worker thread with a job queue and a results queue (Qt-free)
- ``dependencies``: which Python packages are missing or outside the supported versions

The Slicer module (``iSegFormerSlicer/iSegFormerSlicer.py``) turns MRML nodes into these plain
arrays and matrices, and back. Nothing here imports slicer, qt, ctk, vtk or torch.
"""
