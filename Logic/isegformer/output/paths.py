"""The one output-path guard: no output may be one of the inputs, nor another output.

A command line such as ``propagate vol.nrrd --labels drawn.nrrd --out vol.nrrd`` would replace
the user's scan with a label map; ``segment --session clicks.mrk.json`` would replace the
clicks. Every command and every Session writer calls :func:`guard_outputs` before it writes.

Two paths are the same file when they name the same inode (``st_dev``, ``st_ino``): that sees
through symbolic links, hard links, ``..`` and letter case on case-insensitive disks. An output
that does not exist yet is compared by its fully resolved path, letter case ignored. An output
inside an input *folder* (a DICOM series, a folder of PNG slices, a folder of cases) is refused
too: the next read of that folder would take it for part of the input. An input in a two-file
format also protects the file(s) holding its voxels (:mod:`isegformer.volume.data_files`: the
``data file`` of a ``.nhdr``, the ``ElementDataFile`` of a ``.mhd``, the ``.img`` of a ``.hdr``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional, Union

from ..volume.data_files import data_files
from .atomic import OutputPathError

PathLike = Union[str, os.PathLike]


class OutputIsInputError(OutputPathError):
    """An output path that names one of the inputs (or another output): writing would destroy it."""


def _resolved(path: PathLike) -> Path:
    try:
        text = os.fspath(path)
    except TypeError:
        raise OutputPathError(f"A path is text or a pathlib.Path, got {path!r}.") from None
    text = os.fsdecode(text)
    if not text or "\x00" in text:
        raise OutputPathError(f"{path!r} is not a usable path (empty, or holding a NUL character).")
    return Path(os.path.realpath(Path(text).expanduser()))


def _stat(path: Path) -> Optional[os.stat_result]:
    try:
        return os.stat(path)
    except (OSError, ValueError):
        return None


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _label(what: Optional[str], path: PathLike) -> str:
    return f"{what} {path}" if what else str(path)


def guard_outputs(
    inputs: Iterable[Optional[PathLike]],
    outputs: Iterable[Optional[PathLike]],
    *,
    input_names: Optional[Iterable[Optional[str]]] = None,
    output_names: Optional[Iterable[Optional[str]]] = None,
) -> None:
    """Raise :class:`OutputIsInputError` when an output is, or lies inside, one of the inputs,
    or when two outputs are the same file. ``None`` entries are skipped (an option not given).

    ``input_names`` / ``output_names`` (optional, parallel to the paths) name each path in the
    message, e.g. ``"--labels"``; otherwise the path alone is shown.
    """
    inputs = list(inputs)
    outputs = list(outputs)
    in_names = list(input_names) if input_names is not None else [None] * len(inputs)
    out_names = list(output_names) if output_names is not None else [None] * len(outputs)
    known_inputs = []  # (what the message calls it, resolved path, stat)
    for path, name in zip(inputs, in_names):
        if path is None:
            continue
        resolved = _resolved(path)
        known_inputs.append((f"the input {_label(name, path)}", resolved, _stat(resolved)))
        # A two-file input (.nhdr + .raw.gz, .mhd + .raw, .hdr + .img) is destroyed as surely
        # through its voxel file as through its header. Relative names are relative to the header
        # as the reader is given it (ITK and teem do not resolve a symbolic link first).
        for data_file in data_files(path):
            data_resolved = _resolved(data_file)
            known_inputs.append((f"the voxel file {data_file} of the input {_label(name, path)}",
                                 data_resolved, _stat(data_resolved)))

    seen_outputs = []
    for path, name in zip(outputs, out_names):
        if path is None:
            continue
        resolved = _resolved(path)
        status = _stat(resolved)
        for what, in_resolved, in_status in known_inputs:
            if _is_or_inside(resolved, status, in_resolved, in_status):
                inside = in_status is not None and os.path.isdir(in_resolved) and not (
                    status is not None and _same(status, in_status))
                where = "inside" if inside else "the same file as"
                if inside:
                    what = what.replace("the input ", "the input folder ", 1)
                raise OutputIsInputError(
                    f"The output {_label(name, path)} is {where} {what}: writing it would destroy "
                    "that input. Choose an output path outside the inputs."
                )
        for other_path, other_name, other_resolved, other_status in seen_outputs:
            if _same_target(resolved, status, other_resolved, other_status):
                raise OutputIsInputError(
                    f"The outputs {_label(other_name, other_path)} and {_label(name, path)} are the same "
                    "file: the second would overwrite the first. Give each output its own path."
                )
        seen_outputs.append((path, name, resolved, status))


def _same_target(a: Path, a_stat, b: Path, b_stat) -> bool:
    if a_stat is not None and b_stat is not None:
        return _same(a_stat, b_stat)
    return os.path.normcase(str(a)).casefold() == os.path.normcase(str(b)).casefold()


def _is_or_inside(output: Path, output_stat, input_path: Path, input_stat) -> bool:
    """True when ``output`` is the input itself or (for a folder input) lies anywhere in it."""
    if input_stat is None:
        # An input that does not exist cannot be destroyed; the read fails with its own error.
        return False
    if output_stat is not None and _same(output_stat, input_stat):
        return True
    if _same_target(output, None, input_path, None):
        return True
    if not os.path.isdir(input_path):
        return False
    for parent in output.parents:
        parent_stat = _stat(parent)
        if parent_stat is not None and _same(parent_stat, input_stat):
            return True
    return False
