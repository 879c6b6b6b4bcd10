"""Test doubles for the Slicer module: the session API the bridge uses, and a small fake Slicer.

The fake Slicer implements only the MRML calls ``iSegFormerSlicer.py``'s Logic makes, with the
semantics of Slicer's own code where it matters (segments as per-segment binary arrays on the
volume grid; ``SetBinaryLabelmapToSegment`` MIN/MASK merges limited to the given extent). Real
``vtk`` (matrices, image data) is used where the Logic uses it.
"""
from __future__ import annotations

import importlib.util
import sys
import types
import unittest
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from isegformer.slicer_support.transforms import take_slice

ROOT = Path(__file__).resolve().parents[2]
MODULE_FILE = ROOT / "iSegFormerSlicer" / "iSegFormerSlicer.py"


class FakeSession:
    """The part of isegformer.session.Session the bridge uses; a click sets a 3x3 square."""

    def __init__(self, shape=(6, 8, 10)):
        self.volume = SimpleNamespace(shape=shape, array=np.zeros(shape, np.float32))
        self.segments = []
        self.annotations = {}  # (name, axis, index) -> (mask, clicks)
        self.labels = []
        self.calls = []
        self.history = SimpleNamespace(undo_labels=self.labels, transaction=self._transaction)

    @contextmanager
    def _transaction(self, label):
        start = len(self.labels)
        yield
        del self.labels[start:]
        self.labels.append(label)

    def add_segment(self, name):
        self.segments.append(SimpleNamespace(name=name, propagation_axis=None))
        self.labels.append(f"add segment {name!r}")

    def segment(self, name):
        return next(s for s in self.segments if s.name == name)

    def click_slice(self, axis, index, row, col, positive=True, segment=None):
        self.calls.append(("click", axis, index, row, col, positive))
        key = (segment, axis, index)
        mask, clicks = self.annotations.get(key, (None, ()))
        rows, cols = [n for a, n in enumerate(self.volume.shape) if a != axis]
        mask = np.zeros((rows, cols), bool) if mask is None else mask.copy()
        r, c = int(round(row)), int(round(col))
        mask[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2] = positive
        self.annotations[key] = (mask, clicks + ((row, col, positive),))
        self.labels.append(f"{'positive' if positive else 'negative'} click on slice {index} (axis {axis}) of {segment!r}")
        return mask

    def clear_slice(self, axis, index, segment=None):
        self.calls.append(("clear", axis, index))
        self.annotations.pop((segment, axis, index), None)

    def set_slice_mask(self, axis, index, mask, segment=None):
        self.calls.append(("set", axis, index))
        self.annotations[(segment, axis, index)] = (np.asarray(mask, bool), ())

    def undo(self):
        self.calls.append(("undo",))
        label = self.labels.pop()
        # the fake only undoes the last click of a slice
        for key, (mask, clicks) in list(self.annotations.items()):
            if label.endswith(f" click on slice {key[2]} (axis {key[1]}) of {key[0]!r}"):
                remaining = clicks[:-1]
                self.annotations.pop(key)
                for row, col, positive in remaining:
                    self.click_slice(key[1], key[2], row, col, positive, key[0])
                    self.labels.pop()

    def segment_mask(self, segment=None):
        mask = np.zeros(self.volume.shape, bool)
        for (name, axis, index), (slice_mask, _) in self.annotations.items():
            if name == segment:
                take_slice(mask, axis, index)[...] |= slice_mask
        return mask

    def annotated_slices(self, segment=None, axis=None):
        return sorted(i for (n, a, i) in self.annotations if n == segment and a == axis)

    def propagate(self, segment=None, method="stcn", axis=None, progress=None):
        self.calls.append(("propagate", method, axis))
        if progress:
            progress(1, 1, "done")
        self.segment(segment).propagation_axis = axis
        mask = self.segment_mask(segment)
        return np.repeat(mask.any(axis=axis, keepdims=True), mask.shape[axis], axis=axis)


# ---- a small fake Slicer ---------------------------------------------------------------------


