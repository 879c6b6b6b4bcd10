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
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .atomic import atomic_replace
from .errors import CheckpointError, InvalidInputError
from .torch_file import InertPlaceholder, RestrictedUnpickler, TorchFileError, read_torch_file

log = logging.getLogger(__name__)

DEFAULT_ADVICE = (
    "Download it again (`isegformer download <model name> --force`, which keeps the cached "
    "file until the new one is verified; or from the model's release URL) and retry."
)

# The placeholders' names stay importable from here (the tests and older callers use them).
_InertPlaceholder = InertPlaceholder
_RestrictedUnpickler = RestrictedUnpickler


def starts_like_web_page(head: bytes) -> bool:
    """Whether a file's first bytes are those of an HTML page (what a failed, unconfirmed or
    refused download often saves instead of the file)."""
    return head.lstrip().lower().startswith((b"<!doctype", b"<html"))


def _describe_start(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(64)
    if starts_like_web_page(head):
        return "an HTML page (a failed or unconfirmed download, e.g. a login or confirmation page)"
    return f"a file starting with bytes {head[:16]!r}"


def is_complete_zip(path: Path) -> bool:
    """Whether ``path`` is a zip archive whose end records are all there (a zip cut short is not)."""
    try:
        return zipfile.is_zipfile(path)
    except zipfile.BadZipFile:  # raised, not answered, for some damaged end records
        return False


def container_problem(path: Path) -> str | None:
    """Why the file at ``path`` cannot be a PyTorch checkpoint, judged from its container alone
    (an HTML page, neither a zip nor a pickle, a zip cut short), or None when it may be one.
    Cheap: it reads the first bytes and the zip's end record, not the tensors."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        magic = f.read(4)
    is_zip = magic.startswith(b"PK")
    is_pickle = magic[:1] == b"\x80"  # pickle protocol 2+ (torch's legacy format starts so)
    if not (is_zip or is_pickle):
        return f"it is not a PyTorch checkpoint: it is {_describe_start(path)} ({size} bytes)"
    if is_zip and not is_complete_zip(path):
        return (f"it is truncated or damaged: its zip archive is incomplete ({size} bytes; an "
                "interrupted download looks like this)")
    return None


def _read_pickled(path: Path, advice: str) -> Any:
    if not path.exists():
        raise CheckpointError(f"Checkpoint {path} does not exist. {advice}")
    if path.is_dir():
        raise CheckpointError(f"Checkpoint path {path} is a folder, not a file.")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"Checkpoint {path} is empty (0 bytes). {advice}")
    problem = container_problem(path)
    if problem is not None:
        raise CheckpointError(f"Checkpoint {path}: {problem}. {advice}")
    try:
        return read_torch_file(path)
    except TorchFileError as err:
        if err.kind == "refused":
            raise CheckpointError(
                f"{path} was refused without running it: its pickle refers to "
                f"'{err.qualified_name}', which no model checkpoint needs (only tensors, plain "
                "containers and the reference's config classes are allowed). The file may be "
                "malicious or not a checkpoint; use the official file."
            ) from None
        if err.kind == "too large":
            raise CheckpointError(
                f"Checkpoint {path} was refused before loading it: {err}. It is damaged or was "
                f"crafted to exhaust memory. {advice}"
            ) from None
        raise CheckpointError(
            f"Checkpoint {path} could not be read ({err}); it is truncated, damaged or not a "
            f"PyTorch checkpoint. {advice}"
        ) from None
    except OSError as err:
        raise CheckpointError(
            f"Checkpoint {path} could not be read: {err.strerror or err}. Check the file's "
            "permissions and the disk."
        ) from None


def read_torch_object(path: str | os.PathLike, *, advice: str | None = None) -> Any:
    """Whatever a ``torch.save`` file holds (e.g. a training state), read by the same bounded,
    code-free reader as checkpoints; every failure is a CheckpointError."""
    return _read_pickled(Path(path).expanduser(), advice or DEFAULT_ADVICE)


def _plain(value: Any) -> Any:
    """The config with placeholders replaced by {'placeholder': 'isegm.x.Y'}: data only."""
    if isinstance(value, _InertPlaceholder):
        return {"placeholder": value.qualified_name}
    if isinstance(value, type) and issubclass(value, _InertPlaceholder):
        return {"placeholder": value.qualified_name}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        items = [_plain(v) for v in value]
        try:
            return type(value)(items)
        except TypeError:  # placeholders became dicts, which a set cannot hold
            return items
    if isinstance(value, (list, tuple)):
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
    check_finite(state_dict, str(path), advice)
    return {"state_dict": state_dict, "config": _plain(config), "layout": layout}


def non_finite_tensors(tensors: Mapping[str, Any]) -> list[str]:
    """``"name (n NaN, m inf)"`` for each floating or complex tensor holding NaN or infinity."""
    found = []
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor) or not (value.is_floating_point()
                                                       or value.is_complex()):
            continue
        # Any NaN or infinity makes the sum non-finite, so a finite sum proves every element
        # finite at a fraction of isfinite's cost; a non-finite sum (which finite values may
        # also give, by overflow) falls through to the exact element-wise check.
        if bool(torch.isfinite(value.sum())):
            continue
        finite = torch.isfinite(value)
        if bool(finite.all()):
            continue
        nan = int(torch.isnan(value).sum())
        found.append(f"{key} ({nan} NaN, {int((~finite).sum()) - nan} inf)")
    return found


def check_finite(tensors: Mapping[str, Any], source: str, advice: str = DEFAULT_ADVICE) -> None:
    """Refuse weights holding NaN or infinity: every prediction of such a network is NaN."""
    bad = non_finite_tensors(tensors)
    if bad:
        raise CheckpointError(
            f"{source} holds weights that are not finite numbers: {describe_keys(bad, 4)}. A "
            "network with such weights predicts nothing (NaN everywhere); the file is damaged or "
            f"its training diverged. {advice}"
        )


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
    payload = {
        "state_dict": collections.OrderedDict(
            (k, v.detach().to("cpu", copy=False).contiguous()) for k, v in state_dict.items()
        ),
        "config": config,
    }
    write_torch_file(path, payload, "the checkpoint")
    log.info("Saved checkpoint %s (%d tensors).", path, len(state_dict))
    return path


def write_torch_file(path: Path, payload: Any, what: str) -> None:
    """``torch.save`` into ``path`` atomically, checked, with the package's error on failure.

    torch reports a full disk as a ``RuntimeError`` ("file write failed"); both it and an
    ``OSError`` become :class:`~isegformer.output.atomic.OutputPathError`. The written zip is
    CRC-checked before it replaces ``path``, so a short write never does; the previous file
    stays as it was.
    """
    from .output.atomic import OutputPathError

    def complete(tmp: Path) -> None:
        try:
            with zipfile.ZipFile(tmp) as archive:
                damaged = archive.testzip()
        except (OSError, zipfile.BadZipFile) as err:
            raise OSError(f"the written file does not read back ({err})") from None
        if damaged is not None:
            raise OSError(f"the written file's record {damaged} does not read back")

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_replace(path, fsync=True, verify=complete) as tmp, open(tmp, "wb") as f:
            torch.save(payload, f)
    except (OSError, RuntimeError) as err:
        if isinstance(err, OutputPathError):
            raise
        if isinstance(err, OSError):
            reason = err.strerror or str(err)
        else:  # torch's own: "PytorchStreamWriter failed writing file data/0: file write failed"
            lines = str(err).strip().splitlines()
            reason = lines[-1] if lines else type(err).__name__
        raise OutputPathError(
            f"Could not write {what} {path}: {reason}. The previous file, if any, is unchanged. "
            "Free some disk space or choose another folder, then retry."
        ) from None


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
