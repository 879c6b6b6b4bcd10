"""Real Slicer slice views (Red, Yellow, Green) rendered offscreen, on slicer-core alone.

Each view is what Slicer's qMRMLSliceView puts together, minus Qt: a vtkMRMLSliceLogic with its
slice node, a render window, the slice-view displayable managers (segmentations 2D, markups,
crosshair, ...) and vtkMRMLSliceViewInteractorStyle, which hands mouse and key events to the
markups widgets exactly as in the application. What is not Slicer's own here is only what CTK's
vtkLightBoxRendererManager does in the application: one 2D actor showing the slice logic's
blended image.

Mouse events are sent to the VTK interactor, so Qt's own event translation is not exercised.
"""
from __future__ import annotations

import os

# before vtk creates its first window: go straight to EGL (offscreen) instead of trying X11
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def _loadTritonBeforeMesa():
    """Import torch's triton (through torch._dynamo) before the first window exists.

    Mesa's EGL driver loads its own libLLVM into the global symbol namespace. libtriton links
    another LLVM statically; loaded after Mesa's, its static initialisers resolve to Mesa's
    globals and crash (SIGSEGV in llvm::DebugCounter, seen with torch 2.x + Mesa here). torch
    imports triton the first time a function it wraps for dynamo runs, i.e. on the first click;
    loading it first avoids the clash. Without torch there is nothing to do.
    """
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        import torch._dynamo  # noqa: F401


_loadTritonBeforeMesa()

import numpy as np  # noqa: E402
import slicer  # noqa: E402
import vtk  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

VIEW_NAMES = ("Red", "Yellow", "Green")
#: the application's default layout: orientation and layout colour of each view
VIEW_ORIENTATIONS = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}
VIEW_COLORS = {"Red": (0.952, 0.290, 0.2), "Yellow": (0.929, 0.835, 0.298), "Green": (0.431, 0.690, 0.294)}

#: the slice-view displayable managers qMRMLSliceView registers that slicer-core provides
SLICE_DISPLAYABLE_MANAGERS = (
    "vtkMRMLCrosshairDisplayableManager",
    "vtkMRMLVolumeGlyphSliceDisplayableManager",
    "vtkMRMLModelSliceDisplayableManager",
    "vtkMRMLScalarBarDisplayableManager",
    "vtkMRMLSegmentationsDisplayableManager2D",
    "vtkMRMLMarkupsDisplayableManager",
    "vtkMRMLTransformsDisplayableManager2D",
)


def registerModuleLogics(scene, applicationLogic):
    """The module logics the views rely on, by module name: those the application logic already
    has (``slicer.modules``' own, when the scene comes from slicer_standins), else new ones
    registered as the application does.

    The markups displayable manager finds the logic that adds a click's control point through
    ``applicationLogic.GetModuleLogic("Markups")``; the volumes logic colours a new volume with
    the "Colors" logic.
    """
    makers = {
        "Colors": applicationLogic.GetColorLogic,
        "Markups": slicer.vtkSlicerMarkupsLogic,
        "Segmentations": slicer.vtkSlicerSegmentationsModuleLogic,
        "Volumes": slicer.vtkSlicerVolumesLogic,
    }
    logics = {}
    for name, make in makers.items():
        logic = applicationLogic.GetModuleLogic(name)
        if logic is None:
            logic = make()
            if name != "Colors":  # the application logic's own colour logic is on the scene already
                logic.SetMRMLScene(scene)
                logic.SetMRMLApplicationLogic(applicationLogic)
            applicationLogic.SetModuleLogic(name, logic)
        logics[name] = logic
    return logics


def prepareApplicationLogic(scene, applicationLogic=None):
    """A vtkSlicerApplicationLogic on ``scene`` (a new one when None) with what the views need
    and qSlicerCoreApplication sets up: the default crosshair, the slice logic collection, the
    colour tables and the slice orientation presets."""
    if scene.GetFirstNodeByClass("vtkMRMLCrosshairNode") is None:
        crosshair = slicer.vtkMRMLCrosshairNode()
        crosshair.SetCrosshairName("default")
        scene.AddNode(crosshair)
    if applicationLogic is None:
        applicationLogic = slicer.vtkSlicerApplicationLogic()
        applicationLogic.SetMRMLScene(scene)  # creates the selection and interaction singletons
        applicationLogic.GetColorLogic().SetMRMLScene(scene)
        applicationLogic.GetColorLogic().AddDefaultColorNodes()
    if applicationLogic.GetSliceLogics() is None:
        applicationLogic.SetSliceLogics(vtk.vtkCollection())
    if applicationLogic.GetViewLogics() is None:
        applicationLogic.SetViewLogics(vtk.vtkCollection())
    defaultSliceNode = scene.GetDefaultNodeByClass("vtkMRMLSliceNode")
    if defaultSliceNode is None or not defaultSliceNode.HasSliceOrientationPreset("Axial"):
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)
    return applicationLogic


