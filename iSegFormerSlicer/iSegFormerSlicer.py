"""iSegFormerSlicer: click in a slice view, get that slice's mask; propagate it through the volume.

The widget only wires Slicer events to the Logic. The Logic turns MRML nodes into plain arrays
and matrices, runs the ``isegformer`` session (through ``isegformer.slicer_support``) and writes
results back into segments. Nothing here imports torch or ``isegformer`` when the module is
loaded or its widget is built: both come in only after the explicit dependency step.
"""
import importlib.util
import logging
import os
import re
import shutil
import sys
import tempfile
import time

import numpy as np
import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

try:
    from slicer.i18n import tr as _
except ImportError:  # Slicer before 5.4 has no translation helper

    def _(text):
        return text


MODULE_NAME = "iSegFormerSlicer"
DEFAULT_MODEL = "isegformer_swin_base_oaizib"
STCN_MODEL = "stcn"
POSITIVE_NODE_NAME = "iSegFormer positive clicks"
#: set on a point list while the Logic adds a point itself, so the widget does not react twice
PLACING_ATTRIBUTE = "iSegFormer.PlacingProgrammatically"
NEGATIVE_NODE_NAME = "iSegFormer negative clicks"
#: work shorter than this shows no dialog (milliseconds)
PROGRESS_DELAY_MS = 1000
POLL_INTERVAL_MS = 40
#: the fine-tuning child reports at most twice a second; reading it more often is wasted work
FINETUNE_POLL_INTERVAL_MS = 250
DEFAULT_FINETUNE_EPOCHS = 5
SAMPLE_CATEGORY = "iSegFormer"
SAMPLE_NAME = "OAI-ZIB knee 9092628"
SAMPLE_BASE_URL = "https://github.com/uncbiag/iSegFormer/raw/v1.0/maskprop/MiVOS/example/"


