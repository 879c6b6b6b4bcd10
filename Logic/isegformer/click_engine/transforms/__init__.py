"""Test-time transforms of the click predictor (kept apart from it, as in RITM)."""
from .flip import HorizontalFlip
from .roi import Roi, object_roi
from .zoom_in import ZoomIn, ZoomInState

__all__ = ["HorizontalFlip", "Roi", "ZoomIn", "ZoomInState", "object_roi"]
