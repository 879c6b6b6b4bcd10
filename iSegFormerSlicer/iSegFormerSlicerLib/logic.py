"""iSegFormerSlicerLogic: everything the module does, with no Qt, usable from the Python console.

The Logic turns MRML nodes into plain arrays and matrices, runs the ``isegformer`` session on
a worker thread (through ``isegformer.slicer_support``), and writes results back into
segments on the calling thread. It imports neither ``qt`` nor ``ctk``: it runs on Slicer's
own MRML from the ``slicer-core`` wheel as well as in the application. Neither torch nor
``isegformer`` is imported when this file is loaded: both come in only after the explicit
dependency step.
"""
import logging
import os

import numpy as np

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

from . import _, MODULE_NAME, invalidInput, missingSegment
from . import clicks, geometry, models
from .finetune import FinetuneActions, editedSlices
from .jobs import JobQueue
from .models import DEFAULT_MODEL, STCN_MODEL
from .parameters import CLICK_PRECISIONS, DEVICES, PROPAGATION_METHODS, ModuleParameters
from .scene_state import SceneStateActions
from .segment_history import ActionStates, EditorLogicHistory

# Names other code and older scripts import from here.
POSITIVE_NODE_NAME = clicks.POSITIVE_NODE_NAME
NEGATIVE_NODE_NAME = clicks.NEGATIVE_NODE_NAME
PLACING_ATTRIBUTE = clicks.PLACING_ATTRIBUTE


