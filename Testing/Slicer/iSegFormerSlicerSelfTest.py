"""End-to-end test inside Slicer with a real (small) model: clicks, undo, propagation.

The checkpoint is the small official-format model of the test fixtures: the file named by
ISEGFORMER_TEST_CHECKPOINT, else <ISEGFORMER_GOLDEN>/tiny_isegformer.pth. The volume is the
module's registered sample (the OAI-ZIB knee), else the knee template of ISEGFORMER_DATA. The test
skips, saying why, when PyTorch, the checkpoint or every volume is missing.

Run it with ``ctest -R py_iSegFormerSlicerSelfTest`` in the extension's build folder, or from
Slicer's Python console with this folder (Testing/Slicer) on the path::

    import sys; sys.path.append("<repository>/Testing/Slicer")
    import iSegFormerSlicerSelfTest; iSegFormerSlicerSelfTest.iSegFormerSlicerSelfTestTest().runTest()
"""
import os
import unittest

import numpy as np
import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest


def _checkpoint():
    path = os.environ.get("ISEGFORMER_TEST_CHECKPOINT")
    if path:
        return path if os.path.isfile(path) else None
    golden = os.environ.get("ISEGFORMER_GOLDEN")
    if golden and os.path.isfile(os.path.join(golden, "tiny_isegformer.pth")):
        return os.path.join(golden, "tiny_isegformer.pth")
    return None


def _loadVolume():
    """The registered knee sample, or the knee template from the sample-data folder."""
    import iSegFormerSlicer

    try:
        import SampleData

        iSegFormerSlicer.registerSampleData()
        nodes = SampleData.downloadSamples(iSegFormerSlicer.SAMPLE_NAME)
        volumes = [n for n in nodes if n is not None and n.IsA("vtkMRMLScalarVolumeNode")]
        if volumes:
            return volumes[0]
    except Exception as err:  # offline: fall back to local data
        import logging

        logging.warning("Sample download failed (%s); trying ISEGFORMER_DATA", err)
    data = os.environ.get("ISEGFORMER_DATA")
    if data:
        folder = os.path.join(data, "knee_template")
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if name.endswith((".nii", ".nii.gz")) and "segmentation" not in name:
                return slicer.util.loadVolume(os.path.join(folder, name))
    return None


class iSegFormerSlicerSelfTestTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ClicksUndoPropagation()

    def test_ClicksUndoPropagation(self):
        import iSegFormerSlicer

        logic = iSegFormerSlicer.iSegFormerSlicerLogic()
        if "torch" in logic.missingDependencies():
            raise unittest.SkipTest("PyTorch is not installed in Slicer: install it (PyTorch extension) to run this test.")
        checkpoint = _checkpoint()
        if checkpoint is None:
            raise unittest.SkipTest(
                "No test checkpoint: set ISEGFORMER_TEST_CHECKPOINT, or ISEGFORMER_GOLDEN to the "
                "folder holding tiny_isegformer.pth."
            )
        volumeNode = _loadVolume()
        if volumeNode is None:
            raise unittest.SkipTest("No test volume: the sample download failed and ISEGFORMER_DATA is not set.")

        logic.setModelSettings(model=checkpoint, device="cpu", propagation="interpolation")
        logic.setVolume(volumeNode)
        segmentationNode, segmentId = logic.setSegmentation()
        logic.getSegmentEditorNode()  # default rules: edit everywhere, overwrite others
        shape = slicer.util.arrayFromVolume(volumeNode).shape
        ijkToWorld = logic.volumeIJKToWorld()

        def ras(i, j, k):
            return (ijkToWorld @ np.array([i, j, k, 1.0]))[:3]

        centre = [n // 2 for n in reversed(shape)]  # (i, j, k)
        self.delayDisplay("Click on a k slice")
        before = logic.segmentArray(segmentId)
        pointK = logic.addClick(ras(*centre), positive=True, axis=0)
        afterK = logic.segmentArray(segmentId)
        self._assertOnlySliceChanged(before, afterK, 0, pointK.index)
        positiveNode, _negativeNode = logic.getClickNodes()
        self.assertEqual(positiveNode.GetNthControlPointDescription(0), "positive")  # the sign is saved with it
        self.assertIs(logic.parameters.sourceVolume, volumeNode)  # the state lives in the parameter node
        expected = logic._bridge.segment_mask(segmentId)
        np.testing.assert_array_equal(afterK[pointK.index] > 0, expected[pointK.index])

        self.delayDisplay("Click on a j slice")
        pointJ = logic.addClick(ras(centre[0], centre[1] + 3, centre[2]), positive=True, axis=1)
        afterJ = logic.segmentArray(segmentId)
        self._assertOnlySliceChanged(afterK, afterJ, 1, pointJ.index)

        self.delayDisplay("Undo restores the segment")
        logic.undoLastClick()
        np.testing.assert_array_equal(logic.segmentArray(segmentId), afterK)

        self.delayDisplay("Propagation fills the range between two annotated k slices")
        second = min(pointK.index + 6, shape[0] - 1)
        logic.addClick(ras(centre[0], centre[1], second), positive=True, axis=0)
        annotated = logic.segmentArray(segmentId)
        if not (annotated[pointK.index].any() and annotated[second].any()):
            raise unittest.SkipTest("The small model gave an empty mask here; propagation cannot be checked.")
        logic.propagate(segmentId)
        result = logic.segmentArray(segmentId)
        for index in range(pointK.index, second + 1):
            self.assertTrue(result[index].any(), "slice %d is empty after propagation" % index)
        np.testing.assert_array_equal(result[pointK.index], annotated[pointK.index])
        np.testing.assert_array_equal(result[second], annotated[second])
        logic.shutdown()
        self.delayDisplay("iSegFormer self-test passed")

    def _assertOnlySliceChanged(self, before, after, axis, index):
        changed = np.flatnonzero(np.any(before != after, axis=tuple(a for a in range(3) if a != axis)))
        self.assertTrue(set(changed.tolist()) <= {index}, "slices %s changed, expected only %d" % (changed, index))
