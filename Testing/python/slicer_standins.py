"""Only what the ``slicer-core`` wheel lacks, so that the module runs on Slicer's own MRML.

``slicer-core`` (Kitware's wheel) is Slicer's non-Qt code: ``import slicer`` gives the MRML
scene and node classes, storage nodes, the module logics (segmentations, markups, volumes,
colors, ...), ``vtkSlicerSegmentEditorLogic``, the slice logic and displayable managers, and
Slicer's own ``slicer/util.py``. It has no application: no ``slicer.mrmlScene``, no
``slicer.app``, no ``slicer.modules``, no ``slicer.ScriptedLoadableModule`` and no Qt.

This file supplies exactly those, and nothing MRML:

- ``slicer.mrmlScene``: a real ``vtkMRMLScene`` with a real ``vtkSlicerApplicationLogic`` and
  the module logics a Slicer application registers (:func:`new_scene` makes a fresh one);
- ``slicer.modules.<name>.logic()``: those real logics;
- ``slicer.app``: testing mode, signals, and a core IO manager that dispatches to the real
  readers and writers (the volumes logic's archetype reader, the segmentations logic's reader,
  the markups logic's reader, the scene's own ``Connect``/``Import``, the application logic's
  data-bundle writer, the nodes' default storage nodes), as Slicer's Qt readers do;
- ``slicer.ScriptedLoadableModule``: the four base classes, behaving as Slicer's
  ``Base/Python/slicer/ScriptedLoadableModule.py`` does where the module relies on it
  (parameter nodes, module name, self-test discovery);
- ``qt`` and ``ctk`` modules, and the Slicer Qt widgets the module's .ui names
  (``qMRMLNodeComboBox``, ``qMRMLSegmentEditorWidget``, ``qSlicerMarkupsPlaceWidget``, ...):
  plain Python objects with the properties, methods and signals the module uses. Unknown
  methods raise AttributeError (no silent no-op). ``QUiLoader`` builds them from the real
  ``.ui`` file, so a widget name the code uses and the .ui lacks fails here too.

Use from pytest (see conftest.py)::

    def test_something(slicer_env):
        slicer, scene, module = slicer_env.slicer, slicer_env.scene, slicer_env.module
        logic = module.iSegFormerSlicerLogic()
        volume = slicer.util.addVolumeFromArray(array, ijk_to_ras)   # Slicer's own util

``slicer_env`` gives a fresh real scene per test, with the iSegFormerSlicer module imported
from the source tree. ``slicer_env.app`` is the ``slicer.app`` stand-in; a Qt signal is fired
with ``widget.emit("clicked()")``. Slice views rendered offscreen are built on this scene
elsewhere (``slicer_offscreen.py``). Outside pytest::

    import slicer_standins
    slicer = slicer_standins.install()      # idempotent
    scene = slicer_standins.new_scene()     # becomes slicer.mrmlScene

What only a real Slicer application can show is not here: the real Qt widgets and their
own reactions (for example a node combo box selecting a node by itself), the module's
loading by the application, and Qt's translation of mouse events into VTK events.
"""
from __future__ import annotations

import os
import sys
import types
import unittest
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "iSegFormerSlicer"

#: Why tests skip where the wheel is missing.
SKIP_REASON = (
    "slicer-core (Slicer's own MRML as a pip wheel) is not installed: "
    "pip install -e '.[test]' installs it; these tests run the module on Slicer's code"
)


def available() -> bool:
    """True when Slicer's wheel can be imported here."""
    import importlib.util

    return importlib.util.find_spec("slicer_core") is not None


# ---- Qt: plain objects with properties and signals ---------------------------------------------


def _signal_key(signal: str) -> str:
    return signal.replace(" ", "")


class QObject:
    """Properties are attributes; ``connect(signal, slot)`` records, ``emit`` calls the slots."""

    def __init__(self, parent=None, *args, **kwargs):
        self._slots = {}
        self._children = []
        self.objectName = ""
        if isinstance(parent, QObject):
            parent._children.append(self)

    @property
    def name(self):  # PythonQt exposes objectName as .name too (slicer.util.childWidgetVariables)
        return self.objectName

    @name.setter
    def name(self, value):
        self.objectName = value

    def children(self):
        return list(self._children)

    def className(self):
        return type(self).__name__

    def connect(self, signal, slot):
        self._slots.setdefault(_signal_key(signal), []).append(slot)
        return True

    def disconnect(self, signal, slot=None):
        slots = self._slots.get(_signal_key(signal), [])
        self._slots[_signal_key(signal)] = [s for s in slots if slot is not None and s != slot]

    def slots(self, signal):
        """The slots connected to ``signal`` (tests check the wiring with it)."""
        return list(self._slots.get(_signal_key(signal), []))

    def emit(self, signal, *args):
        """Fire a signal as Qt would: every connected slot, in connection order."""
        for slot in list(self._slots.get(_signal_key(signal), [])):
            slot(*args)

    def deleteLater(self):
        pass


