"""Fine-tuning the click model on a few segmented slices (the paper's training recipe).

Typical use::

    from isegformer.finetune import FinetuneSettings, finetune, slices_from_volumes
    slices = slices_from_volumes(["knee.nii.gz"], ["knee_labels.nii.gz"], axis=0, slices="paper")
    result = finetune(slices, "runs/knee", FinetuneSettings(epochs=5))
    result.checkpoint  # model.pth, in the official checkpoint format

From a UI, run it in a separate process with :class:`isegformer.finetune.process.FinetuneProcess`.
"""
from .data import (  # noqa: F401
    PAPER_SLICES,
    TrainingSlice,
    parse_slice_choice,
    slices_from_png_folders,
    slices_from_volume,
    slices_from_volumes,
)
from .runs import FinetunedModel, finetuned_home, list_finetuned  # noqa: F401
from .trainer import EpochRecord, FinetuneResult, FinetuneSettings, finetune  # noqa: F401