def _matrix_array(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _set_matrix(vtk_matrix, array) -> None:
    for r in range(4):
        for c in range(4):
            vtk_matrix.SetElement(r, c, float(array[r][c]))


class FakeNode:
    _count = 0

    def __init__(self, name=""):
        FakeNode._count += 1
        self._id = f"node{FakeNode._count}"
        self._name = name
        self._attributes = {}
        self._parent = None

    def GetID(self):
        return self._id

    def GetName(self):
        return self._name

    def SetAttribute(self, key, value):
        self._attributes[key] = value

    def GetAttribute(self, key):
        return self._attributes.get(key)

    def RemoveAttribute(self, key):
        self._attributes.pop(key, None)

    def GetParentTransformNode(self):
        return self._parent

    def SetAndObserveTransformNodeID(self, node):  # takes the node itself, for brevity
        self._parent = node

    def IsA(self, class_name):
        return type(self).__name__ == class_name.replace("vtkMRML", "Fake")

    def CreateDefaultDisplayNodes(self):
        pass


class FakeTransformNode(FakeNode):
    def __init__(self, to_world, linear=True):
        super().__init__("transform")
        self.to_world = np.asarray(to_world, float)
        self.linear = linear

    def IsTransformToWorldLinear(self):
        return self.linear

    def GetMatrixTransformToWorld(self, matrix):
        _set_matrix(matrix, self.to_world)


class FakeVolumeNode(FakeNode):
    def __init__(self, array, ijk_to_ras, name="volume"):
        super().__init__(name)
        self.array = np.asarray(array)
        self.ijk_to_ras = np.asarray(ijk_to_ras, float)

    def GetIJKToRASMatrix(self, matrix):
        _set_matrix(matrix, self.ijk_to_ras)


class FakeSegment:
    def __init__(self, name):
        self.name = name

    def GetName(self):
        return self.name


class FakeSegmentation:
    def __init__(self, node):
        self._node = node
        self._segments = {}
        self._count = 0

    def AddEmptySegment(self, segment_id="", name="", color=None):
        self._count += 1
        segment_id = segment_id or f"Segment_{self._count}"
        self._segments[segment_id] = FakeSegment(name or segment_id)
        self._node.arrays[segment_id] = np.zeros(self._node.shape, np.uint8)
        return segment_id

    def GetSegment(self, segment_id):
        return self._segments.get(segment_id)

    def GetNumberOfSegments(self):
        return len(self._segments)

    def GetSegmentIDs(self):
        return list(self._segments)


class FakeSegmentationDisplayNode:
    def __init__(self):
        self.hidden = set()

    def GetSegmentVisibility(self, segment_id):
        return segment_id not in self.hidden


class FakeSegmentationNode(FakeNode):
    def __init__(self, name=""):
        super().__init__(name)
        self.arrays = {}
        self.shape = None
        self.ijk_to_ras = None
        self._segmentation = FakeSegmentation(self)
        self._display = FakeSegmentationDisplayNode()
        self.writes = []  # (segment ID, merge mode, extent)

    def SetReferenceImageGeometryParameterFromVolumeNode(self, volume):
        self.shape = volume.array.shape
        self.ijk_to_ras = volume.ijk_to_ras

    def GetSegmentation(self):
        return self._segmentation

    def GetDisplayNode(self):
        return self._display


class FakeMarkupsDisplayNode:
    def SetSelectedColor(self, *rgb):
        self.selected = rgb

    def SetColor(self, *rgb):
        self.color = rgb


class FakeMarkupsFiducialNode(FakeNode):
    def __init__(self, name=""):
        super().__init__(name)
        self.points = []  # [id, position]
        self._next = 0
        self._display = FakeMarkupsDisplayNode()

    def GetDisplayNode(self):
        return self._display

    def SetControlPointLabelFormat(self, text):
        self.label_format = text

    def AddControlPointWorld(self, vector):
        self._next += 1
        self.points.append([f"{self._name}-{self._next}", [vector[0], vector[1], vector[2]]])
        return len(self.points) - 1

    def GetNumberOfControlPoints(self):
        return len(self.points)

    def GetNthControlPointID(self, index):
        return self.points[index][0]

    def GetNthControlPointIndexByID(self, point_id):
        ids = [p[0] for p in self.points]
        return ids.index(point_id) if point_id in ids else -1

    def GetNthControlPointPositionWorld(self, index, out):
        out[:] = self.points[index][1]

    def SetNthControlPointPositionWorld(self, index, x, y, z):
        self.points[index][1] = [x, y, z]

    def RemoveNthControlPoint(self, index):
        del self.points[index]

    def RemoveAllControlPoints(self):
        self.points.clear()


class FakeSliceNode(FakeNode):
    def __init__(self, name, slice_to_ras):
        super().__init__(name)
        import vtk

        self._matrix = vtk.vtkMatrix4x4()
        _set_matrix(self._matrix, slice_to_ras)

    def GetSliceToRAS(self):
        return self._matrix


class FakeSegmentEditorNode(FakeNode):
    def __init__(self, name=""):
        super().__init__(name)
        self.mask_mode, self.overwrite_mode, self.mask_segment = 0, 0, None
        self.intensity_on, self.intensity_range = False, (0.0, 0.0)

    def SetSingletonTag(self, tag):
        self.tag = tag

    def UnRegister(self, _):
        pass

    def GetMaskMode(self):
        return self.mask_mode

    def GetOverwriteMode(self):
        return self.overwrite_mode

    def GetMaskSegmentID(self):
        return self.mask_segment

    def GetSourceVolumeIntensityMask(self):
        return self.intensity_on

    def GetSourceVolumeIntensityMaskRange(self):
        return self.intensity_range


class FakeScene:
    def __init__(self):
        self.nodes = []

    def Clear(self, removeSingletons=0):
        self.nodes = [n for n in self.nodes if getattr(n, "tag", None) and not removeSingletons]

    def _add(self, node):
        self.nodes.append(node)
        return node

    def AddNewNodeByClass(self, class_name, name=""):
        classes = {
            "vtkMRMLSegmentationNode": FakeSegmentationNode,
            "vtkMRMLMarkupsFiducialNode": FakeMarkupsFiducialNode,
            "vtkMRMLSliceNode": lambda name: FakeSliceNode(name, np.eye(4)),
        }
        return self._add(classes[class_name](name))

    def CreateNodeByClass(self, class_name):
        assert class_name == "vtkMRMLSegmentEditorNode"
        return FakeSegmentEditorNode()

    def AddNode(self, node):
        return self._add(node)

    def GetSingletonNode(self, tag, class_name):
        return next((n for n in self.nodes if getattr(n, "tag", None) == tag), None)

    def GetFirstNodeByName(self, name):
        return next((n for n in self.nodes if n.GetName() == name), None)

    def GetFirstNodeByClass(self, class_name):
        return None


class FakeOrientedImageData:
    """Stands in for slicer.vtkOrientedImageData (real vtkImageData + an image-to-world matrix)."""

    def __init__(self):
        import vtk

        self.image = vtk.vtkImageData()
        self.image_to_world = None

    def __getattr__(self, name):
        return getattr(self.image, name)

    def SetImageToWorldMatrix(self, matrix):
        self.image_to_world = _matrix_array(matrix)


class FakeSegmentationsLogic:
    MODE_REPLACE, MODE_MERGE_MAX, MODE_MERGE_MIN, MODE_MERGE_MASK = 0, 1, 2, 3

    @staticmethod
    def SetBinaryLabelmapToSegment(image, segmentation_node, segment_id, mode, extent=None):
        import vtk.util.numpy_support

        assert mode in (FakeSegmentationsLogic.MODE_MERGE_MIN, FakeSegmentationsLogic.MODE_MERGE_MASK)
        np.testing.assert_allclose(image.image_to_world, segmentation_node.ijk_to_ras)
        i0, i1, j0, j1, k0, k1 = image.GetExtent()
        assert list(extent) == [i0, i1, j0, j1, k0, k1]
        values = vtk.util.numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
        slab = values.reshape(k1 - k0 + 1, j1 - j0 + 1, i1 - i0 + 1) > 0
        target = segmentation_node.arrays[segment_id][k0:k1 + 1, j0:j1 + 1, i0:i1 + 1]
        if mode == FakeSegmentationsLogic.MODE_MERGE_MIN:
            target &= slab.astype(np.uint8)
        else:
            target |= slab.astype(np.uint8)
        segmentation_node.writes.append((segment_id, mode, tuple(extent)))
        return True


def _fake_slicer_modules(scene: FakeScene) -> dict[str, types.ModuleType]:
    import vtk

    slicer = types.ModuleType("slicer")
    slicer.mrmlScene = scene
    slicer.app = SimpleNamespace(testingEnabled=lambda: True, connect=lambda *a: None)
    slicer.vtkOrientedImageData = FakeOrientedImageData
    slicer.vtkSlicerSegmentationsModuleLogic = FakeSegmentationsLogic
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic"):
        setattr(slm, name, type(name, (), {"__init__": lambda self, *a, **k: None}))

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, *args, **kwargs):
            pass

    slm.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest
    util = types.ModuleType("slicer.util")

    class VTKObservationMixin:
        def __init__(self):
            pass

    def array_from_segment(node, segment_id, volume):
        assert node.shape == volume.array.shape
        return node.arrays[segment_id].copy()

    util.VTKObservationMixin = VTKObservationMixin
    util.arrayFromVolume = lambda node: node.array
    util.arrayFromVTKMatrix = _matrix_array
    util.arrayFromSegmentBinaryLabelmap = array_from_segment
    util.getNodesByClass = lambda class_name: [n for n in scene.nodes if isinstance(n, FakeSliceNode)]

    def add_volume_from_array(narray, ijkToRAS=None, name=None, nodeClassName=None):
        return scene.AddNode(FakeVolumeNode(np.array(narray), np.eye(4) if ijkToRAS is None else ijkToRAS, name or ""))

    def load_volume(path, properties={}, returnNode=False):
        import SimpleITK as sitk

        from isegformer.volume.geometry import ijk_to_ras_matrix

        image = sitk.ReadImage(str(path))
        matrix = ijk_to_ras_matrix(image.GetOrigin(), image.GetSpacing(), image.GetDirection())
        return scene.AddNode(FakeVolumeNode(sitk.GetArrayFromImage(image), matrix, Path(path).name))

    util.addVolumeFromArray = add_volume_from_array
    util.loadVolume = load_volume
    slicer.ScriptedLoadableModule = slm
    slicer.util = util
    return {"slicer": slicer, "slicer.ScriptedLoadableModule": slm, "slicer.util": util,
            "qt": types.ModuleType("qt"), "ctk": types.ModuleType("ctk"), "vtk": vtk}


