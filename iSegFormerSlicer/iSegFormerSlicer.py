"""iSegFormerSlicer: click in a slice view, get that slice's mask; propagate it through the volume.

This file is what Slicer loads: the module's description, the Sample Data hook, and the
names Slicer looks up by convention (iSegFormerSlicerWidget, iSegFormerSlicerLogic,
iSegFormerSlicerTest), which live in the iSegFormerSlicerLib package beside it, one concept
per file (see iSegFormerSlicerLib/__init__.py). Nothing here imports torch or ``isegformer``
when the module is loaded or its widget is built: both come in only after the explicit
dependency step.
"""
import os

import qt

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule

from iSegFormerSlicerLib import _, moduleResourcePath
from iSegFormerSlicerLib.logic import iSegFormerSlicerLogic  # noqa: F401 (Slicer finds it here)
from iSegFormerSlicerLib.models import DEFAULT_MODEL  # noqa: F401
from iSegFormerSlicerLib.sample_data import SAMPLE_NAME, registerSampleData  # noqa: F401 (the self-test uses both)
from iSegFormerSlicerLib.test import iSegFormerSlicerTest  # noqa: F401 (Slicer finds it here)
from iSegFormerSlicerLib.widget import iSegFormerSlicerWidget  # noqa: F401 (Slicer finds it here)


class iSegFormerSlicer(ScriptedLoadableModule):
    """Module description shown in Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("iSegFormer")
        self.parent.categories = [_("Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["iSegFormerSlicer contributors"]
        self.parent.helpText = _(
            "Interactive segmentation with iSegFormer (MICCAI 2022): place positive and negative "
            "points in a slice view to segment that slice, then Propagate to carry the annotated "
            "slices through the volume. Correct any slice (more points, or Segment Editor effects) "
            "and propagate again. Ctrl+Z undoes the last point. Fine-tune teaches the click model "
            "your structure from the slices you segmented."
        )
        self.parent.acknowledgementText = _(
            "Method: Q. Liu, Z. Xu, Y. Jiao, M. Niethammer, iSegFormer: Interactive Segmentation via "
            "Transformers with Application to 3D Knee MR Images, MICCAI 2022. Propagation: STCN "
            "(H. K. Cheng, Y.-W. Tai, C.-K. Tang, NeurIPS 2021)."
        )
        icon = moduleResourcePath("Icons/iSegFormerSlicer.png")
        if os.path.isfile(icon):  # the base class looks beside this file only, not in a source checkout
            self.parent.icon = qt.QIcon(icon)
        slicer.app.connect("startupCompleted()", registerSampleData)