class SliceView:
    """One slice view (``name`` = Red, Yellow or Green) of ``width`` x ``height`` pixels."""

    def __init__(self, scene, applicationLogic, name, width=256, height=256):
        self.name = name
        self.renderWindow = vtk.vtkRenderWindow()
        self.renderWindow.SetOffScreenRendering(1)
        self.renderWindow.SetSize(width, height)
        self.renderer = vtk.vtkRenderer()
        self.renderer.GetActiveCamera().ParallelProjectionOn()
        self.renderWindow.AddRenderer(self.renderer)
        self.interactor = vtk.vtkRenderWindowInteractor()
        self.interactor.SetRenderWindow(self.renderWindow)
        self.interactor.Initialize()

        factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        factory.SetMRMLApplicationLogic(applicationLogic)
        for manager in SLICE_DISPLAYABLE_MANAGERS:
            if not factory.IsDisplayableManagerRegistered(manager):
                factory.RegisterDisplayableManager(manager)
        self.displayableManagers = slicer.vtkMRMLDisplayableManagerGroup()
        self.displayableManagers.Initialize(factory, self.renderer)

        self.sliceLogic = slicer.vtkMRMLSliceLogic()
        self.sliceLogic.SetMRMLApplicationLogic(applicationLogic)
        applicationLogic.GetSliceLogics().AddItem(self.sliceLogic)
        self.sliceLogic.SetMRMLScene(scene)
        self.sliceNode = self.sliceLogic.AddSliceNode(name)
        if name in VIEW_ORIENTATIONS:  # what qMRMLLayoutManager sets from the layout description
            self.sliceNode.SetDefaultOrientation(VIEW_ORIENTATIONS[name])
            self.sliceNode.SetOrientation(VIEW_ORIENTATIONS[name])
            self.sliceNode.SetLayoutColor(*VIEW_COLORS[name])
        self.displayableManagers.SetMRMLDisplayableNode(self.sliceNode)

        # what CTK's vtkLightBoxRendererManager does in the application: show the blended slice
        self._imageMapper = vtk.vtkImageMapper()
        self._imageMapper.SetColorWindow(255)
        self._imageMapper.SetColorLevel(127.5)
        self._imageActor = vtk.vtkActor2D()
        self._imageActor.SetMapper(self._imageMapper)
        self._imageActor.GetProperty().SetDisplayLocationToBackground()
        self.renderer.AddViewProp(self._imageActor)
        self.sliceLogic.AddObserver(vtk.vtkCommand.ModifiedEvent, self._connectImage)
        self._connectImage()

        self.interactorStyle = slicer.vtkMRMLSliceViewInteractorStyle()
        self.interactorStyle.SetSliceLogic(self.sliceLogic)
        self.interactorStyle.SetDisplayableManagers(self.displayableManagers)
        self.interactor.SetInteractorStyle(vtk.vtkInteractorStyleUser())
        self.interactorStyle.SetInteractor(self.interactor)
        self.sliceLogic.ResizeSliceNode(width, height)

    def _connectImage(self, *_):
        connection = self.sliceLogic.GetImageDataConnection()
        if connection is not None:
            self._imageMapper.SetInputConnection(connection)
        self._imageActor.SetVisibility(connection is not None)

    # ---- content ------------------------------------------------------------------------------
    def showVolume(self, volumeNode, rotateToVolumePlane=True):
        """Background layer = ``volumeNode``, fitted to the view; with ``rotateToVolumePlane`` the
        view is turned to the volume's nearest axes (the view's "Rotate to volume plane")."""
        self.sliceLogic.GetSliceCompositeNode().SetBackgroundVolumeID(volumeNode.GetID())
        if rotateToVolumePlane:
            self.sliceLogic.RotateSliceToLowestVolumeAxes(False)
        self.sliceLogic.FitSliceToBackground()
        self.sliceLogic.SnapSliceOffsetToIJK()

    def rotateAboutInPlaneAxis(self, degrees):
        """Tilt the view: turn its plane by ``degrees`` about its horizontal axis through the centre."""
        sliceToRas = self.sliceNode.GetSliceToRAS()
        turned = vtk.vtkTransform()
        turned.SetMatrix(sliceToRas)
        turned.RotateX(degrees)  # right-multiplied: about the slice's own x axis
        sliceToRas.DeepCopy(turned.GetMatrix())
        self.sliceNode.UpdateMatrices()

    def xyToRas(self, x, y):
        """The RAS point under pixel (x, y) (VTK display coordinates: origin bottom left)."""
        return (slicer.util.arrayFromVTKMatrix(self.sliceNode.GetXYToRAS()) @ [x, y, 0.0, 1.0])[:3]

    def rasToXy(self, ras):
        xyToRas = slicer.util.arrayFromVTKMatrix(self.sliceNode.GetXYToRAS())
        return (np.linalg.inv(xyToRas) @ [*ras, 1.0])[:2]

    # ---- events -------------------------------------------------------------------------------
    def _send(self, event, x, y):
        self.interactor.SetEventPosition(int(x), int(y))
        self.interactor.InvokeEvent(event)

    def mouseMove(self, x, y):
        self._send("MouseMoveEvent", x, y)

    def press(self, x, y):
        self._send("LeftButtonPressEvent", x, y)

    def release(self, x, y):
        self._send("LeftButtonReleaseEvent", x, y)

    def click(self, x, y):
        """Move to pixel (x, y), press and release the left button (a point in Place mode)."""
        self.mouseMove(x, y)
        self.press(x, y)
        self.release(x, y)

    def drag(self, start, end, steps=4):
        """Hover over ``start``, press, move in ``steps`` to ``end``, release (moves a point)."""
        self.mouseMove(*start)
        self.render()  # the widget picks the point it hovers over from the rendered state
        self._send("LeftButtonPressEvent", *start)
        for fraction in np.linspace(0.0, 1.0, steps + 1)[1:]:
            self.mouseMove(*(np.asarray(start) + fraction * (np.asarray(end) - np.asarray(start))))
        self._send("LeftButtonReleaseEvent", *end)

    def pressKey(self, x, y, keySym):
        """Hover over (x, y) and press ``keySym`` (e.g. "Delete" over a point deletes it)."""
        self.mouseMove(x, y)
        self.render()
        self.interactor.SetKeyEventInformation(0, 0, "\0", 0, keySym)
        self.interactor.InvokeEvent("KeyPressEvent")
        self.interactor.InvokeEvent("KeyReleaseEvent")

    # ---- pictures -----------------------------------------------------------------------------
    def render(self):
        self.renderWindow.Render()

    def capture(self):
        """The rendered view as a (height, width, 3) uint8 array, top row first."""
        self.render()
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(self.renderWindow)
        grab.SetInputBufferTypeToRGB()
        grab.ReadFrontBufferOff()
        grab.Update()
        image = grab.GetOutput()
        width, height, _ = image.GetDimensions()
        pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)
        return np.ascontiguousarray(pixels[::-1, :, :3])

    def close(self):
        self.interactorStyle.SetInteractor(None)
        self.renderWindow.Finalize()


