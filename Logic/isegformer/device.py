"""Choosing the torch device: one place, so that "auto" means the same everywhere."""
from __future__ import annotations

import logging

import torch

from .errors import InvalidInputError

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a torch.device into a torch.device.

    ``"auto"`` (or None) picks CUDA when available, else the CPU. ``"mps"`` and ``"xpu"`` are
    taken only where this torch can use them; any other device type is refused, with the
    package's InvalidInputError rather than torch's own traceback.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InvalidInputError(
            f"Unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'."
        ) from err
    if dev.type not in ("cpu", "cuda", "mps", "xpu"):
        raise InvalidInputError(
            f"Device {device!r} is not one this package runs on: use 'auto', 'cpu', 'cuda' or "
            "'cuda:N' (or 'mps' / 'xpu' with a torch built for them)."
        )
    if dev.type in ("mps", "xpu") and not _backend_available(dev.type):
        raise InvalidInputError(
            f"Device {device!r} was asked for, but this torch ({torch.__version__}) has no usable "
            f"{_BACKEND_NAMES[dev.type]} (not built with it, or no such device on this machine). "
            "Use --device cpu or auto, or install a torch build with that backend."
        )
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(
            f"Device {device!r} was asked for, but torch sees no CUDA GPU "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}). "
            "Use --device cpu, or install a CUDA build of torch that matches your driver."
        )
    if dev.type in ("cuda", "xpu") and dev.index is not None:
        count = (torch.cuda if dev.type == "cuda" else torch.xpu).device_count()
        if dev.index >= count:
            kind = "GPU(s)" if dev.type == "cuda" else "XPU(s)"
            raise InvalidInputError(f"Device {device!r} does not exist: torch sees {count} {kind}.")
    return dev


_BACKEND_NAMES = {"mps": "Apple GPU (MPS) support", "xpu": "Intel GPU (XPU) support"}


def _backend_available(kind: str) -> bool:
    """Whether torch can run on ``kind`` here; asking a torch built without it raises, not False."""
    try:
        if kind == "mps":
            return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
        return bool(getattr(torch, "xpu", None) and torch.xpu.is_available())
    except (RuntimeError, AssertionError, AttributeError):
        return False
