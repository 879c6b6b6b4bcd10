"""Per-segment state (annotated and propagated slices) and the undo/redo history."""
from .history import Action, History, VolumeDiff  # noqa: F401
from .segment import Segment, SliceAnnotation, SliceClick  # noqa: F401
