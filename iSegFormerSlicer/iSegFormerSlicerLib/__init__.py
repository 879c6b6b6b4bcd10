"""The iSegFormerSlicer module's code, one concept per file.

- ``logic.py``: iSegFormerSlicerLogic, everything the module does (no Qt; runs on slicer-core);
- ``widget.py``: iSegFormerSlicerWidget, which only wires GUI and view events to the Logic;
- ``parameters.py``: the module's parameter node (its state, saved with the scene);
- ``clicks.py``: the point lists, their signs, and the record of each placed point;
- ``geometry.py``: MRML geometry (volume matrices, slice views) to array slices;
- ``models.py``: which click models exist, which need downloading;
- ``jobs.py``: the worker thread's jobs, polled from the GUI thread;
- ``finetune.py``: fine-tuning the click model in a separate process;
- ``sample_data.py``: the knee in the Sample Data module;
- ``test.py``: iSegFormerSlicerTest, the module's self-test.

This file holds what all of them share: the translation function, the module's name, where
its resources are, how ``isegformer`` (the Slicer-free package) is found, and its error for bad input.
"""
import importlib.util
import os
import sys

try:
    from slicer.i18n import tr as _
except ImportError:  # Slicer before 5.4, or slicer-core alone: no translation helper

    def _(text):
        return text


MODULE_NAME = "iSegFormerSlicer"
#: the folder of iSegFormerSlicer.py (this package's parent)
MODULE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def moduleResourcePath(relativePath):
    """A file of the module's resources: ``<module dir>/Resources`` when built or installed,
    ``<module dir>/../Resources`` in a source checkout (the repository's top-level folder)."""
    for resources in (os.path.join(MODULE_DIR, "Resources"), os.path.join(os.path.dirname(MODULE_DIR), "Resources")):
        candidate = os.path.join(resources, relativePath)
        if os.path.exists(candidate):
            return candidate
    return os.path.join(MODULE_DIR, "Resources", relativePath)  # where it should be: named in the error


def ensureIsegformerImportable():
    """Make ``import isegformer`` work: installed beside the module, or ../Logic in a source tree.

    Only looks for the package (importlib.util.find_spec does not import it).
    """
    if importlib.util.find_spec("isegformer") is not None:
        return
    for candidate in (MODULE_DIR, os.path.join(os.path.dirname(MODULE_DIR), "Logic")):
        if os.path.isdir(os.path.join(candidate, "isegformer")) and candidate not in sys.path:
            sys.path.append(candidate)
            return


def invalidInput(message):
    """The package's error for bad input (``isegformer.errors.InvalidInputError``, a ValueError),
    imported on first use like the rest of ``isegformer``."""
    ensureIsegformerImportable()
    from isegformer.errors import InvalidInputError

    return InvalidInputError(message)


def missingSegment(segmentationNode, segmentId):
    """The error for a segment ID the segmentation does not hold (deleted, or mistyped)."""
    name = segmentationNode.GetName() if segmentationNode is not None else "the segmentation"
    return invalidInput(
        f"The segment was deleted, or its ID is mistyped: {name!r} has no segment with the ID "
        f"{segmentId!r}. Select or add a segment and try again.")


def support():
    """The Slicer-free helpers of the package (numpy only); imported on first use."""
    ensureIsegformerImportable()
    import isegformer.slicer_support.dependencies as dependencies
    import isegformer.slicer_support.slice_write as slice_write
    import isegformer.slicer_support.transforms as transforms
    import isegformer.slicer_support.views as views
    import isegformer.slicer_support.worker as worker

    class Support:
        pass

    helpers = Support()
    helpers.dependencies = dependencies
    helpers.slice_write = slice_write
    helpers.transforms = transforms
    helpers.views = views
    helpers.worker = worker
    return helpers


# Find (not import) the package now, so that a file of this package that names a light
# isegformer module at its top works in a source checkout too (Logic/ beside the module).
ensureIsegformerImportable()
