"""The newcomer's first run: the paper's knee, simulated clicks on a few slices, STCN, scores.

What :func:`run_demo` does, in order:

1. reads a knee volume and its label map (by default OAI-ZIB case 9092628, the iSegFormer
   repository's propagation example) and takes one object (default: label 2, femoral cartilage);
2. picks the slice axis: by default the sagittal one, the array axis whose direction is closest
   to left-right (for 9092628 that is k, array axis 0: 160 slices of 384 x 384, as the paper and
   the reference's ``load_volume`` slice it);
3. picks ``num_slices`` slices spread over the object's extent (the evaluation module's
   ``extent`` scheme: the centres of equal parts of the extent, moved to the nearest slice
   holding the object if one falls in a gap);
4. on each, a simulated user clicks as in the NoC protocol (next click at the centre of the
   largest error) through the click engine, until the slice's IoU reaches ``target_iou``
   (0.85 by default) or ``max_clicks`` (20) clicks were made;
5. propagates those annotated slices through the volume with STCN (and FusionNet when given);
6. scores the result against the label map (Dice, sensitivity, PPV, IoU over the volume) and
   writes ``demo.seg.nrrd``, ``demo_clicks.mrk.json``, ``demo_montage.png`` and ``demo.json``.

:func:`resolve_demo_files` gets every file first, so that nothing is computed or written when a
download fails; it raises :class:`MissingFilesError`, which lists what is missing, where to get
it and where to put it.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from .errors import InvalidInputError, WeightsError
from .progress import ProgressCallback

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
Messages = Optional[Callable[[str], None]]

#: Registry names of what the demo needs, by role.
DEFAULT_MODELS = {
    "click_model": "isegformer_swin_base_oaizib",
    "stcn": "stcn",
    "fusion": "mivos_fusion",
    "volume": "oaizib_sample_image",
    "label": "oaizib_sample_label",
}
ROLE_TITLES = {
    "click_model": "iSegFormer click model (Swin-B, OAI-ZIB)",
    "stcn": "STCN propagation network",
    "fusion": "MiVOS FusionNet",
    "volume": "OAI-ZIB sample knee image (case 9092628)",
    "label": "OAI-ZIB sample knee label map (case 9092628)",
}
# Approximate sizes for the message shown before a download, where the registry has none.
APPROXIMATE_SIZES = {
    "isegformer_swin_base_oaizib": "about 355 MB",
    "stcn": "about 218 MB",
    "mivos_fusion": "about 160 kB",
}
#: OAI-ZIB label values (also those of the CLAIR-Knee template, except its split tibial cartilage).
OAIZIB_LABELS = {1: "femur", 2: "femoral cartilage", 3: "tibia", 4: "tibial cartilage"}
DEFAULT_LABEL_VALUE = 2
DEFAULT_NUM_SLICES = 5
DEFAULT_MAX_CLICKS = 20
DEFAULT_TARGET_IOU = 0.85
OUTPUT_NAMES = {
    "segmentation": "demo.seg.nrrd",
    "clicks": "demo_clicks.mrk.json",
    "montage": "demo_montage.png",
    "report": "demo.json",
}
# Reasons of a download failure after which the other downloads would fail the same way.
_NETWORK_DOWN = ("offline", "timeout", "tls")


# ------------------------------------------------------------------------------------- files
@dataclass(frozen=True)
class MissingFile:
    """A file the demo needs and could not get."""

    role: str  # a key of DEFAULT_MODELS
    name: str  # registry name
    filename: str  # the name to save it under (in --weights-dir)
    urls: tuple[str, ...]  # where to download it, primary first
    cache_path: Path  # where the cache expects it
    size: str  # "about 355 MB", "144916 bytes" or ""
    reason: str  # why it is missing, one line

    @property
    def title(self) -> str:
        return ROLE_TITLES.get(self.role, self.role)


class MissingFilesError(WeightsError):
    """Some files of the demo could not be found or downloaded; nothing was computed or written.

    ``missing`` lists them, ``offline`` is True when the network looked unreachable.
    """

    def __init__(self, missing: Sequence[MissingFile], offline: bool, weights_dir: Optional[Path]):
        self.missing = list(missing)
        self.offline = offline
        self.weights_dir = weights_dir
        lines = [f"{len(self.missing)} file(s) the demo needs could not be downloaded"
                 + (" (the network seems unreachable)" if offline else "") + ":"]
        for item in self.missing:
            lines.append(f"{item.name} ({item.filename}): {item.reason}. Download {item.urls[0]} "
                         f"and put it in a folder given as --weights-dir (weights_dir=...), or "
                         f"at {item.cache_path}.")
        super().__init__(" ".join(lines))


@dataclass(frozen=True)
class DemoFiles:
    """Verified local paths of everything the demo reads (``fusion`` None: no FusionNet)."""

    click_model: Path
    stcn: Path
    fusion: Optional[Path]
    volume: Path
    label: Path
    sample: bool  # the volume and label are the OAI-ZIB sample


def resolve_demo_files(
    *,
    click_model: Optional[PathLike] = None,
    stcn: Optional[PathLike] = None,
    fusion: Union[PathLike, None, bool] = None,
    volume: Optional[PathLike] = None,
    label: Optional[PathLike] = None,
    weights_dir: Optional[PathLike] = None,
    download: bool = True,
    download_progress: Optional[Callable[[str], Optional[ProgressCallback]]] = None,
    messages: Messages = None,
    registry=None,
    home=None,
    options=None,
) -> DemoFiles:
    """Every file of the demo as a verified local path, downloading what is missing.

    Each of ``click_model``, ``stcn``, ``fusion``, ``volume``, ``label`` may be a file path or a
    registry name; ``None`` means the official file: taken from ``weights_dir`` when it holds
    the file under its registry filename, else from the verified cache, else downloaded.
    ``fusion=False`` runs without FusionNet. ``volume`` and ``label`` go together.
    ``download_progress(name)`` gives the progress callback of one download.

    Raises :class:`MissingFilesError` (before anything is computed) when files cannot be had,
    and other :class:`~isegformer.errors.WeightsError` for files given by path that are absent
    or fail their check.
    """
    from .weights import load_registry, model_status, resolve_model

    if (volume is None) != (label is None):
        raise InvalidInputError(
            "Give both --volume and --label (the label map scores the result and drives the "
            "simulated clicks), or neither for the OAI-ZIB sample knee."
        )
    folder = None
    if weights_dir is not None:
        folder = Path(weights_dir).expanduser()
        if not folder.is_dir():
            raise InvalidInputError(
                f"--weights-dir {folder} is not a folder. Give the folder where you saved the "
                "downloaded files (under their original names)."
            )
    reg = registry if registry is not None and not isinstance(registry, (str, os.PathLike)) \
        else load_registry(registry)
    given = {"click_model": click_model, "stcn": stcn, "fusion": fusion, "volume": volume, "label": label}
    resolved: dict[str, Optional[Path]] = {}
    to_download = []
    for role, value in given.items():
        if role == "fusion" and value is False:
            resolved[role] = None
            continue
        if value is not None and str(value) not in reg:
            # An explicit file is checked now: a typo must not wait for the downloads.
            resolved[role] = _given_file(role, value, reg, home)
            continue
        entry = reg.get(DEFAULT_MODELS[role] if value is None else str(value))
        local = folder / entry.filename if folder is not None else None
        if local is not None and local.is_file():
            resolved[role] = resolve_model(local, model=entry.name, registry=reg, home=home)
            continue
        if model_status(entry, home=home, verify=False).cached:
            try:
                resolved[role] = resolve_model(entry.name, download=False, registry=reg, home=home)
                continue
            except WeightsError as err:  # a damaged cached file was deleted: fetch it again
                log.warning("%s", err)
        to_download.append((role, entry))

    missing: list[MissingFile] = []
    offline = False
    # Small files first: when the network is down, the first attempt says so quickly.
    to_download.sort(key=lambda item: item[1].size if item[1].size is not None else _rough_size(item[1].name))
    for number, (role, entry) in enumerate(to_download):
        cache_path = _cache_path(entry, home)
        if offline or not download:
            reason = "not downloaded: the network is unreachable" if offline else "not in the cache"
            missing.append(_missing(role, entry, cache_path, reason))
            continue
        if messages:
            messages(f"downloading {entry.name} ({entry.filename}, {_size_text(entry) or 'size unknown'})")
        attempt_options = _first_attempt_options(options) if number == 0 else options
        progress = download_progress(entry.name) if download_progress else None
        try:
            resolved[role] = resolve_model(entry.name, registry=reg, home=home, progress=progress,
                                           options=attempt_options)
        except WeightsError as err:
            reason = getattr(err, "reason", None)
            offline = reason in _NETWORK_DOWN
            log.info("%s: %s", entry.name, err)
            missing.append(_missing(role, entry, cache_path, _short_reason(err)))
        finally:
            close = getattr(progress, "close", None)
            if callable(close):
                close()
    if missing:
        order = list(DEFAULT_MODELS)
        missing.sort(key=lambda item: order.index(item.role))
        raise MissingFilesError(missing, offline, folder)
    return DemoFiles(
        click_model=resolved["click_model"],  # type: ignore[arg-type]
        stcn=resolved["stcn"],  # type: ignore[arg-type]
        fusion=resolved["fusion"],
        volume=resolved["volume"],  # type: ignore[arg-type]
        label=resolved["label"],  # type: ignore[arg-type]
        sample=volume is None,
    )


def _given_file(role: str, value: PathLike, registry, home) -> Path:
    """A file given by path: weights are hashed before any unpickling (trust on first use);
    images are not pickles, so they only need to exist."""
    from .weights import resolve_model

    if role in ("volume", "label"):
        path = Path(value).expanduser()
        if not path.exists():
            raise InvalidInputError(f"--{role} {path}: no such file or folder. Check the path.")
        return path
    return resolve_model(Path(value).expanduser(), registry=registry, home=home)


def _first_attempt_options(options):
    """The first download tries once more at most: offline, the user hears so in seconds."""
    from .weights import DownloadOptions

    options = options or DownloadOptions()
    return replace(options, retries=min(options.retries, 1))


def _rough_size(name: str) -> int:
    return {"mivos_fusion": 160_000, "stcn": 218_000_000,
            "isegformer_swin_base_oaizib": 355_000_000}.get(name, 50_000_000)


def _size_text(entry) -> str:
    if entry.size is not None:
        return f"{entry.size / 1e6:.1f} MB" if entry.size >= 1e6 else f"{entry.size / 1e3:.0f} kB"
    return APPROXIMATE_SIZES.get(entry.name, "")


def _cache_path(entry, home) -> Path:
    from .weights import ModelCache

    cache = home if isinstance(home, ModelCache) else ModelCache(home)
    return cache.model_path(entry.name, entry.filename)


def _missing(role: str, entry, cache_path: Path, reason: str) -> MissingFile:
    return MissingFile(role=role, name=entry.name, filename=entry.filename, urls=entry.urls,
                       cache_path=cache_path, size=_size_text(entry), reason=reason)


def _short_reason(err: Exception) -> str:
    reason = getattr(err, "reason", None)
    text = {
        "offline": "cannot connect (offline, or a firewall or proxy blocks it)",
        "timeout": "the connection timed out",
        "not_found": "not found at that address (HTTP 404)",
        "bad_content": "the server sent a web page instead of the file (Google Drive quota?)",
        "server_error": "the server failed (HTTP 5xx or 429)",
        "tls": "the secure connection failed (proxy certificate?)",
        "write_error": "the cache folder is not writable",
        "insecure_redirect": "refused: the https download was redirected to plain http",
    }.get(reason or "")
    if text:
        return text
    first = str(err).split(". ")[0]
    return first[:200]


# ------------------------------------------------------------------------------------- results
@dataclass
class SliceResult:
    """The simulated clicks on one annotated slice."""

    index: int
    clicks: list[dict]  # {"row", "col", "positive"} in click order
    iou_per_click: list[float]
    seconds: float

    @property
    def iou(self) -> float:
        return self.iou_per_click[-1] if self.iou_per_click else 0.0


@dataclass
class DemoResult:
    """What the demo measured and wrote; :meth:`to_json` is the content of ``demo.json``."""

    volume: str
    label: str
    label_value: int
    segment_name: str
    axis: int
    axis_reason: str
    volume_shape: list[int]  # (k, j, i)
    object_extent: list[int]  # first and last slice along the axis holding the object
    slices: list[SliceResult]
    max_clicks: int
    target_iou: float
    scores: dict  # dice, sensitivity, ppv, iou over the whole volume
    scores_propagated_only: dict  # the same over the slices that were not annotated
    seconds: dict  # per step
    device: str
    models: dict  # role -> path
    files: dict = field(default_factory=dict)  # kind -> path written
    environment: dict = field(default_factory=dict)

    @property
    def total_clicks(self) -> int:
        return sum(len(s.clicks) for s in self.slices)

    def to_json(self) -> dict:
        data = asdict(self)
        for slice_data, slice_result in zip(data["slices"], self.slices):
            slice_data["iou"] = slice_result.iou
            slice_data["num_clicks"] = len(slice_result.clicks)
        data["total_clicks"] = self.total_clicks
        data["protocol"] = (f"NoC simulated user: clicks at the centre of the largest error, up to "
                            f"{self.max_clicks} per slice, stopping once the slice IoU >= "
                            f"{self.target_iou:g}")
        return data


# ------------------------------------------------------------------------------------- axis, slices
def sagittal_axis(volume) -> int:
    """The array axis (0 = k, 1 = j, 2 = i) whose slices are sagittal: the IJK direction closest
    to left-right (RAS x)."""
    direction = np.asarray(volume.direction_ras)  # columns: RAS directions of i, j, k
    lateral = np.abs(direction[0, :])  # |x| of i, j, k
    ijk_component = int(np.argmax(lateral))
    return {0: 2, 1: 1, 2: 0}[ijk_component]


def choose_demo_slices(object_frames: np.ndarray, count: int) -> list[int]:
    """``count`` slices spread over the object's extent (the ``extent`` scheme), each moved to
    the nearest unused slice holding the object if it falls into a gap."""
    from .evaluation.propagation import extent_slices

    present = object_frames.reshape(object_frames.shape[0], -1).any(axis=1)
    holding = np.flatnonzero(present)
    count = min(int(count), int(holding.size))
    chosen: list[int] = []
    for index in extent_slices(object_frames, count):
        candidates = [int(i) for i in holding if int(i) not in chosen]
        if not candidates:
            break
        chosen.append(min(candidates, key=lambda i: (abs(i - index), i)))
    return sorted(chosen)


# ------------------------------------------------------------------------------------- the run
def check_demo_options(out_dir: PathLike, num_slices: int, max_clicks: int, target_iou: float) -> Path:
    """Refuse bad settings before anything is downloaded; returns the output folder."""
    for value, what in ((num_slices, "number of slices"), (max_clicks, "number of clicks per slice")):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InvalidInputError(f"The {what} must be a whole number of at least 1, got {value!r}.")
    if not (isinstance(target_iou, (int, float)) and 0.0 < float(target_iou) <= 1.0):
        raise InvalidInputError(f"The target IoU must be in (0, 1], got {target_iou!r}.")
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {out} is a file; give a folder for the demo's outputs.")
    return out


def run_demo(
    files: Optional[DemoFiles] = None,
    out_dir: PathLike = "isegformer-demo",
    *,
    label_value: int = DEFAULT_LABEL_VALUE,
    axis: Optional[int] = None,
    num_slices: int = DEFAULT_NUM_SLICES,
    max_clicks: int = DEFAULT_MAX_CLICKS,
    target_iou: float = DEFAULT_TARGET_IOU,
    segment_name: Optional[str] = None,
    device: str = "auto",
    messages: Messages = None,
    progress: Optional[ProgressCallback] = None,
) -> DemoResult:
    """Run the demo on ``files`` (default: :func:`resolve_demo_files` with the official files,
    downloaded when missing) and write into ``out_dir``::

        from isegformer.demo import run_demo
        result = run_demo(out_dir="knee-demo")
        print(result.scores["dice"], result.total_clicks, result.seconds)

    ``axis`` None: the sagittal axis (:func:`sagittal_axis`). ``messages`` receives one line per
    step (the CLI prints them); ``progress`` follows the propagation. Returns the figures; the
    files are written only once everything was computed.
    """
    from .click_engine.predictor import ClickPredictor
    from .clicks import ClickSimulator
    from .evaluation.propagation import object_mask, score
    from .output.atomic import check_writable
    from .propagation import stcn as stcn_module
    from .propagation.base import frames_along_axis
    from .session import Session
    from .volume import read_label_map, read_volume
    from .volume.slicing import check_axis, extract_slice

    say = messages or (lambda text: None)
    out = check_demo_options(out_dir, num_slices, max_clicks, target_iou)
    if files is None:
        files = resolve_demo_files(messages=messages)
    paths = {kind: out / filename for kind, filename in OUTPUT_NAMES.items()}
    _guard_demo_outputs(files, paths)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    step = time.perf_counter()
    volume = read_volume(files.volume)
    label = read_label_map(files.label, volume)
    gt = object_mask(label.array, [int(label_value)])
    if axis is None:
        axis = sagittal_axis(volume)
        axis_reason = "sagittal (the axis closest to left-right)"
    else:
        axis = check_axis(axis)
        axis_reason = "given"
    gt_frames = frames_along_axis(gt, axis)
    holding = np.flatnonzero(gt_frames.reshape(gt_frames.shape[0], -1).any(axis=1))
    extent = [int(holding[0]), int(holding[-1])]
    slices = choose_demo_slices(gt_frames, int(num_slices))
    name = segment_name or (OAIZIB_LABELS.get(int(label_value)) if files.sample else None) \
        or f"label {int(label_value)}"
    timings["read"] = time.perf_counter() - step
    say(f"volume {Path(files.volume).name}: {volume.shape[2]} x {volume.shape[1]} x {volume.shape[0]} voxels "
        f"(i x j x k); {name}{'' if name == f'label {label_value}' else f' (label {label_value})'} on slices {extent[0]}..{extent[1]} of "
        f"{gt_frames.shape[0]} along axis {'kji'[axis]} ({axis_reason})")
    say(f"annotating {len(slices)} slice(s): {', '.join(map(str, slices))}")

    step = time.perf_counter()
    predictor = ClickPredictor(files.click_model, device=device)
    network = stcn_module.load_stcn(files.stcn)
    fusion = stcn_module.load_fusion(files.fusion) if files.fusion is not None else None
    timings["load_models"] = time.perf_counter() - step
    say(f"models loaded on {predictor.device} in {timings['load_models']:.1f} s"
        + ("" if fusion is not None else " (no FusionNet: the two directions are blended by distance)"))

    session = Session(volume, click_model=predictor, stcn_weights=network, fusion_weights=fusion,
                      device=device, axis=axis, source=str(files.volume))
    segment = session.add_segment(name, label_value=int(label_value) if 1 <= int(label_value) <= 255 else None)

    step = time.perf_counter()
    results: list[SliceResult] = []
    for index in slices:
        slice_started = time.perf_counter()
        gt_slice = extract_slice(gt, axis, index)
        simulator = ClickSimulator(gt_slice.astype(np.int8))
        pred = np.zeros(gt_slice.shape, bool)
        ious: list[float] = []
        for _ in range(int(max_clicks)):
            click = simulator.next_click(pred)
            pred = session.click_slice(axis, index, click.y, click.x, click.positive, segment)
            ious.append(score(gt_slice, pred).iou)
            if ious[-1] >= target_iou:
                break
        clicks = [{"row": int(c.y), "col": int(c.x), "positive": bool(c.positive)} for c in simulator.clicks]
        results.append(SliceResult(int(index), clicks, ious, time.perf_counter() - slice_started))
        say(f"  slice {index}: {len(clicks)} click(s), IoU {ious[-1]:.3f} "
            f"({results[-1].seconds:.1f} s)")
    timings["clicks"] = time.perf_counter() - step

    step = time.perf_counter()
    say(f"propagating through {gt_frames.shape[0]} slices with STCN"
        + (" + FusionNet" if fusion is not None else "")
        + (" (on the CPU this is the long step: the bar shows the time left)"
           if predictor.device.type == "cpu" else ""))
    prediction = session.propagate(segment, method="stcn", axis=axis, progress=progress)
    timings["propagation"] = time.perf_counter() - step

    whole = score(gt, prediction)
    others = np.ones(gt_frames.shape[0], bool)
    others[slices] = False
    rest = score(gt_frames[others], frames_along_axis(prediction, axis)[others]) if others.any() else whole

    step = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    _guard_demo_outputs(files, paths)  # again: the folder exists only now
    for path in paths.values():
        check_writable(path)
    session.save_segmentation(paths["segmentation"])
    session.save_clicks(paths["clicks"])
    _write_montage(paths["montage"], session, segment, gt, axis, slices)
    timings["save"] = time.perf_counter() - step
    timings["total"] = time.perf_counter() - started

    result = DemoResult(
        volume=str(files.volume), label=str(files.label), label_value=int(label_value),
        segment_name=name, axis=int(axis), axis_reason=axis_reason,
        volume_shape=list(volume.shape), object_extent=extent, slices=results,
        max_clicks=int(max_clicks), target_iou=float(target_iou),
        scores=asdict(whole), scores_propagated_only=asdict(rest),
        seconds={k: round(v, 3) for k, v in timings.items()},
        device=str(predictor.device),
        models={"click_model": str(files.click_model), "stcn": str(files.stcn),
                "fusion": str(files.fusion) if files.fusion is not None else None},
        files={kind: str(path) for kind, path in paths.items()},
        environment=_environment(),
    )
    _write_json(paths["report"], result.to_json())
    return result


def _guard_demo_outputs(files: DemoFiles, paths: dict) -> None:
    """None of the demo's outputs may replace one of its inputs (e.g. ``--out`` the folder
    of ``--volume`` with a volume named like an output)."""
    from .output.paths import guard_outputs

    roles = ("click_model", "stcn", "fusion", "volume", "label")
    guard_outputs([getattr(files, role) for role in roles], list(paths.values()),
                  input_names=[f"the {role.replace('_', ' ')} file" for role in roles])


def _write_montage(path: Path, session, segment, gt: np.ndarray, axis: int, annotated: Sequence[int]) -> None:
    """The annotated slices and a few propagated ones, with the result and the label's contours."""
    from .output.overlay import MAX_TILES, OverlayClick, pick_slices, write_overlay

    prediction = session.segment_mask(segment)
    extra = [i for i in pick_slices([gt], axis, MAX_TILES) if i not in annotated]
    room = max(0, min(MAX_TILES, 2 * len(annotated) + 2) - len(annotated))
    if extra and room:
        extra = [extra[int(p)] for p in np.unique(np.linspace(0, len(extra) - 1, room).round().astype(int))]
    indices = sorted(set(annotated) | set(extra[:room]))
    clicks = [OverlayClick(index, c.row, c.col, c.positive, segment.color)
              for index, annotation in segment.annotations[axis].items() for c in annotation.clicks]
    write_overlay(path, session.volume.array, axis, [prediction, gt], [segment.color, (1.0, 0.85, 0.0)],
                  indices=indices, clicks=clicks, window=session.window,
                  names=[f"{segment.name} (clicks + STCN)", "label map (reference)"])


def _write_json(path: Path, data: dict) -> None:
    from .output.atomic import atomic_write

    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _environment() -> dict:
    import torch

    from . import __version__

    return {"isegformer": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "processor": platform.processor() or "",
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


__all__ = [
    "DemoFiles", "DemoResult", "MissingFile", "MissingFilesError", "SliceResult",
    "check_demo_options", "choose_demo_slices", "resolve_demo_files", "run_demo", "sagittal_axis",
]