def moduleResourcePath(relativePath):
    """A file of the module's resources: ``<module dir>/Resources`` when built or installed,
    ``<module dir>/../Resources`` in a source checkout (the repository's top-level folder)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for resources in (os.path.join(here, "Resources"), os.path.join(os.path.dirname(here), "Resources")):
        candidate = os.path.join(resources, relativePath)
        if os.path.exists(candidate):
            return candidate
    return os.path.join(here, "Resources", relativePath)  # where it should be: named in the error


def _ensureIsegformerImportable():
    """Make ``import isegformer`` work: installed beside this file, or ../Logic in a source tree.

    Only looks for the package (importlib.util.find_spec does not import it).
    """
    if importlib.util.find_spec("isegformer") is not None:
        return
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (here, os.path.join(os.path.dirname(here), "Logic")):
        if os.path.isdir(os.path.join(candidate, "isegformer")) and candidate not in sys.path:
            sys.path.append(candidate)
            return


def _support():
    """The Slicer-free helpers of the package (numpy only); imported on first use."""
    _ensureIsegformerImportable()
    import isegformer.slicer_support.dependencies as dependencies
    import isegformer.slicer_support.slice_write as slice_write
    import isegformer.slicer_support.transforms as transforms
    import isegformer.slicer_support.views as views
    import isegformer.slicer_support.worker as worker

    class Support:
        pass

    support = Support()
    support.dependencies = dependencies
    support.slice_write = slice_write
    support.transforms = transforms
    support.views = views
    support.worker = worker
    return support


def _editedSlices(current, written, axis):
    """Indices along ``axis`` where a (k, j, i) mask differs from what the module wrote there."""
    other = tuple(a for a in range(3) if a != axis)
    return {int(i) for i in np.flatnonzero(np.any(np.asarray(current, bool) != np.asarray(written, bool), axis=other))}


#
# Module
#


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


def registerSampleData():
    """Register the OAI-ZIB knee of the iSegFormer repository in the Sample Data module."""
    import SampleData

    logic = SampleData.SampleDataLogic
    if hasattr(logic, "registerCustomSampleDataCategory"):  # Slicer >= 5.10
        logic.registerCustomSampleDataCategory(SAMPLE_CATEGORY, title=_("iSegFormer"))
    logic.registerCustomSampleDataSource(
        category=SAMPLE_CATEGORY,
        sampleName=SAMPLE_NAME,
        thumbnailFileName=moduleResourcePath("Icons/iSegFormerSlicer.png"),
        uris=[SAMPLE_BASE_URL + "9092628_image.nii.gz", SAMPLE_BASE_URL + "9092628_label.nii.gz"],
        fileNames=["9092628_image.nii.gz", "9092628_label.nii.gz"],
        nodeNames=["Knee9092628", "Knee9092628 reference"],
        loadFileTypes=["VolumeFile", "SegmentationFile"],
        # The image's hash is not published; the label's was computed from the repository's file.
        checksums=[None, "SHA256:4cfe75af553e9f334993a7668ea92f77f49fc2ebed526995603e6db6e193b651"],
    )


#
# Widget
#


class iSegFormerSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires GUI and view events to the Logic; holds no segmentation state of its own."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._pollTimer = None
        self._undoShortcut = None
        self._progressDialog = None
        self._jobStarted = {}  # job id -> (monotonic start, label)
        self._propagationJob = None
        self._muted = False  # True while the module itself edits the point lists
        self._finetuneTimer = None
        self._finetuneDialog = None
        self._finetuneStarted = None  # monotonic time the running fine-tune started
        self._finetuneCancelling = False

    # ---- building -----------------------------------------------------------------------
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(moduleResourcePath("UI/iSegFormerSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = iSegFormerSlicerLogic()

        self.ui.segmentEditorWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.segmentEditorWidget.setMRMLSegmentEditorNode(self.logic.getSegmentEditorNode())
        self.ui.segmentEditorWidget.setSourceVolumeNodeSelectorVisible(False)

        self.ui.deviceComboBox.clear()
        for device in ("auto", "cuda", "cpu"):
            self.ui.deviceComboBox.addItem(device)
        self.ui.modelComboBox.clear()
        for name in self.logic.clickModelNames():
            self.ui.modelComboBox.addItem(name)

        for placeWidget in (self.ui.positivePlaceWidget, self.ui.negativePlaceWidget):
            placeWidget.setMRMLScene(slicer.mrmlScene)
            placeWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups
            placeWidget.buttonsVisible = False
            placeWidget.placeButton().show()
            placeWidget.deleteButton().show()

        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputVolumeChanged)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSettingsChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onModelSettingsChanged)
        self.ui.checkpointPathLineEdit.connect("currentPathChanged(QString)", self.onModelSettingsChanged)
        self.ui.propagationComboBox.connect("currentIndexChanged(int)", self.onModelSettingsChanged)
        self.ui.downloadModelButton.connect("clicked()", self.onDownloadModel)
        self.ui.installDependenciesButton.connect("clicked()", self.onInstallDependencies)
        self.ui.propagateButton.connect("clicked()", self.onPropagate)
        self.ui.undoClickButton.connect("clicked()", self.onUndoClick)
        self.ui.negativeModeCheckBox.connect("toggled(bool)", self.onNegativeModeToggled)
        self.ui.finetuneButton.connect("clicked()", self.onFinetune)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # No dependency check here: it imports the package, which waits for enter().
        self.ui.dependenciesLabel.text = _("Checked when the module is opened.")

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self.onPoll)
        self._finetuneTimer = qt.QTimer()
        self._finetuneTimer.setInterval(FINETUNE_POLL_INTERVAL_MS)
        self._finetuneTimer.connect("timeout()", self.onFinetunePoll)

        mainWindow = slicer.util.mainWindow()
        if mainWindow is not None:  # none when the generic tests build the widget headless
            self._undoShortcut = qt.QShortcut(qt.QKeySequence("Ctrl+Z"), mainWindow)
            self._undoShortcut.setEnabled(False)
            self._undoShortcut.connect("activated()", self.onUndoClick)

    def cleanup(self):
        self.removeObservers()
        if self._pollTimer is not None:
            self._pollTimer.stop()
        if self._finetuneTimer is not None:
            self._finetuneTimer.stop()
        if self._undoShortcut is not None:
            self._undoShortcut.setEnabled(False)
        if self.logic is not None:
            self.logic.shutdown()

    def enter(self):
        if self._undoShortcut is not None:
            self._undoShortcut.setEnabled(True)
        volume = self.ui.inputVolumeSelector.currentNode()
        if volume is not None:
            self.ui.segmentEditorWidget.setSourceVolumeNode(volume)
            self.logic.setVolume(volume)
        self._usePointLists()
        self.updateStatus()

    def exit(self):
        if self._undoShortcut is not None:
            self._undoShortcut.setEnabled(False)
        self.ui.segmentEditorWidget.setActiveEffect(None)
        for placeWidget in (self.ui.positivePlaceWidget, self.ui.negativePlaceWidget):
            placeWidget.setPlaceModeEnabled(False)

    def onSceneStartClose(self, caller, event):
        self.logic.reset()
        self._observePointLists(None, None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self._usePointLists()

    # ---- settings -------------------------------------------------------------------------
    def onInputVolumeChanged(self, volumeNode):
        self.ui.segmentEditorWidget.setSourceVolumeNode(volumeNode)
        self.logic.setVolume(volumeNode)
        self.updateStatus()

    def onModelSettingsChanged(self, *args):
        self.logic.setModelSettings(
            model=self.ui.checkpointPathLineEdit.currentPath or self.ui.modelComboBox.currentText,
            device=self.ui.deviceComboBox.currentText or "auto",
            propagation=self.ui.propagationComboBox.currentText or "stcn",
        )
        self.updateStatus()

    def updateStatus(self):
        """Refresh the labels that describe what is installed, cached and selected."""
        if self.logic is None:
            return
        missing = self.logic.missingDependencies()
        self.ui.dependenciesLabel.text = (
            _("All Python dependencies are installed.") if not missing
            else _("Missing or outdated: ") + ", ".join(missing)
        )
        self.ui.installDependenciesButton.enabled = bool(missing)
        self.ui.modelStatusLabel.text = self.logic.modelStatusText()
        self.ui.downloadModelButton.enabled = not missing and self.logic.modelNeedsDownload()
        device = self.ui.deviceComboBox.currentText
        onCpu = device == "cpu" or (self.logic.activeDevice or "").startswith("cpu")
        self.ui.deviceWarningLabel.text = (
            _("Running on the CPU: each click takes seconds, propagation minutes. A CUDA GPU is much faster.")
            if onCpu else ""
        )
        ready = not missing and self.ui.inputVolumeSelector.currentNode() is not None
        self.ui.clicksCollapsibleButton.enabled = ready
        self.ui.propagateButton.enabled = ready and self.logic.hasClicks()
        self.ui.finetuneButton.enabled = ready and not self.logic.isFinetuning()

    # ---- dependencies and weights ----------------------------------------------------------
    def onInstallDependencies(self):
        with slicer.util.tryWithErrorDisplay(_("Installing the dependencies failed."), waitCursor=False):
            self.logic.installDependencies(askConfirmation=True)
        self.updateStatus()

    def onDownloadModel(self):
        if not self._ensureReady(needVolume=False):
            return
        names = self.logic.modelsToDownload()
        if not names:
            self.updateStatus()
            return
        jobId = self.logic.submit(lambda progress: self.logic.downloadModels(names, progress), label="download")
        self._startProgress(jobId, _("Downloading model weights..."), immediately=True)

    def _ensureReady(self, needVolume=True):
        if self.logic.missingDependencies():
            if not self.logic.installDependencies(askConfirmation=True):
                self.updateStatus()
                return False
        if needVolume and self.ui.inputVolumeSelector.currentNode() is None:
            slicer.util.warningDisplay(_("Select the source volume first."))
            return False
        return True

    # ---- clicks -----------------------------------------------------------------------------
    def onNegativeModeToggled(self, negative):
        """The toggle switches placing between the positive and the negative list."""
        target = self.ui.negativePlaceWidget if negative else self.ui.positivePlaceWidget
        other = self.ui.positivePlaceWidget if negative else self.ui.negativePlaceWidget
        other.setPlaceModeEnabled(False)
        target.setPlaceModeEnabled(True)

    def _usePointLists(self):
        """Create (once) the positive and negative point lists, show them in the place widgets
        and observe them: placing, moving and deleting points drives the Logic."""
        positive, negative = self.logic.getClickNodes()
        self.ui.positivePlaceWidget.setCurrentNode(positive)
        self.ui.negativePlaceWidget.setCurrentNode(negative)
        self._observePointLists(positive, negative)

    def _prepareClicks(self):
        """Make sure a segmentation and a segment exist and are selected; returns both."""
        volume = self.ui.inputVolumeSelector.currentNode()
        segmentation = self.ui.segmentEditorWidget.segmentationNode()
        segmentId = self.ui.segmentEditorWidget.currentSegmentID()
        segmentation, segmentId = self.logic.setSegmentation(volume, segmentation, segmentId or None)
        self.ui.segmentEditorWidget.setSegmentationNode(segmentation)
        self.ui.segmentEditorWidget.setCurrentSegmentID(segmentId)
        self.logic.getSegmentEditorNode()
        self.logic.saveStateForUndo = self.ui.segmentEditorWidget.saveStateForUndo
        return segmentation, segmentId

    def _observePointLists(self, positive, negative):
        self.removeObservers(self.onPointDefined)
        self.removeObservers(self.onPointMoved)
        self.removeObservers(self.onPointRemoved)
        for node in (positive, negative):
            if node is None:
                continue
            self.addObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onPointDefined)
            self.addObserver(node, slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent, self.onPointMoved)
            self.addObserver(node, slicer.vtkMRMLMarkupsNode.PointRemovedEvent, self.onPointRemoved)

    @vtk.calldata_type(vtk.VTK_INT)
    def onPointDefined(self, caller, event, index):
        if self._muted or caller.GetAttribute(PLACING_ATTRIBUTE):
            return
        if not self._ensureReady():
            self._removePoint(caller, index)
            return
        segmentation, segmentId = self._prepareClicks()
        positive = caller is self.logic.getClickNodes()[0]
        pointId = caller.GetNthControlPointID(index)
        position = [0.0, 0.0, 0.0]
        caller.GetNthControlPointPositionWorld(index, position)
        try:
            jobId = self.logic.submitClick(pointId, position, positive, segmentId, self._sliceNodeUnderCursor())
        except Exception as err:  # an oblique view, a point outside the volume: say so, change nothing
            self._removePoint(caller, index)
            self._report(err)
            return
        self._watch(jobId, _("Segmenting the slice..."))
        self.ui.axisInfoLabel.text = self.logic.lastClickDescription()
        self.updateStatus()

    @vtk.calldata_type(vtk.VTK_INT)
    def onPointMoved(self, caller, event, index):
        if self._muted or caller.GetAttribute(PLACING_ATTRIBUTE):
            return
        try:
            jobIds = self.logic.submitPointsChanged(self._sliceNodeUnderCursor())
        except Exception as err:
            self._report(err)
            return
        for jobId in jobIds:
            self._watch(jobId, _("Updating the slice..."))

    def onPointRemoved(self, caller, event):
        if self._muted or caller.GetAttribute(PLACING_ATTRIBUTE):
            return
        for jobId in self.logic.submitPointsChanged(None):
            self._watch(jobId, _("Updating the slice..."))
        self.updateStatus()

    def onUndoClick(self):
        self._muted = True
        try:
            jobId = self.logic.submitUndoLastClick()
        finally:
            self._muted = False
        if jobId is None:
            slicer.util.showStatusMessage(_("No point to undo."), 2000)
            return
        self._watch(jobId, _("Undoing the last point..."))
        self.updateStatus()

    def _removePoint(self, node, index):
        self._muted = True
        try:
            if 0 <= index < node.GetNumberOfControlPoints():
                node.RemoveNthControlPoint(index)
        finally:
            self._muted = False

    @staticmethod
    def _sliceNodeUnderCursor():
        """The slice view the mouse is in (where a point was just placed), from the crosshair."""
        crosshair = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        if crosshair is None:
            return None
        xyz = [0.0, 0.0, 0.0]
        return crosshair.GetCursorPositionXYZ(xyz)

    # ---- propagation ------------------------------------------------------------------------
    def onPropagate(self):
        if not self._ensureReady():
            return
        segmentation, segmentId = self._prepareClicks()
        try:
            jobId = self.logic.submitPropagation(segmentId)
        except Exception as err:
            self._report(err)
            return
        self._propagationJob = jobId
        self._startProgress(jobId, _("Propagating through the volume..."))

    # ---- fine-tuning (a separate process) -----------------------------------------------------
    def onFinetune(self):
        if not self._ensureReady():
            return
        segmentation = self.ui.segmentEditorWidget.segmentationNode()
        segmentId = self.ui.segmentEditorWidget.currentSegmentID()
        if segmentation is None or not segmentId:
            slicer.util.warningDisplay(_("Select the segment to learn from in the Segmentation section first."))
            return
        try:
            self.logic.setSegmentation(self.ui.inputVolumeSelector.currentNode(), segmentation, segmentId)
            self.logic.startFinetune(epochs=int(self.ui.finetuneEpochsSpinBox.value), segmentId=segmentId)
        except Exception as err:  # no usable slice, weights missing, a run already going: say so
            self._report(err)
            return
        self._finetuneStarted = time.monotonic()
        self._finetuneCancelling = False
        self.ui.finetuneStatusLabel.text = self.logic.finetuneDescription()
        if self._finetuneDialog is None:
            self._finetuneDialog = self._newProgressDialog(_("Fine-tuning the click model..."), self.onCancelFinetune)
        self._finetuneDialog.maximum = 0
        self._finetuneDialog.value = 0
        self._finetuneTimer.start()
        self.updateStatus()

    def onCancelFinetune(self):
        """Ask the run to stop after its current step; polling goes on until it has stopped."""
        if self.logic.cancelFinetune():
            self._finetuneCancelling = True
            self.ui.finetuneStatusLabel.text = _("Stopping after the current training step...")

    def onFinetunePoll(self):
        state = self.logic.pollFinetune()
        if state is None:
            self._finetuneTimer.stop()
            return
        dialog = self._finetuneDialog
        if state.running:
            if dialog is not None and not self._finetuneCancelling:
                dialog.maximum = max(state.total, 0)
                dialog.value = min(state.done, max(state.total, 0))
                dialog.labelText = state.text
                elapsed = time.monotonic() - (self._finetuneStarted or time.monotonic())
                if elapsed > PROGRESS_DELAY_MS / 1000.0 and not dialog.visible:
                    dialog.show()
            if not self._finetuneCancelling:
                self.ui.finetuneStatusLabel.text = state.text
            return
        self._finetuneTimer.stop()
        if dialog is not None:
            dialog.hide()
        self._finetuneCancelling = False
        self.ui.finetuneStatusLabel.text = state.text
        if state.status == "done":
            # The same setting the Advanced section's checkpoint field drives: the field shows the
            # new model, and changing the device or propagation later keeps it.
            self.ui.checkpointPathLineEdit.currentPath = str(state.checkpoint)
            slicer.util.showStatusMessage(state.text, 5000)
        elif state.status == "cancelled":
            slicer.util.showStatusMessage(state.text, 5000)
        else:
            self._report(state.text, state.details)
        self.updateStatus()

    # ---- results from the worker ----------------------------------------------------------
    def _watch(self, jobId, label):
        self._startProgress(jobId, label)

    def _startProgress(self, jobId, label, immediately=False):
        """Follow a job; its dialog appears only if the work lasts longer than a second."""
        self._jobStarted[jobId] = (time.monotonic(), label)
        if self._progressDialog is None:
            self._progressDialog = self._newProgressDialog(label, self.onCancel, immediately)
        self._progressDialog.labelText = label
        if not self._progressDialog.visible:
            self._progressDialog.maximum = 0  # busy until the job reports its own progress
        if immediately:
            self._progressDialog.show()
        self._pollTimer.start()

    @staticmethod
    def _newProgressDialog(label, onCancel, immediately=False):
        """A hidden, busy progress dialog whose Cancel calls ``onCancel``; the caller shows it
        once the work has lasted longer than PROGRESS_DELAY_MS (or at once when ``immediately``)."""
        dialog = slicer.util.createProgressDialog(
            parent=slicer.util.mainWindow(), maximum=0, labelText=label, windowTitle=_("iSegFormer"),
            autoClose=False, autoReset=False,
        )
        dialog.minimumDuration = 0 if immediately else PROGRESS_DELAY_MS
        dialog.hide()
        dialog.connect("canceled()", onCancel)
        return dialog

    def onCancel(self):
        self.logic.cancelAll()

    def onPoll(self):
        for event in self.logic.pollEvents():
            if event.kind == "progress":
                if self._progressDialog is not None:
                    self._progressDialog.maximum = max(event.total, 0)
                    self._progressDialog.value = min(event.done, max(event.total, 0))
                    if event.message:
                        self._progressDialog.labelText = event.message
            elif event.kind == "done":
                self._jobStarted.pop(event.jobId, None)
                if event.error is not None and not event.cancelled:
                    self._report(event.error, event.traceback)
                elif event.cancelled:
                    slicer.util.showStatusMessage(_("Cancelled; nothing was changed."), 3000)
        busy = self.logic.isBusy()
        if self._progressDialog is not None:
            oldest = min((start for start, _label in self._jobStarted.values()), default=None)
            if busy and oldest is not None and time.monotonic() - oldest > PROGRESS_DELAY_MS / 1000.0:
                self._progressDialog.show()
            if not busy:
                self._progressDialog.hide()
        if not busy:
            self._jobStarted.clear()
            self._pollTimer.stop()
            self.ui.axisInfoLabel.text = self.logic.lastClickDescription()
            self.updateStatus()

    def _report(self, error, details=""):
        logging.error("iSegFormer: %s", error)
        self.ui.statusLabel.text = str(error)
        if not slicer.app.testingEnabled():
            extra = {"detailedText": details} if details else {}
            slicer.util.errorDisplay(str(error), windowTitle=_("iSegFormer"), **extra)


#
# Logic
#


class _Event:
    """A worker event translated for the widget (no isegformer types leak into Qt code)."""

    def __init__(self, kind, jobId, done=0, total=0, message="", error=None, cancelled=False, traceback=""):
        self.kind = kind
        self.jobId = jobId
        self.done = done
        self.total = total
        self.message = message
        self.error = error
        self.cancelled = cancelled
        self.traceback = traceback


class _FinetuneState:
    """What the widget shows of a fine-tuning run (no isegformer types leak into Qt code).

    ``status`` is None while it runs, then "done", "cancelled" or "error".
    """

    def __init__(self, running, done=0, total=0, text="", status=None, checkpoint=None, details=""):
        self.running = running
        self.done = done
        self.total = total
        self.text = text
        self.status = status
        self.checkpoint = checkpoint
        self.details = details


class _ClickRecord:
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


class iSegFormerSlicerLogic(ScriptedLoadableModuleLogic):
    """Everything the module does, usable from the Python console without the widget.

    Synchronous methods (``addClick``, ``propagate``, ``undoLastClick``) run the model in the
    calling thread; the widget uses the ``submit...`` variants, which run it on the worker
    thread and apply the result on the GUI thread when ``pollEvents`` sees it finish.
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.volumeNode = None
        self.segmentationNode = None
        self.segmentId = None
        self.model = DEFAULT_MODEL
        self.device = "auto"
        self.propagation = "stcn"
        #: called before every write so the Segment Editor can undo it (the widget sets it)
        self.saveStateForUndo = None
        #: the Segment Editor node whose masking and overwrite settings writes follow
        self.segmentEditorNode = None
        self.viewAlignmentToleranceDegrees = 1.0
        #: the torch device the open session runs on ("cuda:0", "cpu"); None before the first click
        self.activeDevice = None
        self._worker = None
        self._bridge = None
        self._stale = False  # True: reopen the session (settings changed) before the next job
        self._generation = 0
        self._records = []
        self._order = 0
        self._written = {}  # segment ID -> (k, j, i) bool mask the module last wrote
        self._appliers = {}  # job id -> function applying its result on the GUI thread
        self._onFailure = {}  # job id -> function undoing the GUI-side bookkeeping of a failed job
        self._handEdited = {}  # (segment ID, axis) -> slices edited by hand that a propagation adopted
        self._finetune = None  # the running isegformer.finetune.process.FinetuneProcess
        self._finetuneFolder = None  # its exported image and label map, removed when it ends
        self._finetunePlan = None  # (axis, slice indices, "annotated" or "labelled") of that run

    # ---- dependencies -----------------------------------------------------------------------
    @staticmethod
    def missingDependencies():
        """Names of the Python packages that are missing or outside the supported versions."""
        deps = _support().dependencies
        return [req.name for req, _version in deps.unmet((deps.TORCH, *deps.PIP_REQUIREMENTS))]

    def installDependencies(self, askConfirmation=True):
        """Install torch (through the PyTorch extension) and the other packages (Slicer's pip).

        Asks first when ``askConfirmation``. Returns True when everything is installed.
        """
        deps = _support().dependencies
        torchProblems = deps.unmet((deps.TORCH,))
        pipProblems = deps.unmet(deps.PIP_REQUIREMENTS)
        if not torchProblems and not pipProblems:
            return True
        if askConfirmation and not slicer.app.testingEnabled():
            text = _(
                "iSegFormer needs these Python packages:\n{problems}\n\nPyTorch is installed by the "
                "PyTorch extension (matching your NVIDIA driver, or the CPU build), the others with "
                "pip. This downloads up to a few GB and takes minutes. Install now?"
            ).format(problems=deps.describe(torchProblems + pipProblems))
            if not slicer.util.confirmOkCancelDisplay(text, windowTitle=_("iSegFormer dependencies")):
                return False
        if torchProblems:
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                raise RuntimeError(
                    "The PyTorch extension is not installed: install 'PyTorch' from the Extensions "
                    "Manager, restart Slicer, and press Install again."
                )
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            requirement = deps.TORCH.specifier[len("torch"):]
            if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=requirement) is None:
                return False
        if pipProblems:
            slicer.util.pip_install(" ".join(req.specifier for req, _version in pipProblems))
        return not deps.unmet((deps.TORCH, *deps.PIP_REQUIREMENTS))

    # ---- models -----------------------------------------------------------------------------
    @staticmethod
    def clickModelNames():
        """Click models of the bundled registry, read as JSON (no package import)."""
        import json

        _ensureIsegformerImportable()
        spec = importlib.util.find_spec("isegformer")
        names = []
        if spec is not None and spec.origin:
            path = os.path.join(os.path.dirname(spec.origin), "resources", "models.json")
            try:
                with open(path, encoding="utf-8") as file:
                    names = [m["name"] for m in json.load(file)["models"] if m.get("kind") == "click_model"]
            except (OSError, ValueError, KeyError):
                logging.warning("iSegFormer: could not read the model registry at %s", path)
        if DEFAULT_MODEL in names:
            names.remove(DEFAULT_MODEL)
        return [DEFAULT_MODEL] + names

    def setModelSettings(self, model=None, device=None, propagation=None):
        """Choose the click model (registry name or checkpoint path), device and propagation."""
        changed = False
        for attribute, value in (("model", model), ("device", device), ("propagation", propagation)):
            if value and getattr(self, attribute) != value:
                setattr(self, attribute, value)
                changed = True
        if changed and self._bridge is not None:
            self._stale = True  # reopened with the new settings, clicks replayed, on next use

    def _isPath(self, name):
        return os.sep in name or "/" in name or name.endswith((".pth", ".pt", ".ckpt"))

    def modelsToDownload(self):
        """Registry names needed by the current settings that are not in the cache yet."""
        if self.missingDependencies():
            return []
        from isegformer.weights.registry import load_registry
        from isegformer.weights.resolve import model_status

        registry = load_registry()
        needed = [] if self._isPath(self.model) else [self.model]
        if self.propagation == "stcn":
            needed.append(STCN_MODEL)
        return [n for n in needed if n in registry and not model_status(registry.get(n), verify=False).cached]

    def modelNeedsDownload(self):
        try:
            return bool(self.modelsToDownload())
        except Exception:  # a broken registry is reported by modelStatusText
            return False

    def modelStatusText(self):
        if self.missingDependencies():
            return _("Install the dependencies to use a model.")
        if self._isPath(self.model):
            return _("Checkpoint file: ") + self.model
        try:
            missing = self.modelsToDownload()
        except Exception as err:
            return str(err)
        if missing:
            return _("Not downloaded yet: ") + ", ".join(missing)
        return _("Cached and ready: ") + self.model

    def downloadModels(self, names, progress=None):
        """Download registry entries into the cache (with progress and cancel). Worker-safe."""
        from isegformer.weights.resolve import download_model

        return [str(download_model(name, progress=progress)) for name in names]

    # ---- inputs -----------------------------------------------------------------------------
    def getSegmentEditorNode(self):
        """The module's own Segment Editor parameter node (masking and overwrite settings)."""
        node = slicer.mrmlScene.GetSingletonNode(MODULE_NAME, "vtkMRMLSegmentEditorNode")
        if node is None:
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
            node.UnRegister(None)
            node.SetSingletonTag(MODULE_NAME)
            node = slicer.mrmlScene.AddNode(node)
        self.segmentEditorNode = node
        return node

    def setVolume(self, volumeNode):
        """Use ``volumeNode`` (a scalar volume) as the source; forgets the clicks of the previous one."""
        if volumeNode is self.volumeNode:
            return
        self.volumeNode = volumeNode
        self._closeSession()
        self._records = []
        self._written = {}
        self._handEdited = {}
        for node in self.getClickNodes(create=False):
            if node is not None:
                node.RemoveAllControlPoints()

    def setSegmentation(self, volumeNode=None, segmentationNode=None, segmentId=None):
        """Use (and create when None) a segmentation and segment; returns (node, segment ID)."""
        if volumeNode is not None:
            self.setVolume(volumeNode)
        if self.volumeNode is None:
            raise ValueError("Select the source volume first.")
        if segmentationNode is None:
            segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "iSegFormer segmentation")
            segmentationNode.CreateDefaultDisplayNodes()
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(self.volumeNode)
        segmentation = segmentationNode.GetSegmentation()
        if not segmentId or segmentation.GetSegment(segmentId) is None:
            segmentId = segmentation.AddEmptySegment("", "Segment_%d" % (segmentation.GetNumberOfSegments() + 1))
        self.segmentationNode = segmentationNode
        self.segmentId = segmentId
        return segmentationNode, segmentId

    def getClickNodes(self, create=True):
        """(positive, negative) point lists, created on first use."""
        nodes = []
        for name, color in ((POSITIVE_NODE_NAME, (0.1, 0.8, 0.1)), (NEGATIVE_NODE_NAME, (0.9, 0.1, 0.1))):
            node = slicer.mrmlScene.GetFirstNodeByName(name)
            if node is None and create:
                node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
                node.CreateDefaultDisplayNodes()
                node.GetDisplayNode().SetSelectedColor(*color)
                node.GetDisplayNode().SetColor(*color)
                labelFormat = "+%d" if name == POSITIVE_NODE_NAME else "-%d"
                if hasattr(node, "SetControlPointLabelFormat"):
                    node.SetControlPointLabelFormat(labelFormat)
                else:
                    node.SetMarkupLabelFormat(labelFormat)
            nodes.append(node)
        return tuple(nodes)

    # ---- geometry (GUI thread: reads MRML) --------------------------------------------------
    def volumeIJKToWorld(self):
        """The source volume's 4x4 IJK-to-world matrix, its parent transforms applied."""
        support = _support()
        matrix = vtk.vtkMatrix4x4()
        self.volumeNode.GetIJKToRASMatrix(matrix)
        chain = []
        parent = self.volumeNode.GetParentTransformNode()
        if parent is not None:
            if not parent.IsTransformToWorldLinear():
                raise ValueError(
                    "The source volume is under a non-linear transform: harden the transform "
                    "(Data module, right-click the volume, Harden transform) and click again."
                )
            toWorld = vtk.vtkMatrix4x4()
            parent.GetMatrixTransformToWorld(toWorld)
            chain.append(slicer.util.arrayFromVTKMatrix(toWorld))
        return support.transforms.ijk_to_world(slicer.util.arrayFromVTKMatrix(matrix), chain)

    def locateClick(self, rasPoint, sliceNode=None, axis=None):
        """Where a world (RAS) point falls: a SlicePoint (axis, slice index, row, col).

        The axis comes from ``sliceNode``'s normal (sign-aware) unless given; an oblique view
        raises ObliqueViewError and nothing else happens.
        """
        support = _support()
        if self.volumeNode is None:
            raise ValueError("Select the source volume first.")
        ijkToWorld = self.volumeIJKToWorld()
        if axis is None:
            if sliceNode is None:
                voxelSize = float(np.max(np.linalg.norm(ijkToWorld[:3, :3], axis=0)))
                sliceNode = self._sliceNodeContaining(rasPoint, tolerance=voxelSize)
            sliceToRas = slicer.util.arrayFromVTKMatrix(sliceNode.GetSliceToRAS())
            axis = support.views.axis_for_view(
                sliceToRas, ijkToWorld, self.viewAlignmentToleranceDegrees, view_name=sliceNode.GetName()
            ).axis
        shape = slicer.util.arrayFromVolume(self.volumeNode).shape
        return support.transforms.slice_point(rasPoint, ijkToWorld, axis, shape)

    @staticmethod
    def _sliceNodeContaining(rasPoint, tolerance):
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
            raise ValueError("No slice view found: give the axis (0=k, 1=j, 2=i) explicitly.")
        if bestDistance > tolerance:
            raise ValueError(
                "The point is not on any slice view's plane (placed in the 3D view?): place points "
                "in the Red, Yellow or Green view, or give the axis (0=k, 1=j, 2=i) explicitly."
            )
        return best

    # ---- the worker -------------------------------------------------------------------------
    @property
    def worker(self):
        if self._worker is None:
            self._worker = _support().worker.Worker(name="isegformer-slicer")
        return self._worker

    def submit(self, function, label="", apply=None, onFailure=None):
        """Run ``function(progress)`` on the worker; ``apply(result)`` runs later on this thread,
        ``onFailure()`` instead when the job fails or is cancelled."""
        jobId = self.worker.submit(function, label=label)
        if apply is not None:
            self._appliers[jobId] = apply
        if onFailure is not None:
            self._onFailure[jobId] = onFailure
        return jobId

    def pollEvents(self):
        """Deliver finished jobs: apply their results (MRML writes happen here) and return events."""
        if self._worker is None:
            return []
        workerModule = _support().worker
        events = []
        for event in self._worker.poll():
            if isinstance(event, workerModule.Progress):
                events.append(_Event("progress", event.job_id, event.done, event.total, event.message))
                continue
            apply = self._appliers.pop(event.job_id, None)
            onFailure = self._onFailure.pop(event.job_id, None)
            error, trace = event.error, event.traceback
            if error is None and apply is not None:
                try:
                    apply(event.value)
                except Exception as err:
                    import traceback

                    error, trace = err, traceback.format_exc()
            if error is not None and onFailure is not None:
                onFailure()
            events.append(_Event("done", event.job_id, error=error, cancelled=event.cancelled, traceback=trace))
        return events

    def isBusy(self):
        return self._worker is not None and self._worker.busy

    def cancelAll(self):
        if self._worker is not None:
            self._worker.cancel()

    def waitForJobs(self, timeout=None):
        """Block until the worker is idle and apply the results (scripts and tests)."""
        events = []
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.isBusy():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("iSegFormer jobs did not finish in time.")
            time.sleep(0.02)
            events += self.pollEvents()
        events += self.pollEvents()
        for event in events:
            if event.kind == "done" and event.error is not None and not event.cancelled:
                raise event.error
        return events

    def shutdown(self):
        if self._worker is not None:
            self._worker.shutdown(wait=False)
            self._worker = None
        if self._finetune is not None:  # no orphan training process once the module is gone
            self._finetune.cancel(timeout=None)
            self._finetune = None
            self._removeFinetuneFolder()

    def reset(self):
        """Forget the session, the clicks and the nodes (scene closed)."""
        self._closeSession()
        self.volumeNode = self.segmentationNode = self.segmentId = None
        self._records = []
        self._written = {}
        self._handEdited = {}

    # ---- the session (worker thread) --------------------------------------------------------
    def _closeSession(self):
        """Drop the session (new volume, scene closed): pending work is cancelled."""
        self._generation += 1
        self._bridge = None
        self._stale = False
        if self._worker is not None:
            self._worker.cancel()

    def _openSessionJob(self):
        """A worker job that opens a session (model loaded and warmed up) and replays the clicks.

        Replaying the recorded clicks lets a new session (other model or device, or STCN weights
        downloaded since) continue exactly where the previous one was.
        """
        from isegformer.slicer_support.session_bridge import ClickSpec

        volume = slicer.util.arrayFromVolume(self.volumeNode).copy()
        ijkToWorld = self.volumeIJKToWorld()
        model, device, propagation = self.model, self.device, self.propagation
        generation = self._generation
        slices = {}
        for record in sorted(self._records, key=lambda r: r.order):
            slices.setdefault(record.sliceKey, []).append(ClickSpec(record.point.row, record.point.col, record.positive))

        def openSession(progress):
            from isegformer.errors import WeightsError
            from isegformer.slicer_support.session_bridge import SessionBridge
            from isegformer.weights.resolve import resolve_model

            progress(0, 0, "Loading the model...")
            try:
                checkpoint = resolve_model(model, download=False)
            except WeightsError as err:
                raise WeightsError(f"{err} In Slicer: press Download in the module's Setup section.") from err
            stcnWeights = None
            if propagation == "stcn":
                try:  # clicks work without STCN; Propagate says what is missing
                    stcnWeights = str(resolve_model(STCN_MODEL, download=False))
                except WeightsError as err:
                    logging.warning("iSegFormer: STCN weights not available yet: %s", err)
            bridge = SessionBridge.open(volume, ijkToWorld, click_model=str(checkpoint), device=device,
                                        stcn_weights=stcnWeights)
            bridge.warm_up()
            for number, ((segmentId, axis, index), clicks) in enumerate(slices.items(), start=1):
                progress(number, len(slices), "Restoring the clicks...")
                bridge.replay(segmentId, axis, index, clicks)
            if generation == self._generation:  # else the volume changed meanwhile
                self._bridge = bridge
            predictor = getattr(bridge.session, "predictor", None)
            return str(getattr(predictor, "device", device))

        return openSession

    def _sessionOpened(self, deviceName):
        self.activeDevice = deviceName
        if deviceName == "cpu":
            logging.warning("iSegFormer runs on the CPU: each click takes seconds. A CUDA GPU is much faster.")

    def _submitWithSession(self, function, label, apply, onFailure=None):
        """Queue ``function(bridge, progress)``, after opening the session if none is open."""
        if self._bridge is None or self._stale:
            self._stale = False
            self.submit(self._openSessionJob(), label="open", apply=self._sessionOpened)

        def run(progress):
            bridge = self._bridge
            if bridge is None:
                raise RuntimeError(
                    "No iSegFormer session: the model could not be loaded (see the previous error), "
                    "or the volume changed meanwhile. Place the point again."
                )
            return function(bridge, progress)

        return self.submit(run, label=label, apply=apply, onFailure=onFailure)

    # ---- clicks -----------------------------------------------------------------------------
    def submitClick(self, pointId, rasPoint, positive, segmentId=None, sliceNode=None, axis=None):
        """Queue a click at a world point; its slice is written when the result arrives."""
        from isegformer.slicer_support.session_bridge import SliceUpdate  # noqa: F401 (checks the package)

        segmentId = segmentId or self.segmentId
        point = self.locateClick(rasPoint, sliceNode, axis)
        self._order += 1
        record = _ClickRecord(pointId, bool(positive), segmentId, point, self._order)
        jobId = self._submitWithSession(  # first: a session opened now replays only earlier clicks
            lambda bridge, progress: bridge.click(segmentId, point, bool(positive)),
            label="click", apply=self.applySliceUpdate, onFailure=lambda: self._forgetRecord(record),
        )
        self._records.append(record)
        return jobId

    def _forgetRecord(self, record):
        """A click that did not reach the session leaves no point behind."""
        if record in self._records:
            self._records.remove(record)
        for node in self.getClickNodes(create=False):
            if node is not None:
                index = node.GetNthControlPointIndexByID(record.pointId)
                if index >= 0:
                    self._removeControlPoint(node, index)

    def submitPointsChanged(self, sliceNode=None):
        """After points moved or were deleted: re-run the clicks of every slice that changed."""
        positive, negative = self.getClickNodes(create=False)
        current = {}
        for node, isPositive in ((positive, True), (negative, False)):
            if node is None:
                continue
            for index in range(node.GetNumberOfControlPoints()):
                position = [0.0, 0.0, 0.0]
                node.GetNthControlPointPositionWorld(index, position)
                current[node.GetNthControlPointID(index)] = position
        affected = set()
        kept = []
        for record in self._records:
            if record.pointId not in current:
                affected.add(record.sliceKey)  # deleted
                continue
            moved = self.locateClick(current[record.pointId], axis=record.point.axis)
            if (moved.index, round(moved.row, 3), round(moved.col, 3)) != (
                    record.point.index, round(record.point.row, 3), round(record.point.col, 3)):
                affected.add(record.sliceKey)
                record.point = moved
                affected.add(record.sliceKey)
            kept.append(record)
        self._records = kept
        return [self._submitReplay(*key) for key in sorted(affected)]

    def _clicksOf(self, segmentId, axis, index):
        from isegformer.slicer_support.session_bridge import ClickSpec

        records = sorted((r for r in self._records if r.sliceKey == (segmentId, axis, index)), key=lambda r: r.order)
        return [ClickSpec(r.point.row, r.point.col, r.positive) for r in records]

    def _submitReplay(self, segmentId, axis, index):
        clicks = self._clicksOf(segmentId, axis, index)
        return self._submitWithSession(
            lambda bridge, progress: bridge.replay(segmentId, axis, index, clicks),
            label="replay", apply=self.applySliceUpdate,
        )

    def submitUndoLastClick(self):
        """Take back the most recent point (and its effect on the slice). None if there is none."""
        if not self._records:
            return None
        record = max(self._records, key=lambda r: r.order)
        self._records.remove(record)
        for node in self.getClickNodes(create=False):
            if node is not None:
                index = node.GetNthControlPointIndexByID(record.pointId)
                if index >= 0:
                    self._removeControlPoint(node, index)
        segmentId, axis, index = record.sliceKey
        remaining = self._clicksOf(segmentId, axis, index)
        return self._submitWithSession(
            lambda bridge, progress: bridge.undo_click(segmentId, axis, index, remaining),
            label="undo", apply=self.applySliceUpdate,
        )

    @staticmethod
    def _removeControlPoint(node, index):
        node.SetAttribute(PLACING_ATTRIBUTE, "1")
        try:
            node.RemoveNthControlPoint(index)
        finally:
            node.RemoveAttribute(PLACING_ATTRIBUTE)

    def hasClicks(self):
        return bool(self._records)

    def lastClickDescription(self):
        if not self._records:
            return ""
        record = max(self._records, key=lambda r: r.order)
        axisName = ("k", "j", "i")[record.point.axis]
        return _("Last point: slice {index} along {axis} (row {row:.0f}, column {col:.0f}), {sign}").format(
            index=record.point.index, axis=axisName, row=record.point.row, col=record.point.col,
            sign=_("positive") if record.positive else _("negative"),
        )

    # ---- propagation ------------------------------------------------------------------------
    def submitPropagation(self, segmentId=None):
        """Queue a propagation of a segment along the axis of its latest click."""
        segmentId = segmentId or self.segmentId
        records = [r for r in self._records if r.segmentId == segmentId]
        axis = max(records, key=lambda r: r.order).point.axis if records else None
        current = self.segmentArray(segmentId)
        written = self._written.get(segmentId)
        if axis is not None and written is not None:  # the session adopts these; fine-tuning uses them too
            self._handEdited.setdefault((segmentId, axis), set()).update(_editedSlices(current, written, axis))
        method = self.propagation
        if method == "stcn" and self._bridge is not None and not self._bridge.has_stcn_weights \
                and STCN_MODEL not in self.modelsToDownload():
            self._stale = True  # STCN weights arrived since the session opened

        def propagate(bridge, progress):
            if method == "stcn" and not bridge.has_stcn_weights:
                raise RuntimeError(
                    "The STCN propagation weights are not downloaded: press Download in the Setup "
                    "section (then place a point or propagate again), or choose the 'interpolation' method."
                )
            if axis is not None:
                bridge.adopt_edits(segmentId, axis, current, written)
            return bridge.propagate(segmentId, axis=axis, method=method, progress=progress)

        return self._submitWithSession(propagate, label="propagate", apply=self.applyVolumeUpdate)

    # ---- writing into the segmentation (GUI thread) ------------------------------------------
    def editRules(self):
        """The Segment Editor's masking and overwrite settings as EditRules."""
        sliceWrite = _support().slice_write
        node = self.segmentEditorNode
        visible = None
        displayNode = self.segmentationNode.GetDisplayNode() if self.segmentationNode else None
        if displayNode is not None:
            visible = frozenset(
                s for s in self.segmentationNode.GetSegmentation().GetSegmentIDs() if displayNode.GetSegmentVisibility(s)
            )
        if node is None:
            return sliceWrite.EditRules(visible_segments=visible)
        intensityRange = None
        intensityOn = node.GetSourceVolumeIntensityMask() if hasattr(node, "GetSourceVolumeIntensityMask") \
            else node.GetMasterVolumeIntensityMask()
        if intensityOn:
            intensityRange = tuple(node.GetSourceVolumeIntensityMaskRange()) \
                if hasattr(node, "GetSourceVolumeIntensityMaskRange") else tuple(node.GetMasterVolumeIntensityMaskRange())
        return sliceWrite.EditRules(
            mask_mode=sliceWrite.MaskMode(node.GetMaskMode()),
            overwrite_mode=sliceWrite.OverwriteMode(node.GetOverwriteMode()),
            mask_segment=node.GetMaskSegmentID() or None,
            intensity_range=intensityRange,
            visible_segments=visible,
        )

    def segmentArray(self, segmentId=None):
        """A segment as a (k, j, i) uint8 array on the source volume's grid (a copy)."""
        segmentId = segmentId or self.segmentId
        try:
            return slicer.util.arrayFromSegmentBinaryLabelmap(self.segmentationNode, segmentId, self.volumeNode).copy()
        except RuntimeError:  # an empty segment has nothing to export
            return np.zeros(slicer.util.arrayFromVolume(self.volumeNode).shape, np.uint8)

    def _checkSameFrame(self):
        if self.segmentationNode.GetParentTransformNode() is not self.volumeNode.GetParentTransformNode():
            raise ValueError(
                "The segmentation and the source volume are under different transforms: put the "
                "segmentation under the volume's transform (Data module) and try again."
            )

    def applySliceUpdate(self, update):
        """Write one slice of a click result into its segment, following the editor's rules."""
        self._writeSlices(update.segment, update.axis, update.index, update.index,
                          np.expand_dims(update.mask, update.axis))

    def applyVolumeUpdate(self, update):
        """Write a propagation result: only the slices that differ are changed."""
        shape = update.mask.shape
        self._writeSlices(update.segment, update.axis, 0, shape[update.axis] - 1, update.mask)

    def _writeSlices(self, segmentId, axis, first, last, masks):
        """Write slices first..last along ``axis`` of a segment (masks stacked along ``axis``)."""
        support = _support()
        self._checkSameFrame()
        segmentation = self.segmentationNode.GetSegmentation()
        if segmentation.GetSegment(segmentId) is None:
            raise ValueError("The segment was deleted; select or add a segment and click again.")
        rules = self.editRules()
        ids = list(segmentation.GetSegmentIDs())
        arrays = {sid: self.segmentArray(sid) for sid in ids}
        source = slicer.util.arrayFromVolume(self.volumeNode) if rules.intensity_range else None
        changedSegments, changedIndices = set(), []
        for offset, index in enumerate(range(first, last + 1)):
            mask = support.transforms.take_slice(masks, axis, offset)
            changes = support.slice_write.write_slice(mask, segmentId, arrays, axis, index, rules, source)
            support.slice_write.apply_slice_changes(arrays, axis, index, changes)
            changedSegments.update(changes)
            if changes:
                changedIndices.append(index)
        if changedSegments:
            if self.saveStateForUndo is not None:
                self.saveStateForUndo()
            for sid in sorted(changedSegments):  # only the span of slices that changed is sent
                self._setSegmentSlab(sid, axis, changedIndices[0], changedIndices[-1], arrays[sid])
        for sid in changedSegments | {segmentId}:
            if sid == segmentId or sid in self._written:
                self._written[sid] = arrays[sid].astype(bool)

    def _setSegmentSlab(self, segmentId, axis, first, last, array):
        """Replace slices first..last of a segment with those of ``array`` (k, j, i); others untouched."""
        kji = [slice(None)] * 3
        kji[axis] = slice(first, last + 1)
        slab = np.ascontiguousarray(array[tuple(kji)], dtype=np.uint8)
        extent = [0, array.shape[2] - 1, 0, array.shape[1] - 1, 0, array.shape[0] - 1]  # i, j, k
        ijkAxis = 2 - axis
        extent[2 * ijkAxis], extent[2 * ijkAxis + 1] = first, last
        image = slicer.vtkOrientedImageData()
        image.SetExtent(extent)
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        from vtk.util import numpy_support

        scalars = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
        scalars[:] = slab.reshape(-1)
        ijkToRas = vtk.vtkMatrix4x4()
        self.volumeNode.GetIJKToRASMatrix(ijkToRas)
        image.SetImageToWorldMatrix(ijkToRas)
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        # Remove what the slab no longer has, then add what it has: only this segment's voxels
        # inside the slab change (Slicer separates shared layers under the modifier first).
        if not logic.SetBinaryLabelmapToSegment(image, self.segmentationNode, segmentId, logic.MODE_MERGE_MIN, extent):
            raise RuntimeError("Slicer refused to update segment %s." % segmentId)
        if not logic.SetBinaryLabelmapToSegment(image, self.segmentationNode, segmentId, logic.MODE_MERGE_MASK, extent):
            raise RuntimeError("Slicer refused to update segment %s." % segmentId)

    # ---- fine-tuning (a separate process) -------------------------------------------------------
    def finetuneSlices(self, segmentId=None, axis=None):
        """The slices a fine-tune learns from: ``(axis, indices, source)``.

        ``source`` "annotated": the slices of the segment annotated in this module along ``axis``
        (default: the axis of the segment's latest point), that is, slices with points and slices
        edited by hand, which propagation never overwrites. Propagated slices are not used: the
        model would learn its own mistakes. "labelled": the segment has no such slice (it was
        drawn with other tools, or loaded), so every slice along ``axis`` (default k) that holds
        it is used. Empty slices are left out; no slice at all raises ValueError.
        """
        segmentId = segmentId or self.segmentId
        if self.volumeNode is None or self.segmentationNode is None or not segmentId:
            raise ValueError("Select the source volume and the segment to learn from first.")
        if self.segmentationNode.GetSegmentation().GetSegment(segmentId) is None:
            raise ValueError("The segment was deleted; select the segment to learn from.")
        records = [r for r in self._records if r.segmentId == segmentId]
        if axis is None and records:
            axis = max(records, key=lambda r: r.order).point.axis
        current = self.segmentArray(segmentId).astype(bool)
        axisName = ("k", "j", "i")
        if axis is not None:
            annotated = {r.point.index for r in records if r.point.axis == axis}
            annotated |= self._handEdited.get((segmentId, axis), set())
            written = self._written.get(segmentId)
            if written is not None:
                annotated |= _editedSlices(current, written, axis)
            indices = sorted(i for i in annotated if _support().transforms.take_slice(current, axis, i).any())
            if indices:
                return axis, indices, "annotated"
        axis = 0 if axis is None else axis
        other = tuple(a for a in range(3) if a != axis)
        indices = [int(i) for i in np.flatnonzero(current.any(axis=other))]
        if not indices:
            raise ValueError(
                "The segment is empty along {axis}: segment the structure on a few slices first "
                "(points, or the Segment Editor), then fine-tune.".format(axis=axisName[axis])
            )
        return axis, indices, "labelled"

    def _finetuneInit(self):
        """Where training starts: the click model in use (``init`` of ``isegformer finetune``)."""
        if self._isPath(self.model):
            return self.model
        if self.model == DEFAULT_MODEL:
            return "official"  # the child downloads it if needed
        from isegformer.errors import WeightsError
        from isegformer.weights.resolve import resolve_model

        try:
            return str(resolve_model(self.model, download=False))
        except WeightsError as err:
            raise WeightsError(f"{err} In Slicer: press Download in the module's Setup section.") from err

    def _finetuneName(self, segmentId):
        segment = self.segmentationNode.GetSegmentation().GetSegment(segmentId)
        parts = [self.volumeNode.GetName(), segment.GetName() if hasattr(segment, "GetName") else segmentId]
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(p for p in parts if p)).strip("_.-") or "slicer"
        return "%s-%s" % (stem[:60], time.strftime("%Y%m%d-%H%M%S"))

    def startFinetune(self, epochs=DEFAULT_FINETUNE_EPOCHS, segmentId=None, axis=None, name=None,
                      python=None, env=None, **options):
        """Start fine-tuning the click model on a segment's slices, in a separate process.

        The source volume and a label map of the segment (1 inside) are written to a temporary
        folder that the child reads; :meth:`finetuneSlices` chooses the slices. Training starts
        from the click model in use, on the selected device; ``options`` are further
        ``isegformer finetune`` options (``steps_per_epoch=50``, ``init="scratch"``, ``out=...``).
        The run goes to ``ISEGFORMER_HOME/finetuned/<name>``. Returns the FinetuneProcess; call
        :meth:`pollFinetune` (the widget does, on a timer) until it reports the end.
        """
        if self._finetune is not None:
            raise RuntimeError("A fine-tuning run is in progress: wait for it to end, or cancel it.")
        segmentId = segmentId or self.segmentId
        axis, indices, source = self.finetuneSlices(segmentId, axis)
        _ensureIsegformerImportable()
        from isegformer.finetune.process import FinetuneProcess, build_args
        from isegformer.volume import Volume, write_volume

        settings = {"init": self._finetuneInit(), "device": self.device, "epochs": int(epochs)}
        if "out" not in options:
            settings["name"] = name or self._finetuneName(segmentId)
        settings.update(options)
        ijkToRas = vtk.vtkMatrix4x4()
        self.volumeNode.GetIJKToRASMatrix(ijkToRas)  # the grid only: both files share it
        grid = Volume(slicer.util.arrayFromVolume(self.volumeNode), slicer.util.arrayFromVTKMatrix(ijkToRas))
        labels = self.segmentArray(segmentId).astype(bool)
        folder = tempfile.mkdtemp(prefix="isegformer-finetune-")
        try:
            # uncompressed: written on the GUI thread, read once by the child, then deleted
            image = write_volume(grid, os.path.join(folder, "image.nrrd"), compress=False)
            label = write_volume(grid, os.path.join(folder, "label.nrrd"), array=labels.astype(np.uint8), compress=False)
            args = build_args(volumes=[image], labels=[label], axis=("k", "j", "i")[axis],
                              slices=",".join(str(i) for i in indices), label_value=1, **settings)
            job = FinetuneProcess(args, python=python, env=env).start()
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self._finetune, self._finetuneFolder, self._finetunePlan = job, folder, (axis, indices, source)
        logging.info("iSegFormer: fine-tuning on %s", self.finetuneDescription())
        return job

    def isFinetuning(self):
        return self._finetune is not None

    def finetuneDescription(self):
        """Which slices the current (or last) run learns from, for people."""
        if self._finetunePlan is None:
            return ""
        axis, indices, source = self._finetunePlan
        shown = ", ".join(str(i) for i in indices[:12]) + (", ..." if len(indices) > 12 else "")
        what = _("annotated slices") if source == "annotated" else _("slices holding the segment")
        return _("Fine-tuning on {count} {what} along {axis} ({shown}).").format(
            count=len(indices), what=what, axis=("k", "j", "i")[axis], shown=shown)

    def cancelFinetune(self):
        """Ask the run to stop after its current step (returns at once; False if none runs).

        The click model stays as it was; the last completed epoch stays in the run folder.
        """
        if self._finetune is None:
            return False
        self._finetune.cancel(timeout=None)
        return True

    def pollFinetune(self):
        """Read what the run reported (never blocks); None when no run is going.

        When the run has ended successfully, the click model switches to its checkpoint through
        :meth:`setModelSettings` (the session reopens with it on the next click).
        """
        job = self._finetune
        if job is None:
            return None
        job.poll()
        if not job.finished:
            text = job.message or _("Preparing the training data...")
            if job.total:
                text = _("Fine-tuning: step {done}/{total}. {message}").format(
                    done=job.done, total=job.total, message=job.message)
            return _FinetuneState(True, job.done, job.total, text)
        outcome = job.outcome()
        self._finetune = None
        self._removeFinetuneFolder()
        last = outcome.epochs[-1] if outcome.epochs else {}
        if outcome.status == "done":
            self.setModelSettings(model=str(outcome.checkpoint))
            noc = last.get("val_noc85")
            text = _("Fine-tuned for {epochs} epochs; the click model is now {checkpoint}.").format(
                epochs=len(outcome.epochs), checkpoint=outcome.checkpoint)
            if noc is not None:
                text += " " + _("Quick NoC@85 on training objects: {noc:.2f}.").format(noc=noc)
            return _FinetuneState(False, job.total, job.total, text, "done", outcome.checkpoint)
        if outcome.status == "cancelled":
            text = _("Fine-tuning cancelled; the click model is unchanged.")
            if outcome.checkpoint is not None:
                text += " " + _("The last completed epoch is kept in {folder}.").format(folder=outcome.out_dir)
            return _FinetuneState(False, job.done, job.total, text, "cancelled")
        text = _("Fine-tuning failed: {error}").format(error=outcome.error)
        return _FinetuneState(False, job.done, job.total, text, "error", details=outcome.error or "")

    def waitForFinetune(self, timeout=None, interval=0.2):
        """Block until the run ends (scripts and tests); returns the checkpoint, raises on failure."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = self.pollFinetune()
            if state is None:
                raise RuntimeError("No fine-tuning run was started.")
            if not state.running:
                if state.status == "done":
                    return state.checkpoint
                raise RuntimeError(state.text)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("The fine-tuning run is still going.")
            time.sleep(interval)

    def _removeFinetuneFolder(self):
        if self._finetuneFolder is not None:
            shutil.rmtree(self._finetuneFolder, ignore_errors=True)
            self._finetuneFolder = None

    # ---- synchronous API for the Python console -----------------------------------------------
    def addClick(self, rasPoint, positive=True, sliceNode=None, axis=None, segmentId=None):
        """Click at a world point, wait for the model, write the slice. Returns the SlicePoint."""
        if self.segmentationNode is None:
            self.setSegmentation()
        positiveNode, negativeNode = self.getClickNodes()
        node = positiveNode if positive else negativeNode
        node.SetAttribute(PLACING_ATTRIBUTE, "1")
        try:
            index = node.AddControlPointWorld(vtk.vtkVector3d(*rasPoint))
        finally:
            node.RemoveAttribute(PLACING_ATTRIBUTE)
        try:
            self.submitClick(node.GetNthControlPointID(index), rasPoint, positive, segmentId, sliceNode, axis)
        except Exception:
            self._removeControlPoint(node, index)
            raise
        self.waitForJobs()
        return max(self._records, key=lambda r: r.order).point

    def undoLastClick(self):
        """Take back the last click and wait until its slice is restored."""
        if self.submitUndoLastClick() is not None:
            self.waitForJobs()

    def propagate(self, segmentId=None):
        """Propagate a segment's annotated slices through the volume and wait for it."""
        self.submitPropagation(segmentId)
        self.waitForJobs()


#
# Test
#


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
        _ensureIsegformerImportable()
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
        _ensureIsegformerImportable()
        from isegformer.slicer_support.views import ObliqueViewError

        logic, volumeNode = self._logicWithFakeSession()
        sliceNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSliceNode")
        rotation = vtk.vtkTransform()
        rotation.RotateX(30)
        sliceNode.GetSliceToRAS().DeepCopy(rotation.GetMatrix())
        with self.assertRaises(ObliqueViewError):
            logic.locateClick((10.0, -5.0, 3.0), sliceNode)
        self.delayDisplay("Oblique view refused")