class QWidget(QObject):
    def __init__(self, parent=None, *args, **kwargs):
        super().__init__(parent)
        self.enabled = True
        self.visible = False
        self.toolTip = ""
        self.styleSheet = ""
        self._layout = None

    def show(self):
        self.visible = True

    def hide(self):
        self.visible = False

    def setVisible(self, visible):
        self.visible = bool(visible)

    def setEnabled(self, enabled):
        self.enabled = bool(enabled)

    def layout(self):
        return self._layout

    def setLayout(self, layout):
        self._layout = layout


class QLayout(QObject):
    def __init__(self, parent=None, *args, **kwargs):
        super().__init__(parent if isinstance(parent, QObject) else None)
        self.widgets = []
        if isinstance(parent, QWidget):
            parent.setLayout(self)

    def addWidget(self, widget, *args):
        self.widgets.append(widget)
        self._children.append(widget)

    def addRow(self, *items):
        for item in items:
            if isinstance(item, QWidget):
                self.addWidget(item)


QVBoxLayout = QHBoxLayout = QFormLayout = QGridLayout = QLayout


class QLabel(QWidget):
    def __init__(self, text="", parent=None, *args):
        super().__init__(parent)
        self.text = text
        self.wordWrap = False


class QAbstractButton(QWidget):
    def __init__(self, text="", parent=None, *args):
        super().__init__(parent if isinstance(parent, QObject) else None)
        self.text = text if isinstance(text, str) else ""
        self.checkable = False
        self._checked = False

    @property
    def checked(self):
        return self._checked

    @checked.setter
    def checked(self, value):
        self.setChecked(value)

    def setChecked(self, value):
        value = bool(value)
        if value != self._checked:
            self._checked = value
            self.emit("toggled(bool)", value)

    def isChecked(self):
        return self._checked

    def click(self):
        """What a user's click does, in Qt's order: pressed(), released(), the check box
        toggled, then clicked()."""
        if not self.enabled:
            return
        self.emit("pressed()")
        self.emit("released()")
        if self.checkable or isinstance(self, QCheckBox):
            self.setChecked(not self._checked)
        self.emit("clicked()")


class QPushButton(QAbstractButton):
    pass


class QToolButton(QAbstractButton):
    pass


class QCheckBox(QAbstractButton):
    pass


