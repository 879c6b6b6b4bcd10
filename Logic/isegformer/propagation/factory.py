"""One way to get a propagator by name, for the CLI, the session and the evaluation."""
from __future__ import annotations

import logging
from typing import Mapping, Optional, Sequence

import numpy as np

from ..errors import InvalidInputError
from .. import arguments
from .base import Propagator, frames_along_axis

log = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("interpolation", "stcn")


def create_propagator(
    name: str,
    volume: np.ndarray,
    axis: int,
    num_objects: int,
    *,
    device: str = "auto",
    weights=None,
    fusion_weights=None,
    pixel_spacing: Optional[Sequence[float]] = None,
) -> Propagator:
    """A propagator ``name`` ("interpolation" or "stcn") over ``volume`` (k, j, i) along ``axis``.

    ``weights`` and ``fusion_weights`` only matter to STCN: a file path, a registry name, a
    state dict or a loaded network. ``weights=None`` takes the registry's official ``stcn``
    (downloaded once into the verified cache); ``fusion_weights=None`` means no FusionNet, and
    STCN blends the two directions by distance.
    ``pixel_spacing`` (row, col) in mm lets the interpolation measure distances in mm.
    """
    method = str(name).strip().lower()
    if method not in METHODS:
        raise InvalidInputError(f"Unknown propagation method {name!r}: use one of {', '.join(METHODS)}.")
    array = np.asarray(volume)
    frames_along_axis(array, axis)  # the volume and the axis, before any weights are read
    num_objects = arguments.integer(num_objects, "num_objects (the number of objects to propagate)", 1)
    if method == "interpolation":
        from .interpolation import InterpolationPropagator

        if weights is not None or fusion_weights is not None:
            log.warning("The interpolation baseline uses no weights; ignoring the weights given.")
        kwargs = {} if pixel_spacing is None else {"pixel_spacing": pixel_spacing}
        return InterpolationPropagator.from_volume(array, axis, num_objects, **kwargs)

    # Imported here: STCN pulls in torch and the networks, which the baseline never needs.
    from . import stcn

    network = weights if isinstance(weights, stcn.STCNNetwork) else stcn.load_stcn(
        _weights_source(weights, "stcn", "propagation"))
    fusion = None
    if isinstance(fusion_weights, stcn.FusionNet):
        fusion = fusion_weights
    elif fusion_weights is not None:
        fusion = stcn.load_fusion(_weights_source(fusion_weights, "mivos_fusion", "fusion"))
    return stcn.STCNPropagator.from_volume(array, axis, num_objects, network, fusion=fusion, device=device)


def _weights_source(weights, registry_name: str, kind: str):
    """A state dict as is; a path or registry name through the verified weights cache.

    None means the registry's official file (downloaded once, then verified on each use).
    """
    if isinstance(weights, Mapping):
        return weights
    from ..weights import resolve_model

    return resolve_model(registry_name if weights is None else weights, kind=kind)
