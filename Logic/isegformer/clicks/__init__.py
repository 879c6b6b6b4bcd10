"""Clicks on a 2D slice, and the simulated user of the NoC evaluation protocol."""
from .click import Click, ClickList
from .simulator import ClickSimulator, next_click

__all__ = ["Click", "ClickList", "ClickSimulator", "next_click"]