@contextmanager
def fake_slicer_module(module_file: Path = MODULE_FILE):
    """Load iSegFormerSlicer.py (the source tree's, or a copy) against the fake Slicer; yields (module, scene)."""
    scene = FakeScene()
    names = ("slicer", "slicer.ScriptedLoadableModule", "slicer.util", "qt", "ctk", "iSegFormerSlicer")
    saved = {name: sys.modules.get(name) for name in names}
    sys.modules.update(_fake_slicer_modules(scene))
    try:
        spec = importlib.util.spec_from_file_location("iSegFormerSlicer", module_file)
        module = importlib.util.module_from_spec(spec)
        sys.modules["iSegFormerSlicer"] = module  # what the self-test imports
        spec.loader.exec_module(module)
        yield module, scene
    finally:
        for name, value in saved.items():
            if value is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = value


# ---- a fake Qt for the widget ----------------------------------------------------------------


class FakeWidget:
    """Any Qt widget: properties are stored, signals record their slots, unknown methods no-op.

    ``returns`` gives values for methods the module reads (``currentNode()``, ...).
    """

    def __init__(self, name="", **properties):
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_props", dict(properties))
        object.__setattr__(self, "_slots", {})
        object.__setattr__(self, "returns", {})
        object.__setattr__(self, "calls", [])

    def __getattr__(self, attr):
        if attr in self._props:
            return self._props[attr]

        def method(*args, **kwargs):
            self.calls.append((attr, args))
            value = self.returns.get(attr)
            return value(*args) if callable(value) else value

        return method

    def __setattr__(self, attr, value):
        self._props[attr] = value

    def connect(self, signal, slot):
        self._slots.setdefault(signal, []).append(slot)

    def emit(self, signal, *args):
        for slot in self._slots.get(signal, []):
            slot(*args)


