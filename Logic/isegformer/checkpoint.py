"""The one reader (and writer) of model checkpoints in this package.

Official iSegFormer checkpoints are pickles of ``{'state_dict': ..., 'config': ...}`` whose
config refers to classes of the reference package ``isegm`` (not installed here), saved from a
GPU (storages tagged ``'cuda:0'``). Unpickling runs whatever the pickle names, so we never use
the plain unpickler: :class:`_RestrictedUnpickler` builds only tensors, storages, plain
containers and inert placeholders for ``isegm`` names, and refuses every other global before
anything is called.

The same reader serves the STCN weights (plain state dicts) and the fine-tuned checkpoints this
project writes with :func:`save_checkpoint`, which uses the official layout. The loaders of both
networks check a state dict against the network with :func:`compare_state_dict`.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import os
import pickle
import types
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .atomic import atomic_replace
from .errors import CheckpointError, InvalidInputError

log = logging.getLogger(__name__)

DEFAULT_ADVICE = (
    "Download it again (`isegformer download <model name>`, or from the model's release URL) "
    "and retry."
)

# Globals a checkpoint legitimately needs. Each of them only builds data; none runs code given
# by the file. Storage classes (torch.FloatStorage, ...) are resolved by torch.load itself.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "complex"): complex,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "float32"): torch.float32,
    ("torch", "float16"): torch.float16,
    ("torch", "bfloat16"): torch.bfloat16,
    ("torch", "float64"): torch.float64,
    ("torch", "int64"): torch.int64,
}
_PLACEHOLDER_MODULES = ("isegm",)  # the reference package: its config objects become inert


class _InertPlaceholder:
    """Stands in for an object of the reference package; holds its pickled state, runs nothing."""

    qualified_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "_InertPlaceholder":
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __call__(self, *args: Any, **kwargs: Any) -> "_InertPlaceholder":
        return type(self)()

    def __repr__(self) -> str:
        return f"<placeholder for {self.qualified_name}>"


_placeholder_types: dict[str, type] = {}


def _placeholder_for(qualified_name: str) -> type:
    if qualified_name not in _placeholder_types:
        _placeholder_types[qualified_name] = type(
            qualified_name.rsplit(".", 1)[-1], (_InertPlaceholder,), {"qualified_name": qualified_name}
        )
    return _placeholder_types[qualified_name]


class _RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, qualified_name: str) -> None:
        super().__init__(qualified_name)
        self.qualified_name = qualified_name


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":  # Python 2 era pickles (protocol 2) name builtins so
            module = "builtins"
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is not None:
            return allowed
        if module.split(".", 1)[0] in _PLACEHOLDER_MODULES:
            return _placeholder_for(f"{module}.{name}")
        raise _RefusedGlobal(f"{module}.{name}")


# torch.load(pickle_module=...) wants a module-like object with Unpickler and load.
_restricted_pickle = types.SimpleNamespace(
    Unpickler=_RestrictedUnpickler,
    load=lambda file, **kwargs: _RestrictedUnpickler(file, **kwargs).load(),
    __name__="isegformer_restricted_pickle",
)


def _describe_start(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(64)
    if head.lstrip().lower().startswith((b"<!doctype", b"<html")):
        return "an HTML page (a failed or unconfirmed download, e.g. a login or confirmation page)"
    return f"a file starting with bytes {head[:16]!r}"


def _read_pickled(path: Path, advice: str) -> Any:
    if not path.exists():
        raise CheckpointError(f"Checkpoint {path} does not exist. {advice}")
    if path.is_dir():
        raise CheckpointError(f"Checkpoint path {path} is a folder, not a file.")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"Checkpoint {path} is empty (0 bytes). {advice}")
    with open(path, "rb") as f:
        magic = f.read(4)
    is_zip = magic.startswith(b"PK")
    is_pickle = magic[:1] == b"\x80"  # pickle protocol 2+ (torch's legacy format starts so)
    if not (is_zip or is_pickle):
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint: it is {_describe_start(path)} ({size} bytes). "
            f"{advice}"
        )
    if is_zip and not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"Checkpoint {path} is truncated or damaged: its zip archive is incomplete "
            f"({size} bytes; an interrupted download looks like this). {advice}"
        )
    try:
        return torch.load(
            path, map_location="cpu", pickle_module=_restricted_pickle, weights_only=False
        )
    except _RefusedGlobal as err:
        raise CheckpointError(
            f"{path} was refused without running it: its pickle refers to "
            f"'{err.qualified_name}', which no model checkpoint needs (only tensors, plain "
            "containers and the reference's config classes are allowed). The file may be "
            "malicious or not a checkpoint; use the official file."
        ) from None
    except (EOFError, pickle.UnpicklingError, RuntimeError, ValueError, KeyError, OSError,
            zipfile.BadZipFile, AttributeError, TypeError, IndexError) as err:
        raise CheckpointError(
            f"Checkpoint {path} could not be read ({type(err).__name__}: {err}); it is "
            f"truncated, damaged or not a PyTorch checkpoint. {advice}"
        ) from err


def _plain(value: Any) -> Any:
    """The config with placeholders replaced by {'placeholder': 'isegm.x.Y'}: data only."""
    if isinstance(value, _InertPlaceholder):
        return {"placeholder": value.qualified_name}
    if isinstance(value, type) and issubclass(value, _InertPlaceholder):
        return {"placeholder": value.qualified_name}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return type(value)(_plain(v) for v in value)
    return value


def _is_state_dict(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def _strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        log.info("Stripping the '%s' prefix from every key (a DataParallel checkpoint).", prefix)
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def load_checkpoint(path: str | os.PathLike, *, advice: str | None = None) -> dict[str, Any]:
    """Read a checkpoint safely onto the CPU.

    Accepts the official layout ``{'state_dict', 'config'}``, a ``{'model': state_dict}``
    variant, and a plain ``{key: tensor}`` state dict. Returns ``{"state_dict": {key: tensor},
    "config": plain data or None, "layout": "official" | "model" | "state_dict"}``.
    ``advice`` replaces the default "what to do" sentence of the error messages.
    """
    path = Path(path).expanduser()
    advice = advice or DEFAULT_ADVICE
    obj = _read_pickled(path, advice)

    config = None
    if isinstance(obj, Mapping) and "state_dict" in obj and _is_state_dict(obj["state_dict"]):
        layout, state_dict, config = "official", obj["state_dict"], obj.get("config")
    elif isinstance(obj, Mapping) and "model" in obj and _is_state_dict(obj["model"]):
        layout, state_dict, config = "model", obj["model"], obj.get("config")
    elif _is_state_dict(obj):
        layout, state_dict = "state_dict", obj
    else:
        found = (
            f"a dict with keys {sorted(map(str, obj))[:10]}" if isinstance(obj, Mapping)
            else f"a {type(obj).__name__}"
        )
        raise CheckpointError(
            f"{path} holds no model weights: expected a state dict of tensors, or a dict with a "
            f"'state_dict' or 'model' entry, but found {found}. Check that this is the right "
            "file."
        )
    state_dict = _strip_prefix(dict(state_dict), "module.")
    return {"state_dict": state_dict, "config": _plain(config), "layout": layout}


def _check_plain(value: Any, where: str = "config") -> None:
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_plain(k, f"{where} key")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(value, (list, tuple, set, frozenset)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    raise InvalidInputError(
        f"{where} holds a {type(value).__name__}; a checkpoint config may hold only None, "
        "bool, int, float, str, lists, tuples, sets and dicts (so that it loads without code)."
    )


def save_checkpoint(
    path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], config: Any = None
) -> Path:
    """Write ``{'state_dict', 'config'}`` (the official layout) atomically; returns the path.

    Tensors are saved from the CPU, so the file loads anywhere. The file appears complete or not
    at all: it is written to a temporary file in the same folder and then renamed over ``path``.
    """
    if not _is_state_dict(state_dict):
        raise InvalidInputError(
            "save_checkpoint needs a non-empty {name: tensor} state dict (model.state_dict())."
        )
    _check_plain(config)
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "state_dict": collections.OrderedDict(
            (k, v.detach().to("cpu", copy=False).contiguous()) for k, v in state_dict.items()
        ),
        "config": config,
    }
    with atomic_replace(path, fsync=True) as tmp, open(tmp, "wb") as f:
        torch.save(payload, f)
    log.info("Saved checkpoint %s (%d tensors).", path, len(state_dict))
    return path


def describe_keys(keys: Sequence[str], limit: int = 8) -> str:
    """The first ``limit`` keys, comma-separated, and how many there are in all when more."""
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


@dataclasses.dataclass(frozen=True)
class KeyMismatch:
    """How a state dict differs from the one a network expects, key by key.

    ``missing`` follows the expected order, ``unexpected`` the given order, and ``misshaped``
    holds ``(key, given shape, expected shape)`` in the expected order.
    """

    missing: list[str]
    unexpected: list[str]
    misshaped: list[tuple[str, tuple[int, ...], tuple[int, ...]]]

    @property
    def fits(self) -> bool:
        return not (self.missing or self.unexpected or self.misshaped)

    def describe(self) -> str:
        """``missing: ...; unexpected: ...; mis-shaped: key (given) (expected (shape))``."""
        problems = []
        if self.missing:
            problems.append(f"missing: {describe_keys(self.missing)}")
        if self.unexpected:
            problems.append(f"unexpected: {describe_keys(self.unexpected)}")
        if self.misshaped:
            shapes = [f"{key} {given} (expected {expected})" for key, given, expected in self.misshaped]
            problems.append(f"mis-shaped: {describe_keys(shapes)}")
        return "; ".join(problems)


def compare_state_dict(
    given: Mapping[str, Any],
    expected_shapes: Mapping[str, Sequence[int]],
    *,
    optional_suffixes: tuple[str, ...] = (),
) -> KeyMismatch:
    """Compare the keys and tensor shapes of ``given`` with ``expected_shapes``.

    Expected keys ending with one of ``optional_suffixes`` may be absent without counting as
    missing. Values of ``given`` that are not tensors are not compared by shape: callers that
    accept only tensors check that themselves.
    """
    missing = [k for k in expected_shapes
               if k not in given and not (optional_suffixes and k.endswith(optional_suffixes))]
    unexpected = [k for k in given if k not in expected_shapes]
    misshaped = []
    for key, shape in expected_shapes.items():
        value = given.get(key)
        if isinstance(value, torch.Tensor) and tuple(value.shape) != tuple(shape):
            misshaped.append((key, tuple(value.shape), tuple(shape)))
    return KeyMismatch(missing, unexpected, misshaped)
