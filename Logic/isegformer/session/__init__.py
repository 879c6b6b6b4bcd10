"""The segmentation session: one volume, its segments, every click, correction and propagation."""
from .session import Session  # noqa: F401
