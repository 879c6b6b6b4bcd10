"""One undo history for the module's writes: Slicer's segmentation history.

The Segment Editor's Undo and Redo restore states saved in a ``vtkSegmentationHistory``; since
Slicer 5.10 the editor keeps it in its ``vtkSlicerSegmentEditorLogic`` (``SaveStateForUndo``
before an edit, ``Undo``/``Redo`` after). A state is a copy of every segment's labelmaps (layers
unchanged since the previous state are shared, not copied), so an undo restores every segment
exactly, including voxels a write erased from other segments.

The module saves one state per user action (a click, a point moved or deleted, a propagation),
just before the first voxel of that action changes (:class:`ActionStates`):

- in the application, into the Segment Editor widget's own history (:class:`WidgetHistory`), so
  the editor's Undo/Redo buttons and Ctrl+Z in the editor take back the module's edits too;
- from the Python console, without the widget, into a history the Logic owns
  (:class:`EditorLogicHistory`), a ``vtkSlicerSegmentEditorLogic`` bound to the module's segment
  editor node; ``logic.undo()`` and ``logic.redo()`` use it.

This file is Qt-free: the widget is only called through its Python methods.
"""
from __future__ import annotations

import slicer

#: how many states the console history keeps (the Segment Editor widget keeps its own setting)
DEFAULT_MAXIMUM_STATES = 10


class EditorLogicHistory:
    """Slicer's segmentation history through a ``vtkSlicerSegmentEditorLogic`` of our own."""

    def __init__(self, scene, segmentEditorNode, maximumStates=DEFAULT_MAXIMUM_STATES):
        self.editorLogic = slicer.vtkSlicerSegmentEditorLogic()
        self.editorLogic.SetMRMLScene(scene)
        self.editorLogic.SetSegmentEditorNode(segmentEditorNode)
        self.editorLogic.SetMaximumNumberOfUndoStates(int(maximumStates))
        self._segmentationNode = None

    def bind(self, segmentationNode, volumeNode=None):
        """Follow ``segmentationNode`` (a new one starts an empty history, as in the editor)."""
        if segmentationNode is not self._segmentationNode:
            self.editorLogic.SetSegmentationNode(segmentationNode)
            self._segmentationNode = segmentationNode
        if volumeNode is not None and self.editorLogic.GetSourceVolumeNode() is not volumeNode:
            self.editorLogic.SetSourceVolumeNode(volumeNode)

    def saveState(self) -> bool:
        return bool(self.editorLogic.SaveStateForUndo())

    def undo(self):
        self.editorLogic.Undo()

    def redo(self):
        self.editorLogic.Redo()

    def canUndo(self) -> bool:
        return bool(self.editorLogic.CanUndo())

    def canRedo(self) -> bool:
        return bool(self.editorLogic.CanRedo())


class WidgetHistory:
    """The Segment Editor widget's own history (``qMRMLSegmentEditorWidget``), the one behind
    its Undo/Redo buttons. The widget must show the segmentation being written."""

    def __init__(self, segmentEditorWidget):
        self.widget = segmentEditorWidget

    def bind(self, segmentationNode, volumeNode=None):
        if self.widget.segmentationNode() is not segmentationNode:
            self.widget.setSegmentationNode(segmentationNode)

    def saveState(self) -> bool:
        self.widget.saveStateForUndo()
        return True

    def undo(self):
        self.widget.undo()

    def redo(self):
        self.widget.redo()


class ActionStates:
    """Saves one history state per user action, however many writes the action makes.

    Each action (a click, a point moved or deleted, a propagation) takes a number from
    :meth:`newAction` when it is queued; its results may arrive later and in several writes.
    ``beforeWrite(action)`` is the writer's hook: it saves a state at the first write of each
    action only, so actions queued back to back still get a state each.
    """

    def __init__(self, saveState):
        self._saveState = saveState
        self._counter = 0
        self._lastSaved = None

    def newAction(self) -> int:
        self._counter += 1
        return self._counter

    def beforeWrite(self, action=None):
        """The hook for ``SegmentWriter.write``; ``action`` None: a write that is its own action."""
        action = self.newAction() if action is None else action
        if action != self._lastSaved:
            self._saveState()
            self._lastSaved = action

    def hook(self, action=None):
        return lambda: self.beforeWrite(action)