class iSegFormerSlicerLogic(ScriptedLoadableModuleLogic, FinetuneActions, SceneStateActions):
    """Everything the module does, usable from the Python console without the widget.

    Synchronous methods (``addClick``, ``propagate``, ``undoLastClick``) run the model in the
    calling thread; the widget uses the ``submit...`` variants, which run it on the worker
    thread and apply the result on the GUI thread when ``pollEvents`` sees it finish.

    The source volume, segmentation, segment, click model, device and propagation method live
    in the module's parameter node (:mod:`parameters`), so they are saved with the scene.
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        #: when set, called instead of ``history.saveState()`` before an action's first write
        #: (scripts and tests); None: :attr:`history` (the widget's editor, or the Logic's own)
        self.saveStateForUndo = None
        self._history = None  # segment_history.EditorLogicHistory, made on first use
        self._actions = ActionStates(self._saveState)
        #: the Segment Editor node whose masking and overwrite settings writes follow
        self.segmentEditorNode = None
        self.viewAlignmentToleranceDegrees = 1.0
        #: the torch device the open session runs on ("cuda:0", "cpu"); None before it opens
        self.activeDevice = None
        self.jobs = JobQueue()
        self._bridge = None
        self._stale = False  # True: reopen the session (settings changed) before the next job
        self._opening = False  # True while a job opening the session is queued or running
        self._generation = 0
        self._records = []
        self._order = 0
        self._written = {}  # segment ID -> (k, j, i) bool mask the module last wrote
        self._handEdited = {}  # (segment ID, axis) -> slices edited by hand that a propagation adopted
        self._propagated = {}  # (segment ID, axis) -> slices the last propagation wrote (not annotated)
        self._resumeChecked = None  # ID of the segmentation whose stored session was looked at
        self._digests = {}  # (segment ID, axis) -> slice digests of _written (scene_state.py)
        self._propagationRecords = {}  # segment ID -> the session's propagation record (scene_state.py)
        self._recordsVolumeDigest = None  # digest of the voxels those records were computed on
        self._sessionVolumeDigest = None  # digest of the voxels the last session opened on
        self._initFinetune()

    # ---- state (in the parameter node) ---------------------------------------------------------
    @property
    def parameters(self):
        """The module's parameter node, wrapped (created in the scene on first use)."""
        return ModuleParameters(self.getParameterNode())

    @property
    def volumeNode(self):
        return self.parameters.sourceVolume

    @property
    def segmentationNode(self):
        return self.parameters.segmentation

    @property
    def segmentId(self):
        return self.parameters.segmentId

    @property
    def model(self):
        return self.parameters.clickModel

    @property
    def device(self):
        return self.parameters.device

    @property
    def propagation(self):
        return self.parameters.propagationMethod

    @property
    def clickPrecision(self):
        return self.parameters.clickPrecision

    # ---- dependencies -----------------------------------------------------------------------
    @staticmethod
    def missingDependencies():
        """Names of the Python packages that are missing or outside the supported versions."""
        from . import dependencies

        return [req.name for req, _version in dependencies.missing()]

    def installDependencies(self, askConfirmation=True):
        """Install torch (through the PyTorch extension) and the packages of
        Resources/requirements.txt (Slicer's pip), in progress dialogs (see dependencies.py).

        Asks first when ``askConfirmation``. Returns True when everything is installed.
        """
        from . import dependencies

        return dependencies.install(askConfirmation)

    # ---- models -----------------------------------------------------------------------------
    @staticmethod
    def clickModelNames():
        """Click models of the bundled registry, read as JSON (no package import)."""
        return models.clickModelNames()

    def setModelSettings(self, model=None, device=None, propagation=None, precision=None):
        """Choose the click model (registry name or checkpoint path), device, propagation and
        click precision ("float32", or "int8": the fast CPU mode, used only when the clicks run
        on the CPU; on a GPU the model runs in float32).

        A changed model or device, or precision while the clicks run on the CPU, reopens the
        session on its next use, the clicks replayed (with a volume chosen, the new click model
        is loaded and warmed up in the background at once). The propagation method needs no
        new session (a propagation names its method; STCN weights downloaded since a session
        opened are taken from the cache at the next propagation), nor does the precision on a
        GPU, where the model runs in float32 either way: replaying every click would only cost
        time.
        """
        if device and device not in DEVICES:
            raise invalidInput(f"Unknown device {device!r}: choose one of {', '.join(DEVICES)}.")
        if propagation and propagation not in PROPAGATION_METHODS:
            raise invalidInput(f"Unknown propagation method {propagation!r}: choose one of {', '.join(PROPAGATION_METHODS)}.")
        if precision and precision not in CLICK_PRECISIONS:
            raise invalidInput(f"Unknown click precision {precision!r}: choose one of {', '.join(CLICK_PRECISIONS)}.")
        parameters = self.parameters
        changed = set()
        for name, value in (("clickModel", model), ("device", device), ("propagationMethod", propagation),
                            ("clickPrecision", precision)):
            if value and getattr(parameters, name) != value:
                setattr(parameters, name, value)
                changed.add(name)
        clicksOnGpu = self._bridge is not None and not self._opening \
            and str(self.activeDevice or "").startswith("cuda")
        if (changed & {"clickModel", "device"} or ("clickPrecision" in changed and not clicksOnGpu)) \
                and (self._bridge is not None or self._opening):
            self._stale = True  # reopened with the new settings, clicks replayed, on next use

    def _isPath(self, name):
        return models.isCheckpointPath(name)

    def modelsToDownload(self):
        """Registry names needed by the current settings that are not in the cache yet."""
        if self.missingDependencies():
            return []
        return models.modelsToDownload(self.model, self.propagation)

    def modelNeedsDownload(self):
        try:
            return bool(self.modelsToDownload())
        except Exception:  # a broken registry is reported by modelStatusText
            return False

    def modelStatusText(self):
        if self.missingDependencies():
            return _("Install the dependencies to use a model.")
        try:
            missing = [] if models.isCheckpointPath(self.model) else self.modelsToDownload()
        except Exception as err:
            return str(err)
        return models.statusText(self.model, missing)

    def downloadModels(self, names, progress=None):
        """Download registry entries into the cache (with progress and cancel). Worker-safe."""
        return models.downloadModels(names, progress)

    # ---- inputs -----------------------------------------------------------------------------
    def getSegmentEditorNode(self):
        """The module's own Segment Editor parameter node (masking and overwrite settings); the
        module's writes follow it from now on (before: edit everywhere, overwrite nothing)."""
        self.segmentEditorNode = _moduleSegmentEditorNode()
        return self.segmentEditorNode

    def setVolume(self, volumeNode):
        """Use ``volumeNode`` (a scalar volume) as the source; forgets the clicks of the previous one."""
        if volumeNode is self.volumeNode:
            return
        self.parameters.sourceVolume = volumeNode
        self._closeSession()
        self._records = []
        self._written = {}
        self._handEdited = {}
        self._propagated = {}
        self._resumeChecked = None
        self._digests = {}
        self._propagationRecords = {}
        for node in self.getClickNodes(create=False):
            if node is not None:
                node.RemoveAllControlPoints()

    def setSegmentation(self, volumeNode=None, segmentationNode=None, segmentId=None):
        """Use (and create when None) a segmentation and segment; returns (node, segment ID).

        Another segmentation than the current one gets its own session: the current one stays
        stored on its node (its points stay in the point lists), the other's stored session, if
        any, is taken up at its first use, and the click model's session reopens with its clicks
        (two segmentations may use the same segment IDs)."""
        if volumeNode is not None:
            self.setVolume(volumeNode)
        if self.volumeNode is None:
            raise invalidInput("Select the source volume first.")
        if segmentationNode is not None and not (hasattr(segmentationNode, "IsA")
                                                 and segmentationNode.IsA("vtkMRMLSegmentationNode")):
            raise invalidInput(
                f"{getattr(segmentationNode, 'GetName', lambda: repr(segmentationNode))()!r} is not a "
                "segmentation: choose a segmentation node (or None to make one).")
        current = self.parameters.segmentation
        if current is not None and segmentationNode is not current:
            if self.isBusy():
                # its results belong to the current segmentation: they would be dropped, with
                # the stored session still counting them
                raise invalidInput(
                    f"iSegFormer is still working on the segmentation {current.GetName()!r} (a point or a "
                    "propagation): wait for it to finish, or cancel it, then choose another segmentation.")
            self._storeSessionState()
            self._forgetSegmentationSession()
        if segmentationNode is None:
            segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "iSegFormer segmentation")
            segmentationNode.CreateDefaultDisplayNodes()
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(self.volumeNode)
            # In the volume's frame: writes refuse a segmentation under another transform, so a
            # new one outside it made the first click on a transformed volume fail.
            segmentationNode.SetAndObserveTransformNodeID(self.volumeNode.GetTransformNodeID())
        segmentation = segmentationNode.GetSegmentation()
        if not segmentId or segmentation.GetSegment(segmentId) is None:
            segmentId = segmentation.AddEmptySegment("", "Segment_%d" % (segmentation.GetNumberOfSegments() + 1))
        parameters = self.parameters
        parameters.segmentation = segmentationNode
        parameters.segmentId = segmentId
        return segmentationNode, segmentId

    @staticmethod
    def getClickNodes(create=True):
        """(positive, negative) point lists, created on first use."""
        return clicks.getClickNodes(create)

    # ---- geometry (GUI thread: reads MRML) --------------------------------------------------
    def volumeIJKToWorld(self):
        """The source volume's 4x4 IJK-to-world matrix, its parent transforms applied."""
        return geometry.volumeIJKToWorld(self.volumeNode)

    def locateClick(self, rasPoint, sliceNode=None, axis=None):
        """Where a world (RAS) point falls: a SlicePoint (axis, slice index, row, col).

        The axis comes from ``sliceNode``'s normal (sign-aware) unless given; an oblique view
        raises ObliqueViewError and nothing else happens.
        """
        return geometry.locateClick(self.volumeNode, rasPoint, sliceNode, axis, self.viewAlignmentToleranceDegrees)

    # ---- the worker -------------------------------------------------------------------------
    def submit(self, function, label="", apply=None, onFailure=None):
        """Run ``function(progress)`` on the worker; ``apply(result)`` runs later on this thread,
        ``onFailure()`` instead when the job fails or is cancelled."""
        return self.jobs.submit(function, label, apply, onFailure)

    def pollEvents(self):
        """Deliver finished jobs: apply their results (MRML writes happen here) and return events."""
        return self.jobs.poll()

    def isBusy(self):
        return self.jobs.busy

    def cancelAll(self):
        self.jobs.cancel()

    def waitForJobs(self, timeout=None):
        """Block until the worker is idle and apply the results (scripts and tests)."""
        return self.jobs.wait(timeout)

    def shutdown(self):
        self.jobs.shutdown()
        self._stopFinetune()

    def reset(self):
        """Forget the session and the clicks (scene closed); the parameter node goes with the scene."""
        self._history = None  # its nodes went with the scene
        self._forgetSegmentationSession()

    def _forgetSegmentationSession(self):
        """Drop the in-memory session (the click model's too, and jobs not applied yet); what
        is stored on the segmentation node and the points in the lists stay."""
        self._closeSession()
        self._records = []
        self._written = {}
        self._handEdited = {}
        self._propagated = {}
        self._resumeChecked = None  # the segmentation used next is looked at again
        self._digests = {}
        self._propagationRecords = {}

    # ---- the session (worker thread) --------------------------------------------------------
    def _closeSession(self):
        """Drop the session (new volume, scene closed): pending work is cancelled."""
        self._generation += 1
        self._bridge = None
        self._stale = False
        self._opening = False
        self.jobs.cancel()

    def _openSessionJob(self):
        """A worker job that opens a session (model loaded and warmed up) and replays the clicks.

        Replaying the recorded clicks lets a new session (other model or device, or STCN weights
        downloaded since) continue exactly where the previous one was.
        """
        from isegformer.slicer_support.session_bridge import ClickSpec

        volume = slicer.util.arrayFromVolume(self.volumeNode).copy()
        ijkToWorld = self.volumeIJKToWorld()
        model, device, propagation, precision = self.model, self.device, self.propagation, self.clickPrecision
        generation = self._generation
        slices = {}
        for record in sorted(self._records, key=lambda r: r.order):
            slices.setdefault(record.sliceKey, []).append(ClickSpec(record.point.row, record.point.col, record.positive))
        from .scene_state import volumeDigest

        # the segments' voxels, read here on the GUI thread, with the records made on these voxels
        restores = self._propagationRestores(volumeDigest(volume))

        def openSession(progress):
            from isegformer.errors import WeightsError
            from isegformer.slicer_support.session_bridge import SessionBridge
            from isegformer.weights.resolve import resolve_model

            progress(0, 0, "Loading the model...")
            try:
                checkpoint = resolve_model(model, download=False, kind="click_model")
            except WeightsError as err:
                raise WeightsError(f"{err} In Slicer: press Download in the module's Setup section.") from err
            # Looked up whatever the method now: it may change without a new session (the
            # weights are loaded when used). Clicks work without STCN; Propagate says what is missing.
            stcnWeights, missing = _cachedStcnWeights()
            if missing is not None and propagation == "stcn":
                logging.warning("iSegFormer: STCN weights not available yet: %s", missing)
            bridge = SessionBridge.open(volume, ijkToWorld, click_model=str(checkpoint), device=device,
                                        stcn_weights=stcnWeights, click_precision=precision)
            bridge.warm_up()
            for number, ((segmentId, axis, index), clickSpecs) in enumerate(slices.items(), start=1):
                progress(number, len(slices), "Restoring the clicks...")
                bridge.replay(segmentId, axis, index, clickSpecs)
            self._restorePropagations(bridge, restores)  # a propagation recomputes only what changed since
            if generation == self._generation:  # else the volume changed meanwhile
                self._bridge = bridge
            predictor = getattr(bridge.session, "predictor", None)
            return str(getattr(predictor, "device", device))

        return openSession

    def _sessionOpened(self, deviceName):
        self._opening = False
        self.activeDevice = deviceName
        if deviceName == "cpu":
            logging.warning("iSegFormer runs on the CPU: each click takes seconds. A CUDA GPU is much faster.")

    def _submitOpen(self):
        self._stale = False
        self._opening = True
        generation = self._generation

        def failed():
            if generation == self._generation:
                self._opening = False

        return self.submit(self._openSessionJob(), label="open", apply=self._sessionOpened, onFailure=failed)

    def warmUpInBackground(self):
        """Open the session on the worker thread: the click model loaded and run once, so that
        the first click costs one click, not an import, a load and a warm-up.

        Returns the job ID, or None when there is nothing to do: no volume, dependencies
        missing, the click model not downloaded yet, or a session already open (or opening)
        with the current settings.
        """
        if self.volumeNode is None:
            return None
        if not self._stale and (self._bridge is not None or self._opening):
            return None
        if self.missingDependencies():
            return None
        from isegformer.errors import ISegFormerError

        try:
            if models.isCheckpointPath(self.model):
                if not os.path.isfile(os.path.expanduser(self.model)):
                    return None
            elif models.modelsToDownload(self.model, propagation=None):
                return None
        except ISegFormerError:  # an unknown model or a broken registry: the status line says why
            return None
        return self._submitOpen()

    def _submitWithSession(self, function, label, apply, onFailure=None):
        """Queue ``function(bridge, progress)``, after opening the session if none is open.

        ``apply`` runs only while the session it was queued for is still the current one: a
        cancel cannot stop a job already running, and after the volume changed (or the scene
        closed) its result belongs to no point and no volume any more."""
        if (self._bridge is None and not self._opening) or self._stale:
            self._submitOpen()
        generation = self._generation

        def applyIfCurrent(result):
            if generation != self._generation:
                logging.info("iSegFormer: a %s result arrived after the volume changed; it was dropped.", label)
                return None
            return apply(result)

        def run(progress):
            bridge = self._bridge
            if bridge is None:
                raise RuntimeError(
                    "No iSegFormer session: the model could not be loaded (see the previous error), "
                    "or the volume changed meanwhile. Place the point again."
                )
            return function(bridge, progress)

        return self.submit(run, label=label, apply=applyIfCurrent, onFailure=onFailure)

    # ---- clicks -----------------------------------------------------------------------------
    def submitClick(self, pointId, rasPoint, positive, segmentId=None, sliceNode=None, axis=None):
        """Queue a click at a world point; its slice is written when the result arrives."""
        from isegformer.slicer_support.session_bridge import SliceUpdate  # noqa: F401 (checks the package)

        self._ensureResumed()
        segmentId = segmentId or self.segmentId
        self.segmentWriter().checkWritable(segmentId)  # before the model runs for nothing
        point = self.locateClick(rasPoint, sliceNode, axis)
        self._order += 1
        record = clicks.ClickRecord(pointId, bool(positive), segmentId, point, self._order)
        action = self._actions.newAction()  # one undo state for this click
        jobId = self._submitWithSession(  # first: a session opened now replays only earlier clicks
            lambda bridge, progress: bridge.click(segmentId, point, bool(positive)),
            label="click", apply=lambda update: self.applySliceUpdate(update, action),
            onFailure=lambda: self._forgetRecord(record),
        )
        self._records.append(record)
        return jobId

    def _forgetRecord(self, record):
        """A click that did not reach the session leaves no point behind."""
        if record in self._records:
            self._records.remove(record)
        clicks.removePointById(record.pointId, record.positive)
        self._storeSessionState()

    def submitPointsChanged(self, sliceNode=None):
        """After points moved or were deleted: re-run the clicks of every slice that changed.

        A point moved where it cannot be used (off the volume) goes back to where it was used,
        and InvalidInputError says so after every other change (deletions, other moves) has been
        queued; the error's ``jobIds`` are those changes' jobs."""
        self._ensureResumed()
        current = clicks.currentPositions()
        affected = set()
        kept = []
        refused = []
        for record in self._records:
            key = (record.positive, record.pointId)
            if key not in current:
                affected.add(record.sliceKey)  # deleted
                continue
            try:
                moved = self.locateClick(current[key], axis=record.point.axis)
            except ValueError as err:  # outside the volume (InvalidInputError is a ValueError)
                refused.append((record, err))
                kept.append(record)
                continue
            if (moved.index, round(moved.row, 3), round(moved.col, 3)) != (
                    record.point.index, round(record.point.row, 3), round(record.point.col, 3)):
                affected.add(record.sliceKey)  # the slice it left
                record.point = moved
                affected.add(record.sliceKey)  # the slice it is on now
            kept.append(record)
        self._records = kept
        self._storeSessionState()
        action = self._actions.newAction()  # the slices a move or a deletion recomputes: one undo state
        jobs = [self._submitReplay(*key, action=action) for key in sorted(affected)]
        if refused:
            for record, _err in refused:
                clicks.movePointById(record.pointId, record.positive, self._worldPosition(record.point))
            error = invalidInput(
                f"{refused[0][1]} The point was put back where it was used"
                + (f" (and {len(refused) - 1} more like it)" if len(refused) > 1 else "") + ".")
            error.jobIds = jobs  # the other points' updates run all the same: watch them
            raise error
        return jobs

    def _worldPosition(self, point):
        """The world position of a SlicePoint (its slice's centre plane)."""
        from isegformer.slicer_support.transforms import slice_point_ijk

        return (self.volumeIJKToWorld() @ np.array([*slice_point_ijk(point), 1.0]))[:3]

    def _clicksOf(self, segmentId, axis, index):
        from isegformer.slicer_support.session_bridge import ClickSpec

        records = sorted((r for r in self._records if r.sliceKey == (segmentId, axis, index)), key=lambda r: r.order)
        return [ClickSpec(r.point.row, r.point.col, r.positive) for r in records]

    def _submitReplay(self, segmentId, axis, index, action=None):
        clickSpecs = self._clicksOf(segmentId, axis, index)
        action = self._actions.newAction() if action is None else action
        return self._submitWithSession(
            lambda bridge, progress: bridge.replay(segmentId, axis, index, clickSpecs),
            label="replay", apply=lambda update: self.applySliceUpdate(update, action),
        )

    def submitUndoLastClick(self):
        """Take back the most recent point (and its effect on the slice). None if there is none."""
        self._ensureResumed()
        if not self._records:
            return None
        record = max(self._records, key=lambda r: r.order)
        self._records.remove(record)
        clicks.removePointById(record.pointId, record.positive)
        self._storeSessionState()
        segmentId, axis, index = record.sliceKey
        remaining = self._clicksOf(segmentId, axis, index)
        return self._submitWithSession(
            lambda bridge, progress: bridge.undo_click(segmentId, axis, index, remaining),
            label="undo", apply=self.applySliceUpdate,
        )

    def hasClicks(self):
        self._ensureResumed()  # a loaded scene's session counts
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
        """Queue a propagation of a segment along the axis of its latest click; a segment drawn
        by hand only (no point) along its last propagation's axis, else the axis its drawing
        was made along (``_drawnAxis``), its drawn slices as annotations."""
        self._ensureResumed()
        segmentId = segmentId or self.segmentId
        self.segmentWriter().checkWritable(segmentId)  # before a whole propagation runs for nothing
        records = [r for r in self._records if r.segmentId == segmentId]
        current = self.segmentArray(segmentId)
        if records:
            axis = max(records, key=lambda r: r.order).point.axis
        else:  # drawn by hand only: along the last propagation's axis, else the drawing's
            axis = self._propagationRecords.get(segmentId, (None,))[0]
            if axis is None:
                axis = next((a for (sid, a) in self._propagated if sid == segmentId), None)
            if axis is None:
                axis = _drawnAxis(current)
            if axis is None:
                name = self.segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
                raise invalidInput(
                    f"The segment {name!r} has no point and nothing drawn: place at least one point "
                    "(or draw on a slice with the Segment Editor), then propagate.")
        written = self._written.get(segmentId)
        if written is not None:  # the session adopts these; fine-tuning uses them too
            self._handEdited.setdefault((segmentId, axis), set()).update(editedSlices(current, written, axis))
        method = self.propagation

        def propagate(bridge, progress):
            if method == "stcn" and not bridge.has_stcn_weights:
                if _cachedStcnWeights()[0] is None:
                    raise RuntimeError(
                        "The STCN propagation weights are not downloaded: press Download in the Setup "
                        "section (then place a point or propagate again), or choose the 'interpolation' method."
                    )
                # Downloaded since the session opened (or while it opened): a session given no
                # STCN weights takes the registry's from the cache, so no new session (and no
                # replay of every click) is needed.
                bridge.has_stcn_weights = True
            bridge.adopt_edits(segmentId, axis, current, written)
            return bridge.propagate(segmentId, axis=axis, method=method, progress=progress)

        action = self._actions.newAction()  # a whole propagation: one undo state
        return self._submitWithSession(propagate, label="propagate",
                                       apply=lambda update: self.applyVolumeUpdate(update, action))

    # ---- writing into the segmentation (GUI thread) ------------------------------------------
    def editRules(self):
        """The Segment Editor's masking and overwrite settings as EditRules."""
        from .segment_writer import editRulesFromNodes

        return editRulesFromNodes(self.segmentationNode, self.segmentEditorNode)

    def segmentWriter(self):
        """Reads and writes the segmentation's segments on the source volume's grid, as the
        Segment Editor would (see segment_writer.py)."""
        from .segment_writer import SegmentWriter

        return SegmentWriter(self.segmentationNode, self.volumeNode, self.segmentEditorNode)

    # ---- undo (Slicer's segmentation history) ------------------------------------------------
    @property
    def history(self):
        """Slicer's segmentation history the module's writes save into: the Segment Editor
        widget's (the widget sets a segment_history.WidgetHistory), else the Logic's own."""
        if self._history is None:
            # The editor logic needs an editor node, but making one must not change the rules
            # the writes follow (getSegmentEditorNode would: from "overwrite nothing" to the new
            # node's "overwrite all", between a script's first click and its second).
            self._history = EditorLogicHistory(slicer.mrmlScene, self.segmentEditorNode or _moduleSegmentEditorNode())
        return self._history

    @history.setter
    def history(self, history):
        self._history = history

    def _saveState(self):
        if self.saveStateForUndo is not None:
            self.saveStateForUndo()
            return
        self.history.bind(self.segmentationNode, self.volumeNode)
        self.history.saveState()

    def undo(self):
        """Undo the last edit in the segmentation history (a click, a point moved or deleted, a
        propagation; Segment Editor edits made from the console's history too)."""
        self._restoreFromHistory(self.history.undo)

    def redo(self):
        """Redo what :meth:`undo` took back."""
        self._restoreFromHistory(self.history.redo)

    def _restoreFromHistory(self, restore):
        self.history.bind(self.segmentationNode, self.volumeNode)
        before = self.trackedSegmentVoxels()
        restore()
        self.afterHistoryRestore(before)

    def trackedSegmentVoxels(self):
        """{segment ID: (k, j, i) bool voxels} of the segments whose writes the module follows
        (to hand to :meth:`afterHistoryRestore` when an undo or redo comes from elsewhere)."""
        if self.segmentationNode is None or self.volumeNode is None:
            return {}
        segmentation = self.segmentationNode.GetSegmentation()
        writer = self.segmentWriter()
        return {sid: writer.read(sid) for sid in self._written if segmentation.GetSegment(sid) is not None}

    def afterHistoryRestore(self, before):
        """After an undo or redo: the voxels it changed (against ``before``, from
        :meth:`trackedSegmentVoxels` just before it) count as the module's own, since they came
        from the history, not from the user's hand. Otherwise the next propagation would adopt
        them as hand-drawn annotations (an undone propagation's emptied slices would become
        empty annotations, never filled again). Voxels the restore left alone keep their
        standing: a slice drawn by hand before the undo is still a hand edit."""
        if self.segmentationNode is None or self.volumeNode is None:
            return
        segmentation = self.segmentationNode.GetSegmentation()
        writer = self.segmentWriter()
        for sid in list(self._written):
            if segmentation.GetSegment(sid) is None:
                del self._written[sid]
            elif sid in before:
                after = writer.read(sid)
                restored = before[sid] != after
                self._written[sid][restored] = after[restored]
            self._digests = {key: d for key, d in self._digests.items() if key[0] != sid}
        self._storeSessionState()

    def segmentArray(self, segmentId=None):
        """A segment as a (k, j, i) uint8 array on the source volume's grid (a copy)."""
        segmentId = segmentId or self.segmentId
        segmentationNode = self.segmentationNode
        if segmentationNode is None or not segmentId or segmentationNode.GetSegmentation().GetSegment(segmentId) is None:
            # Slicer's export of a missing segment fails deep inside with an AttributeError
            raise missingSegment(segmentationNode, segmentId)
        # Read straight from the segment's labelmap layer: no temporary node, no whole export.
        return self.segmentWriter().read(segmentId).astype(np.uint8)

    def _checkSameFrame(self):
        if self.volumeNode is None or self.segmentationNode is None:
            raise invalidInput(
                "The source volume or the segmentation was removed from the scene: select them "
                "again (a result computed for the removed one was not written).")
        if self.segmentationNode.GetParentTransformNode() is not self.volumeNode.GetParentTransformNode():
            raise invalidInput(
                "The segmentation and the source volume are under different transforms: put the "
                "segmentation under the volume's transform (Data module) and try again."
            )

    def applySliceUpdate(self, update, action=None):
        """Write one slice of a click result into its segment, following the editor's rules."""
        self.writeSlicesIntoSegment(update.segment, update.axis, update.index, update.index,
                                    np.expand_dims(update.mask, update.axis), action)

    def applyVolumeUpdate(self, update, action=None):
        """Write a propagation result: only the slices that differ are changed."""
        shape = update.mask.shape
        annotated = set(getattr(update, "annotated", ()) or ())
        self.writeSlicesIntoSegment(update.segment, update.axis, 0, shape[update.axis] - 1, update.mask, action)
        self._propagated[(update.segment, update.axis)] = set(range(shape[update.axis])) - annotated  # once written
        self._recordPropagation(update)

    def writeSlicesIntoSegment(self, segmentId, axis, first, last, masks, action=None):
        """THE write path: slices first..last along ``axis`` of a segment (masks stacked along
        ``axis``), following the Segment Editor's masking and overwrite rules (segment_writer.py).
        The first write of an ``action`` saves one undo state (None: this write is an action)."""
        self._checkSameFrame()
        segmentationNode = self.segmentationNode
        if segmentationNode.GetSegmentation().GetSegment(segmentId) is None:
            raise missingSegment(segmentationNode, segmentId)
        writer = self.segmentWriter()
        report = writer.write(segmentId, axis, first, masks, beforeWrite=self._actions.hook(action))
        for sid in set(report.segments) | {segmentId}:  # what the module last wrote, to tell hand edits
            if sid not in self._written:
                if sid == segmentId:
                    self._written[sid] = writer.read(sid)
                    self._digests = {key: d for key, d in self._digests.items() if key[0] != sid}
                continue
            if report.indices:
                lo, hi = report.indices[0], report.indices[-1]
                kji = [slice(None)] * 3
                kji[axis] = slice(lo, hi + 1)
                before = self._written[sid][tuple(kji)].copy()
                after = writer.read(sid, axis, lo, hi)
                self._written[sid][tuple(kji)] = after
                lows = [0, 0, 0]
                lows[axis] = lo
                self._followWrite(sid, before, after, lows)
        self._storeSessionState()
        return report

    # ---- synchronous API for the Python console -----------------------------------------------
    def addClick(self, rasPoint, positive=True, sliceNode=None, axis=None, segmentId=None):
        """Click at a world point, wait for the model, write the slice. Returns the SlicePoint."""
        rasPoint = _worldPoint(rasPoint)
        if self.segmentationNode is None:
            self.setSegmentation()
        positiveNode, negativeNode = self.getClickNodes()
        node = positiveNode if positive else negativeNode
        index = clicks.addControlPoint(node, rasPoint, positive)
        try:
            self.submitClick(node.GetNthControlPointID(index), rasPoint, positive, segmentId, sliceNode, axis)
        except Exception:
            clicks.removeControlPoint(node, index)
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


