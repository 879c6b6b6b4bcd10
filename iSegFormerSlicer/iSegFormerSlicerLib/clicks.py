"""The points a user places: two point lists (positive, negative) and a record per point.

Every point carries its sign twice, so that it survives renaming and saving: the list has
the attribute ``iSegFormer.Sign`` ("positive" or "negative") and a name that says it, and
each control point the module places or handles has that word as its description (a
``.mrk.json`` file stores descriptions; Slicer does not store a list's name in it).
"""
import vtk

import slicer

POSITIVE = "positive"
NEGATIVE = "negative"
POSITIVE_NODE_NAME = "iSegFormer positive clicks"
NEGATIVE_NODE_NAME = "iSegFormer negative clicks"
#: on the point lists: which sign their points have
SIGN_ATTRIBUTE = "iSegFormer.Sign"
#: set on a point list while the Logic adds or removes a point itself, so observers do not react
PLACING_ATTRIBUTE = "iSegFormer.PlacingProgrammatically"
_LISTS = (
    (POSITIVE, POSITIVE_NODE_NAME, (0.1, 0.8, 0.1), "+%d"),
    (NEGATIVE, NEGATIVE_NODE_NAME, (0.9, 0.1, 0.1), "-%d"),
)


def signWord(positive):
    return POSITIVE if positive else NEGATIVE


class ClickRecord:
    """One placed point: which list holds it, where it landed, and in which order it came."""

    def __init__(self, pointId, positive, segmentId, point, order):
        self.pointId = pointId
        self.positive = positive
        self.segmentId = segmentId
        self.point = point  # isegformer.slicer_support.transforms.SlicePoint
        self.order = order

    @property
    def sliceKey(self):
        return (self.segmentId, self.point.axis, self.point.index)


def _findList(sign, name):
    """The scene's point list of that sign: by its attribute (it survives a rename), else by name."""
    for node in slicer.util.getNodesByClass("vtkMRMLMarkupsFiducialNode"):
        if node.GetAttribute(SIGN_ATTRIBUTE) == sign:
            return node
    node = slicer.mrmlScene.GetFirstNodeByName(name)
    if node is not None and node.IsA("vtkMRMLMarkupsFiducialNode"):
        node.SetAttribute(SIGN_ATTRIBUTE, sign)
        return node
    return None


def getClickNodes(create=True):
    """(positive, negative) point lists of the scene, created on first use when ``create``."""
    nodes = []
    for sign, name, color, labelFormat in _LISTS:
        node = _findList(sign, name)
        if node is None and create:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
            node.SetAttribute(SIGN_ATTRIBUTE, sign)
            node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().SetSelectedColor(*color)
            node.GetDisplayNode().SetColor(*color)
            if hasattr(node, "SetControlPointLabelFormat"):
                node.SetControlPointLabelFormat(labelFormat)
            else:  # Slicer before 5.0
                node.SetMarkupLabelFormat(labelFormat)
        nodes.append(node)
    return tuple(nodes)


def isPositiveList(node):
    """True for the positive list, False for the negative one, None for any other node."""
    sign = node.GetAttribute(SIGN_ATTRIBUTE) if node is not None else None
    return {POSITIVE: True, NEGATIVE: False}.get(sign)


def markSign(node, index, positive):
    """Write the point's sign into its description (kept in .mrk.json files and scenes)."""
    if 0 <= index < node.GetNumberOfControlPoints():
        word = signWord(positive)
        if node.GetNthControlPointDescription(index) != word:
            node.SetAttribute(PLACING_ATTRIBUTE, "1")
            try:
                node.SetNthControlPointDescription(index, word)
            finally:
                node.RemoveAttribute(PLACING_ATTRIBUTE)


def addControlPoint(node, rasPoint, positive):
    """Add a point at a world position, its sign in its description; observers are told not to react."""
    node.SetAttribute(PLACING_ATTRIBUTE, "1")
    try:
        index = node.AddControlPointWorld(vtk.vtkVector3d(*rasPoint))
        node.SetNthControlPointDescription(index, signWord(positive))
    finally:
        node.RemoveAttribute(PLACING_ATTRIBUTE)
    return index


def removeControlPoint(node, index):
    """Remove a point without the module's own observers reacting to it."""
    node.SetAttribute(PLACING_ATTRIBUTE, "1")
    try:
        node.RemoveNthControlPoint(index)
    finally:
        node.RemoveAttribute(PLACING_ATTRIBUTE)


def removePointById(pointId, positive):
    """Remove the point with this ID from the list of its sign (IDs are unique per list only:
    each list numbers its points from "1")."""
    node = getClickNodes(create=False)[0 if positive else 1]
    if node is not None:
        index = node.GetNthControlPointIndexByID(pointId)
        if index >= 0:
            removeControlPoint(node, index)


def movePointById(pointId, positive, rasPoint):
    """Put the point with this ID at a world position, without the module's observers reacting."""
    node = getClickNodes(create=False)[0 if positive else 1]
    if node is None:
        return
    index = node.GetNthControlPointIndexByID(pointId)
    if index < 0:
        return
    node.SetAttribute(PLACING_ATTRIBUTE, "1")
    try:
        node.SetNthControlPointPositionWorld(index, *(float(v) for v in rasPoint))
    finally:
        node.RemoveAttribute(PLACING_ATTRIBUTE)


def currentPositions():
    """{(positive, point ID): world position} of every point in both lists (an ID alone is
    ambiguous: each list numbers its points from "1")."""
    positions = {}
    for positive, node in zip((True, False), getClickNodes(create=False)):
        if node is None:
            continue
        for index in range(node.GetNumberOfControlPoints()):
            position = [0.0, 0.0, 0.0]
            node.GetNthControlPointPositionWorld(index, position)
            positions[(positive, node.GetNthControlPointID(index))] = position
    return positions


def isPlacingProgrammatically(node):
    return bool(node.GetAttribute(PLACING_ATTRIBUTE))
