"""iSegFormerSlicerTest: the module's own self-test (Slicer's Reload and Test, and ctest).

Geometry and writing on Slicer's MRML, with a stand-in for the click model's session (a disk
around each click), so it needs no torch and no weights. The end-to-end test with the real
model is Testing/Slicer/iSegFormerSlicerSelfTest.py.
"""
import numpy as np
import vtk

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from . import ensureIsegformerImportable
from .logic import iSegFormerSlicerLogic


class iSegFormerSlicerTest(ScriptedLoadableModuleTest):
    """Geometry and writing tests that need Slicer but no model (a fake session stands in)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ClickOnEachAxisWritesThatSliceOnly()
        self.setUp()
        self.test_ObliqueViewIsRefused()

    def _logicWithFakeSession(self, shape=(20, 24, 28)):
        """A Logic on a synthetic volume whose 'model' answers a disk around each click."""
        ensureIsegformerImportable()
        from isegformer.slicer_support.session_bridge import SliceUpdate

        volumeNode = slicer.util.addVolumeFromArray(
            np.zeros(shape, np.int16), np.array([[0, 0, -0.9, 10], [1.1, 0, 0, -5], [0, -1.2, 0, 3], [0, 0, 0, 1.0]]),
            name="synthetic",
        )
        logic = iSegFormerSlicerLogic()
        logic.setVolume(volumeNode)
        logic.setSegmentation()

        class FakeBridge:
            def click(self, segment, point, positive):
                rows, cols = [n for a, n in enumerate(shape) if a != point.axis]
                rr, cc = np.mgrid[:rows, :cols]
                disk = (rr - point.row) ** 2 + (cc - point.col) ** 2 <= 9
                return SliceUpdate(segment, point.axis, point.index, disk if positive else np.zeros_like(disk))

        logic._bridge = FakeBridge()
        return logic, volumeNode

    def test_ClickOnEachAxisWritesThatSliceOnly(self):
        logic, volumeNode = self._logicWithFakeSession()
        ijkToRas = logic.volumeIJKToWorld()
        for axis, ijk in ((0, (14, 12, 5)), (1, (14, 7, 10)), (2, (9, 12, 10))):
            ras = (ijkToRas @ np.array([*ijk, 1.0]))[:3]
            point = logic.addClick(ras, axis=axis)
            self.assertEqual(point.axis, axis)
            self.assertEqual(point.index, (ijk[2], ijk[1], ijk[0])[axis])
            array = logic.segmentArray()
            written = np.take(array, point.index, axis=axis)
            self.assertTrue(written.any())
            others = np.delete(array, point.index, axis=axis)
            self.assertEqual(int(others.sum()) + int(written.sum()), int(array.sum()))
        self.delayDisplay("Clicks on three axes wrote their slices")

    def test_ObliqueViewIsRefused(self):
        ensureIsegformerImportable()
        from isegformer.slicer_support.views import ObliqueViewError

        logic, volumeNode = self._logicWithFakeSession()
        sliceNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSliceNode")
        rotation = vtk.vtkTransform()
        rotation.RotateX(30)
        sliceNode.GetSliceToRAS().DeepCopy(rotation.GetMatrix())
        with self.assertRaises(ObliqueViewError):
            logic.locateClick((10.0, -5.0, 3.0), sliceNode)
        self.delayDisplay("Oblique view refused")