class FakeUI(SimpleNamespace):
    """childWidgetVariables(): one FakeWidget per name the module asks for."""

    def __getattr__(self, name):
        widget = FakeWidget(name, text="", enabled=True, checked=False, currentText="", currentPath="",
                            placeModeEnabled=False, visible=False)
        widget.returns.update(placeButton=lambda: FakeWidget("button"), deleteButton=lambda: FakeWidget("button"))
        setattr(self, name, widget)
        return widget


def install_fake_qt(modules: dict, scene: FakeScene) -> None:
    """Add what the widget needs (Qt, dialogs, observation) to the fake slicer modules."""
    qt = modules["qt"]
    qt.QTimer = lambda: FakeWidget("timer")
    slicer, util, slm = modules["slicer"], modules["slicer.util"], modules["slicer.ScriptedLoadableModule"]
    slicer.qSlicerMarkupsPlaceWidget = SimpleNamespace(ForcePlaceMultipleMarkups=3)
    slicer.vtkMRMLMarkupsNode = SimpleNamespace(PointPositionDefinedEvent=1, PointEndInteractionEvent=2, PointRemovedEvent=3)
    scene.StartCloseEvent, scene.EndCloseEvent = 10, 11
    ui = FakeUI()
    util.loadUI = lambda path: FakeWidget("ui", path=path)
    util.childWidgetVariables = lambda widget: ui
    util.mainWindow = lambda: None
    def create_progress_dialog(**kwargs):
        dialog = FakeWidget("progress", visible=False, **kwargs)
        dialog.returns.update(show=lambda: setattr(dialog, "visible", True),
                              hide=lambda: setattr(dialog, "visible", False))
        return dialog

    util.createProgressDialog = create_progress_dialog
    util.messages = []
    util.errorDisplay = lambda text, **kwargs: util.messages.append(("error", text))
    util.warningDisplay = lambda text, **kwargs: util.messages.append(("warning", text))
    util.showStatusMessage = lambda text, duration=0: util.messages.append(("status", text))
    util.confirmOkCancelDisplay = lambda text, **kwargs: True

    @contextmanager
    def try_with_error_display(message=None, show=True, waitCursor=False):
        yield

    util.tryWithErrorDisplay = try_with_error_display

    class VTKObservationMixin:
        def __init__(self):
            self.observations = []

        def addObserver(self, obj, event, method, group="none", priority=0.0):
            self.observations.append((obj, event, method))

        def removeObservers(self, method=None):
            self.observations = [o for o in self.observations if method is not None and o[2] != method]

    util.VTKObservationMixin = VTKObservationMixin

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

        def setup(self):
            self.layout = FakeWidget("layout")

        # No resourcePath(): Slicer's looks only beside the module file (the built layout); the
        # module must use its own moduleResourcePath(), which also knows the source checkout.

    slm.ScriptedLoadableModuleWidget = ScriptedLoadableModuleWidget
    modules["ui"] = ui


@contextmanager
def fake_slicer_widget(module_file: Path = MODULE_FILE):
    """Like fake_slicer_module, with the widget's Qt faked too; yields (module, scene, ui)."""
    scene = FakeScene()
    names = ("slicer", "slicer.ScriptedLoadableModule", "slicer.util", "qt", "ctk", "iSegFormerSlicer")
    saved = {name: sys.modules.get(name) for name in names}
    modules = _fake_slicer_modules(scene)
    install_fake_qt(modules, scene)
    ui = modules.pop("ui")
    sys.modules.update(modules)
    try:
        spec = importlib.util.spec_from_file_location("iSegFormerSlicer", module_file)
        module = importlib.util.module_from_spec(spec)
        sys.modules["iSegFormerSlicer"] = module
        spec.loader.exec_module(module)
        yield module, scene, ui
    finally:
        for name, value in saved.items():
            if value is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = value