class SliceViews:
    """The Red, Yellow and Green views on a scene, with the application and module logics."""

    def __init__(self, scene, width=256, height=256, applicationLogic=None):
        self.scene = scene
        self.applicationLogic = prepareApplicationLogic(scene, applicationLogic)
        self.moduleLogics = registerModuleLogics(scene, self.applicationLogic)
        self.views = {name: SliceView(scene, self.applicationLogic, name, width, height) for name in VIEW_NAMES}

    def __getitem__(self, name):
        return self.views[name]

    @property
    def interactionNode(self):
        return self.applicationLogic.GetInteractionNode()

    def showVolume(self, volumeNode, rotateToVolumePlane=True):
        for view in self.views.values():
            view.showVolume(volumeNode, rotateToVolumePlane)

    def placeInto(self, markupsNode, persistent=True):
        """Place mode for ``markupsNode``: each left click in a view adds one of its points."""
        self.moduleLogics["Markups"].SetActiveList(markupsNode)
        self.interactionNode.SetPlaceModePersistence(1 if persistent else 0)
        self.interactionNode.SetCurrentInteractionMode(slicer.vtkMRMLInteractionNode.Place)

    def stopPlacing(self):
        self.interactionNode.SetCurrentInteractionMode(slicer.vtkMRMLInteractionNode.ViewTransform)

    def loadVolume(self, path, name=None):
        """A volume read by Slicer's own volume storage node (as File -> Add Data does)."""
        name = name or os.path.basename(path).split(".")[0]
        node = self.moduleLogics["Volumes"].AddArchetypeVolume(path, name, 0)
        if node is None:
            raise RuntimeError(f"Slicer could not read {path}")
        return node

    def capture(self, names=VIEW_NAMES, gap=4):
        """The views side by side as one (height, width, 3) uint8 array."""
        images = [self.views[name].capture() for name in names]
        height = max(image.shape[0] for image in images)
        parts = []
        for image in images:
            padded = np.zeros((height, image.shape[1], 3), np.uint8)
            padded[: image.shape[0]] = image
            parts += [padded, np.zeros((height, gap, 3), np.uint8)]
        return np.concatenate(parts[:-1], axis=1)

    def close(self):
        for view in self.views.values():
            view.close()
