"""Fine-tuning the click model on the user's own segmented slices, in a separate process.

:class:`FinetuneActions` is mixed into iSegFormerSlicerLogic: it reads the Logic's volume,
segmentation and click records, exports the volume and a label map to a temporary folder,
and runs ``isegformer finetune`` as a child process (``isegformer.finetune.process``), so
that the GUI never blocks and a crash of the training leaves Slicer running.
"""
import logging
import os
import re
import shutil
import tempfile
import time

import numpy as np
import vtk

import slicer

from . import _, ensureIsegformerImportable, invalidInput, missingSegment, support
from .models import DEFAULT_MODEL, isCheckpointPath

DEFAULT_FINETUNE_EPOCHS = 5


def editedSlices(current, written, axis):
    """Indices along ``axis`` where a (k, j, i) mask differs from what the module wrote there."""
    other = tuple(a for a in range(3) if a != axis)
    return {int(i) for i in np.flatnonzero(np.any(np.asarray(current, bool) != np.asarray(written, bool), axis=other))}


class FinetuneState:
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


class FinetuneActions:
    """The Logic's fine-tune action (a mixin: uses ``volumeNode``, ``segmentationNode``,
    ``segmentId``, ``model``, ``device``, ``_records``, ``_written``, ``_handEdited`` and
    ``segmentArray`` of iSegFormerSlicerLogic)."""

    def _initFinetune(self):
        self._finetune = None  # the running isegformer.finetune.process.FinetuneProcess
        self._finetuneFolder = None  # its exported image and label map, removed when it ends
        self._finetunePlan = None  # (axis, slice indices, "annotated" or "labelled") of that run

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
            raise invalidInput("Select the source volume and the segment to learn from first.")
        if self.segmentationNode.GetSegmentation().GetSegment(segmentId) is None:
            raise missingSegment(self.segmentationNode, segmentId)
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
                annotated |= editedSlices(current, written, axis)
            indices = sorted(i for i in annotated if support().transforms.take_slice(current, axis, i).any())
            if indices:
                return axis, indices, "annotated"
        axis = 0 if axis is None else axis
        other = tuple(a for a in range(3) if a != axis)
        indices = [int(i) for i in np.flatnonzero(current.any(axis=other))]
        if not indices:
            raise invalidInput(
                "The segment is empty along {axis}: segment the structure on a few slices first "
                "(points, or the Segment Editor), then fine-tune.".format(axis=axisName[axis])
            )
        return axis, indices, "labelled"

    def _finetuneInit(self):
        """Where training starts: the click model in use (``init`` of ``isegformer finetune``)."""
        if isCheckpointPath(self.model):
            return self.model
        if self.model == DEFAULT_MODEL:
            return "official"  # the child downloads it if needed
        from isegformer.errors import WeightsError
        from isegformer.weights.resolve import resolve_model

        try:
            return str(resolve_model(self.model, download=False, kind="click_model"))
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
        ensureIsegformerImportable()
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
            return FinetuneState(True, job.done, job.total, text)
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
            return FinetuneState(False, job.total, job.total, text, "done", outcome.checkpoint)
        if outcome.status == "cancelled":
            text = _("Fine-tuning cancelled; the click model is unchanged.")
            if outcome.checkpoint is not None:
                text += " " + _("The last completed epoch is kept in {folder}.").format(folder=outcome.out_dir)
            return FinetuneState(False, job.done, job.total, text, "cancelled")
        text = _("Fine-tuning failed: {error}").format(error=outcome.error)
        return FinetuneState(False, job.done, job.total, text, "error", details=outcome.error or "")

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

    def _stopFinetune(self):
        """No orphan training process once the module is gone."""
        if self._finetune is not None:
            self._finetune.cancel(timeout=None)
            self._finetune = None
            self._removeFinetuneFolder()
