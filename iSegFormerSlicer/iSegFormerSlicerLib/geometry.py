"""MRML geometry to array slices: a volume's IJK-to-world matrix, and where a world point falls.

Reads MRML on the GUI thread and hands plain numpy matrices to ``isegformer.slicer_support``.
"""
import numpy as np
import vtk

import slicer

from . import invalidInput, support


def volumeIJKToWorld(volumeNode):
    """The volume's 4x4 IJK-to-world matrix, its parent transforms applied."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    chain = []
    parent = volumeNode.GetParentTransformNode()
    if parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise invalidInput(
                "The source volume is under a non-linear transform: harden the transform "
                "(Data module, right-click the volume, Harden transform) and click again."
            )
        toWorld = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(toWorld)
        chain.append(slicer.util.arrayFromVTKMatrix(toWorld))
    return support().transforms.ijk_to_world(slicer.util.arrayFromVTKMatrix(matrix), chain)


def locateClick(volumeNode, rasPoint, sliceNode=None, axis=None, toleranceDegrees=1.0):
    """Where a world (RAS) point falls in the volume: a SlicePoint (axis, slice index, row, col).

    The axis comes from ``sliceNode``'s normal (sign-aware) unless given; without either, from
    the slice view whose plane passes through the point. An oblique view raises
    ObliqueViewError and nothing else happens.
    """
    helpers = support()
    if volumeNode is None:
        raise invalidInput("Select the source volume first.")
    ijkToWorld = volumeIJKToWorld(volumeNode)
    if axis is None:
        if sliceNode is None:
            voxelSize = float(np.max(np.linalg.norm(ijkToWorld[:3, :3], axis=0)))
            sliceNode = sliceNodeContaining(rasPoint, tolerance=voxelSize)
        sliceToRas = slicer.util.arrayFromVTKMatrix(sliceNode.GetSliceToRAS())
        axis = helpers.views.axis_for_view(
            sliceToRas, ijkToWorld, toleranceDegrees, view_name=sliceNode.GetName()
        ).axis
    shape = slicer.util.arrayFromVolume(volumeNode).shape
    return helpers.transforms.slice_point(rasPoint, ijkToWorld, axis, shape)


def sliceNodeContaining(rasPoint, tolerance):
    """The slice view whose plane passes nearest to the point (when the view is not known);
    a point farther than ``tolerance`` mm from every slice plane was not placed in a slice view."""
    best, bestDistance = None, None
    for sliceNode in slicer.util.getNodesByClass("vtkMRMLSliceNode"):
        matrix = slicer.util.arrayFromVTKMatrix(sliceNode.GetSliceToRAS())
        normal = matrix[:3, 2] / np.linalg.norm(matrix[:3, 2])
        distance = abs(float(np.dot(normal, np.asarray(rasPoint) - matrix[:3, 3])))
        if bestDistance is None or distance < bestDistance:
            best, bestDistance = sliceNode, distance
    if best is None:
        raise invalidInput("No slice view found: give the axis (0=k, 1=j, 2=i) explicitly.")
    if bestDistance > tolerance:
        raise invalidInput(
            "The point is not on any slice view's plane (placed in the 3D view?): place points "
            "in the Red, Yellow or Green view, or give the axis (0=k, 1=j, 2=i) explicitly."
        )
    return best


def sliceNodeUnderCursor():
    """The slice view the mouse is in (where a point was just placed), from the crosshair."""
    crosshair = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
    if crosshair is None:
        return None
    xyz = [0.0, 0.0, 0.0]
    return crosshair.GetCursorPositionXYZ(xyz)