class QComboBox(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self._items = []
        self._index = -1

    def addItem(self, text, *args):
        self._items.append(str(text))
        if self._index < 0:
            self._set_index(0)

    def clear(self):
        self._items = []
        self._set_index(-1)

    def count(self):
        return len(self._items)

    def itemText(self, index):
        return self._items[index] if 0 <= index < len(self._items) else ""

    def findText(self, text):
        return self._items.index(text) if text in self._items else -1

    def _set_index(self, index):
        if index != self._index:
            self._index = index
            self.emit("currentIndexChanged(int)", index)
            self.emit("currentTextChanged(QString)", self.currentText)

    @property
    def currentIndex(self):
        return self._index

    @currentIndex.setter
    def currentIndex(self, index):
        self.setCurrentIndex(index)

    def setCurrentIndex(self, index):
        self._set_index(index if 0 <= index < len(self._items) else -1)

    @property
    def currentText(self):
        return self.itemText(self._index)

    @currentText.setter
    def currentText(self, text):
        self.setCurrentText(text)

    def setCurrentText(self, text):
        if text in self._items:
            self._set_index(self._items.index(text))


class QSpinBox(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.minimum, self.maximum = 0, 99
        self._value = 0

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, value):
        value = min(max(int(value), self.minimum), self.maximum)
        if value != self._value:
            self._value = value
            self.emit("valueChanged(int)", value)


class QTimer(QObject):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.interval = 0
        self.singleShot_ = False
        self.active = False

    def setInterval(self, msec):
        self.interval = int(msec)

    def start(self, msec=None):
        if msec is not None:
            self.interval = int(msec)
        self.active = True

    def stop(self):
        self.active = False

    def isActive(self):
        return self.active

    @staticmethod
    def singleShot(msec, function):
        pass  # only closes a popup whose exec_() has already returned here

    def fire(self):
        """One timeout, as the event loop would deliver it (tests drive timers with it)."""
        if self.active:
            self.emit("timeout()")


class QKeySequence:
    def __init__(self, text=""):
        self.text = text


class QShortcut(QObject):
    def __init__(self, key=None, parent=None):
        super().__init__(parent)
        self.key = key
        self.enabled = True

    def setEnabled(self, enabled):
        self.enabled = bool(enabled)


class QIcon:
    def __init__(self, path=""):
        self.path = str(path)


class QFile:
    ReadOnly = 1

    def __init__(self, path):
        self.path = str(path)

    def exists(self):
        return os.path.isfile(self.path)

    def open(self, mode):
        return self.exists()

    def close(self):
        pass


class QProgressDialog(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent if isinstance(parent, QObject) else None)
        self.minimumDuration = 4000
        self.minimum, self.maximum, self.value = 0, 100, 0
        self.labelText = ""
        self.windowTitle = ""
        self.autoClose = True
        self.autoReset = True
        self.wasCanceled = False

    def cancel(self):
        """The dialog's Cancel button."""
        self.wasCanceled = True
        self.emit("canceled()")


class QDialog(QWidget):
    def exec_(self):
        return 0

    exec = exec_

    def close(self):
        self.visible = False


class QMessageBox(QWidget):
    Ok, Cancel, Yes, No = 0x400, 0x400000, 0x4000, 0x10000
    NoIcon, Information, Warning, Critical, Question = 0, 1, 2, 3, 4


class QSettings:
    _store: dict = {}

    def __init__(self, *args):
        pass

    def value(self, key, default=None):
        return QSettings._store.get(key, default)

    def setValue(self, key, value):
        QSettings._store[key] = value

    def contains(self, key):
        return key in QSettings._store


class Qt:
    WaitCursor, ArrowCursor = 3, 0
    NoModifier, ShiftModifier, ControlModifier = 0, 0x02000000, 0x04000000
    Horizontal, Vertical = 1, 2


# ---- ctk and Slicer's Qt widgets ----------------------------------------------------------------


class ctkCollapsibleButton(QAbstractButton):
    def __init__(self, parent=None):
        super().__init__("", parent)
        self.collapsed = False


class ctkPathLineEdit(QWidget):
    Files, Dirs, Readable, Writable = 0x2, 0x1, 0x100, 0x200

    def __init__(self, parent=None):
        super().__init__(parent)
        self._path = ""
        self.nameFilters = []
        self.filters = 0

    @property
    def currentPath(self):
        return self._path

    @currentPath.setter
    def currentPath(self, path):
        self.setCurrentPath(path)

    def setCurrentPath(self, path):
        path = str(path)
        if path != self._path:
            self._path = path
            self.emit("currentPathChanged(QString)", path)


class qMRMLWidget(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene):
        self._scene = scene
        self.emit("mrmlSceneChanged(vtkMRMLScene*)", scene)

    def mrmlScene(self):
        return self._scene


class qSlicerScriptedLoadableModuleWidget(qMRMLWidget):
    """The application's panel around a scripted module's widget: a layout and ``isEntered``."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setLayout(QVBoxLayout(self))
        self.isEntered = False


class qMRMLNodeComboBox(qMRMLWidget):
    """Holds the selected node. The real one also selects a node by itself when one is added
    and none is selected; that Qt behaviour is not reproduced (tests select explicitly)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.nodeTypes = []
        self.addEnabled = self.removeEnabled = self.renameEnabled = False
        self.noneEnabled = False
        self.showChildNodeTypes = True
        self.selectNodeUponCreation = True
        self._node = None

    def currentNode(self):
        return self._node

    def currentNodeID(self):
        return self._node.GetID() if self._node is not None else ""

    def setCurrentNode(self, node):
        if node is not self._node:
            self._node = node
            self.emit("currentNodeChanged(vtkMRMLNode*)", node)
            self.emit("currentNodeChanged(bool)", node is not None)

    def setCurrentNodeID(self, node_id):
        self.setCurrentNode(self._scene.GetNodeByID(node_id) if self._scene and node_id else None)


class qMRMLSegmentEditorWidget(qMRMLWidget):
    """Keeps its selection in the segment editor node, as the real widget does, and saves undo
    states through Slicer's own ``vtkSlicerSegmentEditorLogic`` (what the widget delegates to
    since Slicer 5.10)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.segmentationNodeSelectorVisible = True
        self.sourceVolumeNodeSelectorVisible = True
        self.switchToSegmentationsButtonVisible = True
        self.maximumNumberOfUndoStates = 10
        self._editorNode = None
        self._editorLogic = None
        self.activeEffect = None
        # the real widget's Undo and Redo tool buttons (qMRMLSegmentEditorWidget.ui), each
        # clicked() connected to the widget's undo()/redo() when the widget is made
        for name, slot in (("UndoButton", self.undo), ("RedoButton", self.redo)):
            button = QToolButton("", self)
            button.objectName = name
            button.connect("clicked()", slot)

    def setMRMLSegmentEditorNode(self, node):
        import slicer

        self._editorNode = node
        self._editorLogic = slicer.vtkSlicerSegmentEditorLogic()
        self._editorLogic.SetMRMLScene(self._scene or slicer.mrmlScene)
        self._editorLogic.SetSegmentEditorNode(node)
        self._editorLogic.SetMaximumNumberOfUndoStates(int(self.maximumNumberOfUndoStates))
        segmentation = node.GetSegmentationNode() if node is not None else None
        if segmentation is not None:
            self._editorLogic.SetSegmentationNode(segmentation)

    def mrmlSegmentEditorNode(self):
        return self._editorNode

    def segmentEditorLogic(self):
        return self._editorLogic

    def _node(self):
        if self._editorNode is None:
            raise RuntimeError("qMRMLSegmentEditorWidget: setMRMLSegmentEditorNode() was not called")
        return self._editorNode

    def setSegmentationNode(self, node):
        if node is not self._node().GetSegmentationNode():
            self._node().SetAndObserveSegmentationNode(node)
            self._editorLogic.SetSegmentationNode(node)
            self.emit("segmentationNodeChanged(vtkMRMLSegmentationNode*)", node)

    def segmentationNode(self):
        return self._node().GetSegmentationNode()

    def setCurrentSegmentID(self, segment_id):
        self._node().SetSelectedSegmentID(segment_id or None)
        self.emit("currentSegmentIDChanged(QString)", segment_id or "")

    def currentSegmentID(self):
        return self._node().GetSelectedSegmentID() or ""

    def setSourceVolumeNode(self, node):
        self._node().SetAndObserveSourceVolumeNode(node)
        self._editorLogic.SetSourceVolumeNode(node)

    def sourceVolumeNode(self):
        return self._node().GetSourceVolumeNode()

    def setSourceVolumeNodeSelectorVisible(self, visible):
        self.sourceVolumeNodeSelectorVisible = bool(visible)

    def setActiveEffect(self, effect):
        self.activeEffect = effect

    def saveStateForUndo(self):
        self._editorLogic.SaveStateForUndo()

    def undo(self):
        self._editorLogic.Undo()

    def redo(self):
        self._editorLogic.Redo()


class qSlicerMarkupsPlaceWidget(qMRMLWidget):
    """Place mode through Slicer's own markups logic and interaction node, as the real widget
    does (the active list in the selection node, then persistent or single place mode)."""

    ForcePlaceSingleMarkup, ForcePlaceMultipleMarkups, ShowPlaceMultipleMarkupsOption, HidePlaceMultipleMarkupsOption = range(4)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._current = None
        self.placeMultipleMarkups = self.ShowPlaceMultipleMarkupsOption
        self.buttonsVisible = True
        self.deleteAllControlPointsOptionVisible = True
        self._placeButton = QToolButton("Place", self)
        self._deleteButton = QToolButton("Delete", self)

    def setCurrentNode(self, node):
        self._current = node
        self.emit("currentNodeChanged(vtkMRMLNode*)", node)

    def currentNode(self):
        return self._current

    def placeButton(self):
        return self._placeButton

    def deleteButton(self):
        return self._deleteButton

    def _interaction(self):
        import slicer

        return slicer.app.applicationLogic().GetInteractionNode()

    @property
    def placeModeEnabled(self):
        import slicer

        interaction = self._interaction()
        selection = slicer.app.applicationLogic().GetSelectionNode()
        return bool(
            self._current is not None and interaction.GetCurrentInteractionMode() == interaction.Place
            and selection.GetActivePlaceNodeID() == self._current.GetID()
        )

    @placeModeEnabled.setter
    def placeModeEnabled(self, enabled):
        self.setPlaceModeEnabled(enabled)

    def setPlaceModeEnabled(self, enabled):
        import slicer

        interaction = self._interaction()
        if enabled:
            if self._current is None:
                return
            slicer.modules.markups.logic().SetActiveList(self._current)
            if self.placeMultipleMarkups == self.ForcePlaceSingleMarkup:
                interaction.SwitchToSinglePlaceMode()
            else:
                interaction.SwitchToPersistentPlaceMode()
        elif self.placeModeEnabled:
            interaction.SwitchToViewTransformMode()
        self.emit("activeMarkupsFiducialPlaceModeChanged(bool)", bool(enabled))


class QUiLoader:
    """Builds the stand-in widgets a .ui file names (classes, object names, tree, properties)."""

    def load(self, qfile, parent=None):
        tree = ElementTree.parse(qfile.path)
        top = tree.getroot().find("widget")
        if top is None:
            return None
        widget = self._build(top, parent)
        widget.uiFile = qfile.path  # which .ui was loaded (tests check it)
        return widget

    def _build(self, element, parent):
        cls = _WIDGET_CLASSES.get(element.get("class"))
        if cls is None:
            raise AttributeError(f"slicer_standins has no stand-in for the widget class {element.get('class')!r}")
        widget = cls()
        if parent is not None:
            parent._children.append(widget)
        widget.objectName = element.get("name", "")
        for prop in element.findall("property"):
            self._set(widget, prop)
        if isinstance(widget, QComboBox):
            for item in element.findall("item"):
                text = item.find("property/string")
                widget.addItem(text.text if text is not None and text.text else "")
        for child in self._child_widgets(element):
            self._build(child, widget)
        return widget

    @staticmethod
    def _child_widgets(element):
        """Widgets directly inside ``element``, looking through layouts and items."""
        found = []
        for child in element:
            if child.tag == "widget":
                found.append(child)
            elif child.tag in ("layout", "item"):
                found += QUiLoader._child_widgets(child)
        return found

    @staticmethod
    def _set(widget, prop):
        name = prop.get("name")
        if name in ("geometry", "sizeHint", "sizePolicy", "orientation", "alignment"):
            return
        value = prop[0] if len(prop) else None
        if value is None:
            return
        if value.tag == "bool":
            parsed = value.text == "true"
        elif value.tag in ("number", "enum", "set"):
            parsed = int(value.text) if value.tag == "number" else value.text
        elif value.tag == "double":
            parsed = float(value.text)
        elif value.tag == "stringlist":
            parsed = [s.text or "" for s in value.findall("string")]
        else:
            parsed = value.text or ""
        setattr(widget, name, parsed)


def build_module_widget(widgetClass):
    """Build a module widget as Slicer does: in its panel (qSlicerScriptedLoadableModuleWidget),
    then ``setup()``. Returns the widget; :func:`enter_module` and :func:`exit_module` follow."""
    widget = widgetClass(qSlicerScriptedLoadableModuleWidget())
    widget.setup()
    return widget


def enter_module(widget):
    """The user opens the module: the panel is entered, then the widget's ``enter()`` runs."""
    widget.parent.isEntered = True
    widget.enter()


def exit_module(widget):
    widget.exit()
    widget.parent.isEntered = False


_WIDGET_CLASSES = {
    cls.__name__: cls
    for cls in (QWidget, QLabel, QPushButton, QToolButton, QCheckBox, QComboBox, QSpinBox, ctkCollapsibleButton,
                ctkPathLineEdit, qMRMLWidget, qMRMLNodeComboBox, qMRMLSegmentEditorWidget, qSlicerMarkupsPlaceWidget)
}


def _qt_module() -> types.ModuleType:
    qt = types.ModuleType("qt")
    qt.__doc__ = "Stand-in for PythonQt's qt module (Testing/python/slicer_standins.py)."
    for cls in (QObject, QWidget, QLabel, QPushButton, QToolButton, QCheckBox, QComboBox, QSpinBox, QTimer,
                QKeySequence, QShortcut, QIcon, QFile, QProgressDialog, QDialog, QMessageBox, QSettings, Qt,
                QUiLoader):
        setattr(qt, cls.__name__, cls)
    qt.QVBoxLayout = qt.QHBoxLayout = qt.QFormLayout = qt.QGridLayout = QLayout
    return qt


def _ctk_module() -> types.ModuleType:
    ctk = types.ModuleType("ctk")
    ctk.__doc__ = "Stand-in for CTK's Python widgets (Testing/python/slicer_standins.py)."
    ctk.ctkCollapsibleButton = ctkCollapsibleButton
    ctk.ctkPathLineEdit = ctkPathLineEdit
    return ctk


# ---- slicer.app and its IO manager --------------------------------------------------------------


class CoreIOManager:
    """``slicer.app.coreIOManager()``: the file types slicer.util's load/save functions use,
    each handled by the real Slicer logic or storage node that Slicer's own Qt reader calls."""

    _LOADERS = ("VolumeFile", "SegmentationFile", "MarkupsFile", "SceneFile")

    def fileType(self, filename):
        name = str(filename).lower()
        if name.endswith(".mrml"):
            return "SceneFile"
        if name.endswith(".seg.nrrd") or name.endswith(".seg.nhdr"):
            return "SegmentationFile"
        if name.endswith((".mrk.json", ".fcsv")):
            return "MarkupsFile"
        return "VolumeFile"

    def loadNodes(self, filetype, properties, loadedNodes=None, userMessages=None):
        import slicer

        filename = str(properties["fileName"])
        name = properties.get("name")
        node = None
        if filetype == "VolumeFile":  # qSlicerVolumesReader::load
            options = 0
            for key, bit in (("labelmap", 0x1), ("center", 0x2), ("singleFile", 0x4),
                             ("autoWindowLevel", 0x8), ("discardOrientation", 0x10)):
                options |= bit if properties.get(key) else 0
            fileList = None
            if properties.get("fileNames"):
                import vtk

                fileList = vtk.vtkStringArray()
                for file in properties["fileNames"]:
                    fileList.InsertNextValue(str(file))
            base = name or Path(filename).name.split(".")[0]
            node = slicer.modules.volumes.logic().AddArchetypeVolume(filename, base, options, fileList)
        elif filetype == "SegmentationFile":  # qSlicerSegmentationsReader::load
            node = slicer.modules.segmentations.logic().LoadSegmentationFromFile(
                filename, bool(properties.get("autoOpacities", True)), name or "")
        elif filetype == "MarkupsFile":  # qSlicerMarkupsReader::load
            nodeId = slicer.modules.markups.logic().LoadMarkups(filename, name or None)
            node = slicer.mrmlScene.GetNodeByID(nodeId) if nodeId else None
        elif filetype == "SceneFile":  # qSlicerSceneReader::load
            scene = slicer.mrmlScene
            scene.SetURL(filename)
            ok = scene.Connect(userMessages) if properties.get("clear") else scene.Import(userMessages)
            return bool(ok)
        else:
            raise ValueError(f"slicer_standins: no reader for file type {filetype!r} (known: {self._LOADERS})")
        if node is not None and loadedNodes is not None:
            loadedNodes.AddItem(node)
        return node is not None

    def fileWriterFileType(self, node):
        return "SceneFile" if node is None else "NodeFile"

    def saveNodes(self, filetype, properties, userMessages=None):
        import slicer

        filename = str(properties["fileName"])
        if filetype == "SceneFile":  # qSlicerSceneWriter: a directory (data bundle) or a .mrml file
            scene = slicer.mrmlScene
            if filename.lower().endswith(".mrml"):
                scene.SetURL(filename)
                scene.SetRootDirectory(str(Path(filename).parent))
                return bool(scene.Commit())
            if filename.lower().endswith(".mrb"):
                raise ValueError("slicer_standins: save the scene to a directory or a .mrml file (no .mrb)")
            os.makedirs(filename, exist_ok=True)
            return bool(slicer.app.applicationLogic().SaveSceneToSlicerDataBundleDirectory(filename, None))
        node = slicer.mrmlScene.GetNodeByID(properties["nodeID"])  # qSlicerNodeWriter::write
        storage = node.GetStorageNode()
        if storage is None:
            node.AddDefaultStorageNode()
            storage = node.GetStorageNode()
        storage.SetFileName(filename)
        return bool(storage.WriteData(node))


class _ModuleManager(QObject):
    pass


class SlicerApp(QObject):
    """``slicer.app``: testing mode on, no main window, signals recorded, real application logic."""

    applicationName = "Slicer"
    majorVersion, minorVersion = 5, 13

    def __init__(self):
        super().__init__()
        self._applicationLogic = None
        self._io = CoreIOManager()
        self._modules = _ModuleManager()
        self.renderPaused = 0

    def testingEnabled(self):
        return True

    def applicationLogic(self):
        return self._applicationLogic

    def mrmlScene(self):
        import slicer

        return slicer.mrmlScene

    def coreIOManager(self):
        return self._io

    ioManager = coreIOManager

    def moduleManager(self):
        return self._modules

    def topLevelWidgets(self):
        return []  # no main window: slicer.util.mainWindow() is None, as in a headless Slicer

    def layoutManager(self):
        return None

    def processEvents(self, *args):
        pass

    def pauseRender(self):
        self.renderPaused += 1

    def resumeRender(self):
        self.renderPaused -= 1

    def setOverrideCursor(self, cursor):
        pass

    def restoreOverrideCursor(self):
        pass

    def settings(self):
        return QSettings()

    userSettings = settings


# ---- slicer.ScriptedLoadableModule ---------------------------------------------------------------


def _scripted_loadable_module() -> types.ModuleType:
    """The four base classes; each method here behaves as Slicer's own of the same name."""
    import slicer

    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    slm.__doc__ = "Stand-in for Slicer's Base/Python/slicer/ScriptedLoadableModule.py (slicer_standins.py)."

    class ScriptedLoadableModule:
        def __init__(self, parent):
            super().__init__()
            self.parent = parent
            self.moduleName = self.__class__.__name__
            parent.title = ""
            parent.categories = []
            parent.dependencies = []
            parent.contributors = []
            parent.helpText = ""
            parent.acknowledgementText = ""
            moduleDir = os.path.dirname(getattr(parent, "path", "") or "")
            for extension in (".svg", ".png"):
                icon = os.path.join(moduleDir, "Resources/Icons", self.moduleName + extension)
                if os.path.isfile(icon):
                    parent.icon = QIcon(icon)
                    break
            if not hasattr(slicer, "selfTests"):
                slicer.selfTests = {}
            slicer.selfTests[self.moduleName] = self.runTest

        def resourcePath(self, filename):
            return os.path.join(os.path.dirname(self.parent.path), "Resources", filename)

        def runTest(self, msec=100, **kwargs):
            import importlib

            module = importlib.import_module(self.__module__)
            testCase = getattr(module, self.moduleName + "Test")()
            testCase.messageDelay = msec
            testCase.runTest(**kwargs)

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            super().__init__()
            self.moduleName = self.__class__.__name__
            if self.moduleName.endswith("Widget"):
                self.moduleName = self.moduleName[:-6]
            self.developerMode = False
            if not parent:
                self.parent = slicer.qMRMLWidget()
                self.parent.setLayout(QVBoxLayout())
                self.parent.setMRMLScene(slicer.mrmlScene)
            else:
                self.parent = parent
            self.layout = self.parent.layout()
            if not parent:
                self.setup()
                self.parent.show()
            slicer.app.moduleManager().connect("moduleAboutToBeUnloaded(QString)", self._onModuleAboutToBeUnloaded)

        def resourcePath(self, filename):
            raise AttributeError(
                "ScriptedLoadableModuleWidget.resourcePath() looks beside the module file only; "
                "the module uses its own moduleResourcePath(), which also knows the source checkout")

        def cleanup(self):
            pass

        def _onModuleAboutToBeUnloaded(self, moduleName):
            if moduleName == self.moduleName:
                self.cleanup()
                slicer.app.moduleManager().disconnect("moduleAboutToBeUnloaded(QString)", self._onModuleAboutToBeUnloaded)

        def setupDeveloperSection(self):
            pass  # developer mode is off

        def setup(self):
            self.setupDeveloperSection()

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            super().__init__()
            self.moduleName = self.__class__.__name__
            if self.moduleName.endswith("Logic"):
                self.moduleName = self.moduleName[:-5]
            self.isSingletonParameterNode = True

        def getParameterNode(self):
            scene = slicer.mrmlScene
            if self.isSingletonParameterNode:
                node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
                if node:
                    if node.GetAttribute("ModuleName") != self.moduleName:
                        node.SetAttribute("ModuleName", self.moduleName)
                    return node
            else:
                for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode")):
                    node = scene.GetNthNodeByClass(index, "vtkMRMLScriptedModuleNode")
                    if node.GetAttribute("ModuleName") == self.moduleName:
                        return node
            return scene.AddNode(self.createParameterNode())

        def getAllParameterNodes(self):
            scene = slicer.mrmlScene
            nodes = []
            for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode")):
                node = scene.GetNthNodeByClass(index, "vtkMRMLScriptedModuleNode")
                if node.GetAttribute("ModuleName") == self.moduleName:
                    nodes.append(node)
            return nodes

        def createParameterNode(self):
            scene = slicer.mrmlScene
            node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            if self.isSingletonParameterNode:
                node.SetSingletonTag(self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
            node.SetName(scene.GenerateUniqueName(self.moduleName))
            return node

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def __init__(self, *args, **kwargs):
            self.moduleTestNames = []
            super().__init__(*args, **kwargs)
            if not self.moduleTestNames:
                self.moduleTestNames = [m for m in dir(self) if "test" in m and callable(getattr(self, m))]

        def delayDisplay(self, message, requestedDelay=None, msec=None):
            if hasattr(self, "messageDelay"):
                msec = self.messageDelay
            if msec is None:
                msec = requestedDelay
            if msec is None:
                msec = 100
            slicer.util.delayDisplay(message, msec)  # Slicer's own: logs, then processEvents or a popup

        def takeScreenshot(self, name, description, type=-1):
            self.delayDisplay(description)

        def runTest(self):
            self.setUpClass()
            for name in self.moduleTestNames:
                self.setUp()
                getattr(self, name)()
                self.tearDown()
            self.tearDownClass()

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest):
        cls.__module__ = slm.__name__
        setattr(slm, cls.__name__, cls)
    slm.__all__ = [c.__name__ for c in (ScriptedLoadableModule, ScriptedLoadableModuleWidget,
                                        ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest)]
    return slm


# ---- the scene and the module logics ---------------------------------------------------------------

#: slicer.modules.<key>.logic() -> a real logic, registered under <name> in the application logic
_LOGICS = (
    ("colors", "Colors", "vtkSlicerColorLogic"),
    ("volumes", "Volumes", "vtkSlicerVolumesLogic"),
    ("segmentations", "Segmentations", "vtkSlicerSegmentationsModuleLogic"),
    ("markups", "Markups", "vtkSlicerMarkupsLogic"),
    ("transforms", "Transforms", "vtkSlicerTransformLogic"),
    ("sequences", "Sequences", "vtkSlicerSequencesLogic"),
    ("subjecthierarchy", "SubjectHierarchy", "vtkSlicerSubjectHierarchyModuleLogic"),
)


class _LoadedModule:
    def __init__(self, logic):
        self._logic = logic

    def logic(self):
        return self._logic


_installed = None
_temporary = None


def _temporary_folder():
    """One folder per process for the temporary files Slicer's logics write."""
    global _temporary
    if _temporary is None:
        import atexit
        import shutil
        import tempfile

        _temporary = tempfile.mkdtemp(prefix="slicer-standins-")
        atexit.register(shutil.rmtree, _temporary, True)
    return _temporary


def install():
    """Complete ``import slicer`` with what slicer-core lacks (once); returns the slicer module."""
    global _installed
    if _installed is not None:
        return _installed
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # offscreen views, no X11 try
    import slicer  # Slicer's own (slicer-core): MRML, logics, slicer.util

    sys.modules.setdefault("qt", _qt_module())
    sys.modules.setdefault("ctk", _ctk_module())
    for cls in (qMRMLWidget, qSlicerScriptedLoadableModuleWidget, qMRMLNodeComboBox, qMRMLSegmentEditorWidget,
                qSlicerMarkupsPlaceWidget):
        setattr(slicer, cls.__name__, cls)
    slicer.app = SlicerApp()
    slicer.modules = types.SimpleNamespace()
    slm = _scripted_loadable_module()
    slicer.ScriptedLoadableModule = slm
    sys.modules["slicer.ScriptedLoadableModule"] = slm
    slicer.selfTests = {}
    _installed = slicer
    new_scene()
    return slicer


def new_scene():
    """A fresh real scene with its application logic and module logics; becomes slicer.mrmlScene."""
    slicer = install()
    previous = getattr(slicer, "mrmlScene", None)
    scene = slicer.vtkMRMLScene()
    appLogic = slicer.vtkSlicerApplicationLogic()
    # An application's home has share/ColorFiles; the wheel ships no color files, so an empty
    # one: the colors logic makes its built-in tables only, and does not complain.
    home = _temporary_folder()
    os.makedirs(os.path.join(home, "share", "ColorFiles"), exist_ok=True)
    appLogic.SetHomeDirectory(home)
    appLogic.SetShareDirectory("share")
    appLogic.SetTemporaryPath(_temporary_folder())
    appLogic.SetMRMLScene(scene)
    modules = types.SimpleNamespace()
    for key, name, className in _LOGICS:
        logic = getattr(slicer, className)()
        logic.SetMRMLApplicationLogic(appLogic)
        logic.SetMRMLScene(scene)
        appLogic.SetModuleLogic(name, logic)
        setattr(modules, key, _LoadedModule(logic))
    slicer.mrmlScene = scene
    slicer.modules = modules
    slicer.app._applicationLogic = appLogic
    if previous is not None and previous is not scene:
        previous.Clear(1)
    return scene


def import_module(module_dir: Path = MODULE_DIR, fresh: bool = True):
    """Import the iSegFormerSlicer module (the source tree's, or a copy laid out elsewhere)."""
    import importlib

    install()
    for name in [n for n in sys.modules if n == "iSegFormerSlicer" or n.startswith("iSegFormerSlicerLib")]:
        if fresh:
            del sys.modules[name]
    for path in (str(module_dir), str(ROOT / "Logic")):
        if path in sys.path:
            sys.path.remove(path)
    sys.path.insert(0, str(module_dir))
    if (ROOT / "Logic") != module_dir:
        sys.path.append(str(ROOT / "Logic"))
    return importlib.import_module("iSegFormerSlicer")