def _worldPoint(rasPoint):
    """Three finite world coordinates, or the package's error saying what was given."""
    try:
        point = np.asarray(rasPoint, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        point = None
    if point is None or point.shape != (3,) or not np.isfinite(point).all():
        raise invalidInput(f"A point is three finite world (RAS) coordinates, got {rasPoint!r}.")
    return tuple(float(v) for v in point)


def _drawnAxis(mask):
    """The axis a hand-drawn segment was drawn along; None for an empty segment.

    Annotated slices lie apart, with empty slices between them, while across any other axis a
    drawing's extent is one unbroken run (a thin structure has few slices there too, so the
    count alone misleads). So: an axis whose drawn slices have gaps, then the fewest drawn
    slices, then the lowest axis."""
    def standing(axis):
        drawn = np.flatnonzero(mask.any(axis=tuple(o for o in range(3) if o != axis)))
        runs = 1 + int(np.count_nonzero(np.diff(drawn) > 1)) if drawn.size else 0
        return (runs < 2, drawn.size, axis)

    if not mask.any():
        return None
    return min(range(3), key=standing)


def _moduleSegmentEditorNode():
    """The module's singleton Segment Editor node, added to the scene on first use."""
    node = slicer.mrmlScene.GetSingletonNode(MODULE_NAME, "vtkMRMLSegmentEditorNode")
    if node is None:
        node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
        node.UnRegister(None)
        node.SetSingletonTag(MODULE_NAME)
        node = slicer.mrmlScene.AddNode(node)
    return node


def _cachedStcnWeights():
    """(the registry's STCN weights file in the verified cache, None), or (None, the
    WeightsError saying why it is not there); never downloads."""
    from isegformer.errors import WeightsError
    from isegformer.weights.resolve import resolve_model

    try:
        return str(resolve_model(STCN_MODEL, download=False)), None
    except WeightsError as err:
        return None, err
