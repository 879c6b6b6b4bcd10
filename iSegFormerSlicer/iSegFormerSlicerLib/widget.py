"""iSegFormerSlicerWidget: wires the GUI and the slice views' point events to the Logic.

It holds no segmentation state of its own: the settings go to the Logic's parameter node
(saved with the scene) and come back from it when the module is entered or a scene is
loaded; placed, moved and deleted points go to the Logic, and the Logic's job events come
back on a timer as progress dialogs and messages.
"""
import logging
import time

import qt
import vtk

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from . import _, clicks, geometry, moduleResourcePath
from .logic import iSegFormerSlicerLogic
from .models import isCheckpointPath
from .parameters import DEVICES

#: work shorter than this shows no dialog (milliseconds)
PROGRESS_DELAY_MS = 1000
POLL_INTERVAL_MS = 40
#: the fine-tuning child reports at most twice a second; reading it more often is wasted work
FINETUNE_POLL_INTERVAL_MS = 250


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
        self._updatingGUI = False  # True while the GUI shows the parameter node's settings

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
        self._followEditorUndoButtons()

        self.ui.deviceComboBox.clear()
        for device in DEVICES:
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
        self.ui.fastCpuCheckBox.connect("toggled(bool)", self.onModelSettingsChanged)
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
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndImport)

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
        self._updateGUIFromParameters()
        volume = self.ui.inputVolumeSelector.currentNode()
        if volume is not None:
            self.ui.segmentEditorWidget.setSourceVolumeNode(volume)
            self.logic.setVolume(volume)
        self._usePointLists()
        self.updateStatus()
        self._warmUp()

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
        # Closing the scene resets the parameter node; the settings the GUI shows stay the user's.
        self.onModelSettingsChanged()
        if self.parent.isEntered:
            self._usePointLists()

    def onSceneEndImport(self, caller, event):
        """A scene was loaded: take up the session it stores (no model load), show the settings
        its parameter node holds."""
        self.logic.resumeAfterImport()
        if self.parent.isEntered:
            self._updateGUIFromParameters()
            self._usePointLists()
            self.updateStatus()

    def _updateGUIFromParameters(self):
        """Show the parameter node's settings (the GUI's signals do not write them back meanwhile)."""
        parameters = self.logic.parameters
        self._updatingGUI = True
        try:
            if parameters.sourceVolume is not None:
                self.ui.inputVolumeSelector.setCurrentNode(parameters.sourceVolume)
            model = parameters.clickModel
            if isCheckpointPath(model):
                self.ui.checkpointPathLineEdit.currentPath = model
            else:
                self.ui.checkpointPathLineEdit.currentPath = ""
                self.ui.modelComboBox.currentText = model
            self.ui.deviceComboBox.currentText = parameters.device
            self.ui.fastCpuCheckBox.checked = parameters.clickPrecision == "int8"
            self.ui.propagationComboBox.currentText = parameters.propagationMethod
            if parameters.segmentation is not None:
                self.ui.segmentEditorWidget.setSegmentationNode(parameters.segmentation)
                if parameters.segmentId:
                    self.ui.segmentEditorWidget.setCurrentSegmentID(parameters.segmentId)
        finally:
            self._updatingGUI = False

    # ---- settings -------------------------------------------------------------------------
    def onInputVolumeChanged(self, volumeNode):
        self.ui.segmentEditorWidget.setSourceVolumeNode(volumeNode)
        self.logic.setVolume(volumeNode)
        self.updateStatus()
        self._warmUp()

    def onModelSettingsChanged(self, *args):
        if self._updatingGUI:
            return
        self.logic.setModelSettings(
            model=self.ui.checkpointPathLineEdit.currentPath or self.ui.modelComboBox.currentText,
            device=self.ui.deviceComboBox.currentText or "auto",
            precision="int8" if self.ui.fastCpuCheckBox.checked else "float32",
            propagation=self.ui.propagationComboBox.currentText or "stcn",
        )
        self.updateStatus()
        self._warmUp()

    def _warmUp(self):
        """With a volume and a usable click model chosen, load and warm the model up in the
        background, so that the first click costs one click. No dialog: a click placed
        meanwhile shows its own progress once it has waited a second."""
        if self._updatingGUI or not self.parent.isEntered:
            return
        try:
            jobId = self.logic.warmUpInBackground()
        except Exception as err:  # a broken install or registry: the status labels say what to do
            logging.warning("iSegFormer: no background warm-up: %s", err)
            return
        if jobId is not None:
            self._pollTimer.start()

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
        # The module's writes go into the editor's own history: its Undo/Redo buttons (and
        # logic.undo()/redo() from the console) take them back.
        from .segment_history import WidgetHistory

        self.logic.history = WidgetHistory(self.ui.segmentEditorWidget)
        return segmentation, segmentId

    def _followEditorUndoButtons(self):
        """The Segment Editor widget's own Undo and Redo buttons restore voxels from the history
        without the Logic knowing: the segments are read when a button is pressed, and the Logic
        told what the restore changed once its click is handled (our slot runs after the
        editor's own, connected when the editor was made), so the next propagation does not
        take the restored slices for hand edits."""
        self._beforeRestore = None
        for name in ("UndoButton", "RedoButton"):
            try:
                button = slicer.util.findChild(self.ui.segmentEditorWidget, name)
            except Exception:  # another Slicer's editor layout
                button = None
            if button is None:
                logging.warning("iSegFormer: the Segment Editor's %s was not found; after its undo or redo, "
                                "propagate may take restored slices for hand edits.", name)
                continue
            button.connect("pressed()", self._onEditorRestorePressed)
            button.connect("clicked()", self._onEditorRestoreDone)

    def _onEditorRestorePressed(self):
        try:
            self._beforeRestore = self.logic.trackedSegmentVoxels()
        except Exception as err:  # no volume or segmentation yet: nothing to follow
            logging.debug("iSegFormer: %s", err)
            self._beforeRestore = None

    def _onEditorRestoreDone(self):
        before, self._beforeRestore = self._beforeRestore, None
        if before:
            try:
                self.logic.afterHistoryRestore(before)
            except Exception as err:
                self._report(err)

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
        if self._muted or clicks.isPlacingProgrammatically(caller):
            return
        positive = clicks.isPositiveList(caller)
        clicks.markSign(caller, index, positive)  # the sign travels with the point (scene, .mrk.json)
        if not self._ensureReady():
            self._removePoint(caller, index)
            return
        segmentation, segmentId = self._prepareClicks()
        pointId = caller.GetNthControlPointID(index)
        position = [0.0, 0.0, 0.0]
        caller.GetNthControlPointPositionWorld(index, position)
        try:
            jobId = self.logic.submitClick(pointId, position, positive, segmentId, geometry.sliceNodeUnderCursor())
        except Exception as err:  # an oblique view, a point outside the volume: say so, change nothing
            self._removePoint(caller, index)
            self._report(err)
            return
        self._watch(jobId, _("Segmenting the slice..."))
        self.ui.axisInfoLabel.text = self.logic.lastClickDescription()
        self.updateStatus()

    @vtk.calldata_type(vtk.VTK_INT)
    def onPointMoved(self, caller, event, index=None):
        """A drag ended. Slicer sends PointEndInteractionEvent without call data (index None)."""
        if self._muted or clicks.isPlacingProgrammatically(caller):
            return
        try:
            jobIds = self.logic.submitPointsChanged(geometry.sliceNodeUnderCursor())
        except Exception as err:
            self._report(err)
            jobIds = getattr(err, "jobIds", [])  # the other points' updates, queued all the same
        for jobId in jobIds:
            self._watch(jobId, _("Updating the slice..."))

    def onPointRemoved(self, caller, event):
        if self._muted or clicks.isPlacingProgrammatically(caller):
            return
        try:
            jobIds = self.logic.submitPointsChanged(None)
        except Exception as err:  # raised in a VTK observer it would only reach the log
            self._report(err)
            jobIds = getattr(err, "jobIds", [])
        for jobId in jobIds:
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

