"""STCN propagation through a stack of frames, with MiVOS' interaction semantics.

Each ``annotate(index, label_map)`` does what MiVOS' ``InferenceCore.interact`` does:

* the frame's one-hot annotation replaces its probabilities, and the change from the previous
  probabilities (its positive and negative parts) is kept for the fusion attention;
* the frame joins the *certain memory* (every annotated frame, in annotation order);
* a forward pass, then a backward pass, run from the frame to just before the nearest other
  annotated frame (or to the end of the stack). Each pass starts from the certain memory and
  adds a frame every ``memory_every`` frames counted from the last added one, never the frame
  that ends the pass;
* between two annotated frames the new estimate and the previous one are fused by FusionNet
  (or, without its weights, blended by distance); elsewhere the new estimate is taken as is;
* several objects are decoded separately and combined by soft aggregation.

Differences from the reference, all without effect on its results:

* query features are computed once per frame (in batches) and cached, instead of re-encoding
  a frame each time it is visited; the memory read gathers the top-k entries instead of
  multiplying by a mostly-zero matrix;
* a correction (annotating a frame again) replaces that frame's certain-memory entry; MiVOS
  kept the stale one too;
* results are written in place with an undo journal (the previous values of the frames
  written, or nothing for frames never written), so a cancel changes nothing without a second
  copy of the whole state.

``seed`` takes up an earlier result (a saved session, a resumed scene) without decoding: the
state becomes the one-hot of that result and its annotations rejoin the certain memory, so a
later ``annotate`` decodes only its own interval. Near a new annotation the fusion then sees
the earlier *binary* result instead of its soft probabilities (see ``seed``).
"""
from __future__ import annotations

import logging
import weakref
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ...device import resolve_device
from ...errors import InvalidInputError
from ...progress import ProgressCallback, report
from ... import arguments
from ..base import Propagator, annotation_items, frames_along_axis
from .cache import FeatureCache, FrameFeatures
from .fusion import FusionNet
from .heap import release_free_heap
from .inference import inference_network
from .memory import MemoryBank
from .network import STCNNetwork, soft_aggregate
from .schedule import PlannedInteraction, plan_interactions
from .preprocess import normalize_frames, pad_to_multiple, padding_for, unpad, volume_to_frames

log = logging.getLogger(__name__)

MEMORY_EVERY = 5
#: feature cache budget when none is given. A 384x384 frame takes 15.5 MB, and 2.4 MB more for
#: its f16 while it is still to become a memory value (about one frame in four, see
#: ``FeatureCache``): on the CPU 32 frames stay cached, a whole segment between two of 5
#: annotated slices of 160 with its annotated end, which both passes crossing it read one after
#: the other (see ``_pass_orders``), so a 160 x 384 x 384 propagation from 5 slices encodes each
#: frame once (with 25 frames cached: 183 encodings). Frames read again later (a correction,
#: one-by-one annotations) are recomputed: slower, never different.
DEFAULT_CPU_CACHE_BYTES = 491 * 2**20
DEFAULT_CUDA_CACHE_BYTES = 8 * 2**30


class STCNPropagator(Propagator):
    """Propagates annotated frames through ``frames`` with STCN (see the module docstring).

    ``frames``: (T, H, W, 3) uint8 frames as the network sees them, or (T, H, W) raw
    intensities, which are converted as the reference did (``preprocess.volume_to_frames``).
    ``network`` and ``fusion`` are moved to ``device`` and put in eval mode. Without
    ``fusion`` the two directions between annotated frames are blended linearly by distance.
    ``feature_cache_bytes`` bounds the per-frame feature cache (default: 491 MiB on CPU,
    8 GiB on CUDA); a smaller budget only costs recomputation. ``batch_size`` frames are
    encoded at a time.

    The propagator runs an inference view of ``network`` (``inference.inference_network``):
    batch norms folded into their convolutions and, when ``winograd`` (default: on the CPU),
    the decoder's large 3x3 convolutions by Winograd's algorithm. Both change results by float
    rounding only; ``winograd=False`` keeps direct convolutions.
    """

    name = "stcn"

    def __init__(self, frames: np.ndarray, num_objects: int, network: STCNNetwork,
                 fusion: Optional[FusionNet] = None, device: str | torch.device = "auto", *,
                 memory_every: int = MEMORY_EVERY, feature_cache_bytes: Optional[int] = None,
                 batch_size: int = 1, winograd: Optional[bool] = None):
        frames = _validated_frames(frames)
        if isinstance(num_objects, bool) or not isinstance(num_objects, (int, np.integer)) or num_objects < 1:
            raise InvalidInputError(f"num_objects must be a positive integer, got {num_objects!r}.")
        memory_every = arguments.integer(memory_every, "memory_every", 1)
        batch_size = arguments.integer(batch_size, "batch_size", 1)
        if feature_cache_bytes is not None:
            feature_cache_bytes = arguments.integer(feature_cache_bytes, "feature_cache_bytes", 0)
        if winograd is not None:
            winograd = arguments.boolean(winograd, "winograd")
        if not isinstance(network, STCNNetwork):
            raise InvalidInputError("network must be an STCNNetwork (see load_stcn).")
        if fusion is not None and not isinstance(fusion, FusionNet):
            raise InvalidInputError("fusion must be a FusionNet (see load_fusion) or None.")
        self._device = resolve_device(device)
        # On the CPU, oneDNN convolutions run ~15% faster on channels-last tensors (measured on
        # the decoder of a 384x384 frame; probabilities differ from the default layout by < 3e-6).
        layout = torch.channels_last if self._device.type == "cpu" else torch.contiguous_format
        network = network.to(self._device, memory_format=layout).eval()
        if winograd is None:
            winograd = self._device.type == "cpu"
        self._net = inference_network(network, winograd=bool(winograd))
        release_free_heap()  # the layout conversion's and the weight transforms' temporaries
        self._fusion = None if fusion is None else fusion.to(self._device, memory_format=layout).eval()
        if self._fusion is None:
            log.warning("No FusionNet weights: between annotated slices the two propagation "
                        "directions are blended linearly by distance instead of fused.")
        # a grey volume's three channels are equal: keep one (a third of the memory)
        gray = all(bool((frames[t, ..., 1:] == frames[t, ..., :1]).all()) for t in range(frames.shape[0]))
        self._frames = np.ascontiguousarray(frames[..., :1]) if gray else frames
        self._k = int(num_objects)
        self._every = int(memory_every)
        t, h, w = frames.shape[:3]
        self._pad = padding_for(h, w)
        self._hp = h + self._pad[2] + self._pad[3]
        self._wp = w + self._pad[0] + self._pad[1]
        # like the reference: background 1e-7, objects 0 before anything is annotated
        self._prob = torch.zeros((self._k + 1, t, self._hp, self._wp), dtype=torch.float32)
        self._prob[0] = 1e-7
        self._ever_written = np.zeros(t, dtype=bool)
        self._annotations: "OrderedDict[int, np.ndarray]" = OrderedDict()
        self._certain: "OrderedDict[int, Tuple[torch.Tensor, torch.Tensor]]" = OrderedDict()
        if feature_cache_bytes is None:
            feature_cache_bytes = (DEFAULT_CUDA_CACHE_BYTES if self._device.type == "cuda"
                                   else DEFAULT_CPU_CACHE_BYTES)
        # the cache reaches the encoder through a weak reference: a bound method would make a
        # cycle, and a dropped propagator (its network view, 0.3 GiB on the CPU, and its
        # cache) would stay resident until the garbage collector happens to run
        encode = weakref.WeakMethod(self._encode_frames)
        self._cache = FeatureCache(lambda indices: encode()(indices), feature_cache_bytes, t,
                                   batch_size, value_every=self._every)
        #: frames decoded so far (one per frame per pass; for tests and benchmarks)
        self.frames_decoded = 0

    @classmethod
    def from_volume(cls, volume: np.ndarray, axis: int, num_objects: int, network: STCNNetwork,
                    fusion: Optional[FusionNet] = None, **kwargs) -> "STCNPropagator":
        """A propagator over the slices of a (k, j, i) ``volume`` along ``axis`` (0, 1 or 2),
        with the reference's intensity normalisation. Frame t is slice t along that axis."""
        return cls(volume_to_frames(frames_along_axis(np.asarray(volume), axis)), num_objects,
                   network, fusion, **kwargs)

    # ----------------------------------------------------------------------------- properties
    @property
    def num_frames(self) -> int:
        return self._frames.shape[0]

    @property
    def frames(self) -> np.ndarray:
        """(T, H, W, 3) uint8 frames as the network sees them (a read-only view)."""
        return np.broadcast_to(self._frames, self._frames.shape[:3] + (3,))

    @property
    def num_objects(self) -> int:
        return self._k

    @property
    def frame_shape(self) -> Tuple[int, int]:
        return self._frames.shape[1], self._frames.shape[2]

    @property
    def annotated(self) -> Mapping[int, np.ndarray]:
        return dict(self._annotations)

    @property
    def probabilities(self) -> np.ndarray:
        """(K+1, T, H, W) float32, a read-only view of the current state (copy it to keep it
        across later ``annotate`` calls)."""
        view = unpad(self._prob, self._pad).numpy()
        view.flags.writeable = False
        return view

    def labels(self) -> np.ndarray:
        """The current label map (T, H, W) uint8, as ``Propagator.labels`` (argmax, ties to the
        background), one frame at a time: the whole-volume argmax's int64 indices would take
        twice the probability state (189 MB at 160 x 384 x 384) on top of it."""
        probabilities = self.probabilities
        out = np.empty(probabilities.shape[1:], dtype=np.uint8)
        for t in range(out.shape[0]):
            out[t] = np.argmax(probabilities[:, t], axis=0)
        return out

    @property
    def frames_encoded(self) -> int:
        """Frames that went through the key encoder so far."""
        return self._cache.encoded

    def release_cache(self) -> None:
        """Free the cached per-frame features (GBs on CPU); later passes recompute them."""
        self._cache.clear()

    # ------------------------------------------------------------------------------ annotate
    def annotate(self, index: int, label_map: np.ndarray,
                 progress: Optional[ProgressCallback] = None) -> np.ndarray:
        return self.annotate_many([(index, label_map)], progress)

    def annotate_many(self, items: Sequence[Tuple[int, np.ndarray]],
                      progress: Optional[ProgressCallback] = None) -> np.ndarray:
        """The result of ``annotate`` for each item in order, decoding only the frames whose
        result is read later (see ``schedule``). Progress counts the frames decoded."""
        items = annotation_items(items)
        arguments.optional_callable(progress, "progress")
        checked = [(self._validated_index(index), self._validated_labels(labels))
                   for index, labels in items]
        if not checked:
            return self.probabilities
        plan = plan_interactions(self.num_frames, list(self._annotations),
                                 [index for index, _ in checked], uses_change=self._fusion is not None)
        total = sum(len(p.forward_prefix) + len(p.backward_prefix) for p in plan)
        done = [0]

        def step() -> None:
            done[0] += 1
            report(progress, done[0], total, "propagating")

        report(progress, 0, total, "propagating")
        orders = _pass_orders(plan, next(reversed(self._annotations), None))
        visits = _Visits(_planned_reads(plan, orders, self._every))
        # the memory goes aside and results are journaled until all is done: a cancel changes nothing
        written = _Journal(self._prob, self._ever_written)
        certain = OrderedDict(self._certain)
        try:
            with torch.inference_mode():
                for planned, order, (_, labels) in zip(plan, orders, checked):
                    self._interact(planned, order, labels, certain, written, visits, step)
        except BaseException:
            written.rollback()
            raise
        written.commit()
        release_free_heap()  # the encoder's and decoder's temporaries
        for index, labels in checked:
            self._annotations.pop(index, None)
            self._annotations[index] = labels
        self._certain = certain
        log.debug("STCN: %d annotations, %d frames decoded", len(checked), total)
        return self.probabilities

    def seed(self, labels: np.ndarray, annotated: Sequence[Tuple[int, np.ndarray]]) -> bool:
        """Take up an earlier propagation's result without decoding a frame (see
        ``Propagator.seed``): every frame's probabilities become the one-hot of ``labels``, an
        annotated frame's that of its annotation, and each annotation joins the certain memory
        exactly as ``annotate`` puts it there (its key, and its value encoded from its mask).

        A later ``annotate`` then decodes only the frames between its frame and its annotated
        neighbours, as it would on the propagator that computed ``labels``, and leaves every
        other frame exactly as given. The one difference: there the previous estimates were
        soft probabilities, here they are the binary ``labels``, so the frames where a new
        estimate is fused with the previous one (between the new annotation and an annotated
        neighbour), and the change at the new annotation's frame that drives FusionNet's
        attention, may come out slightly differently. Returns True."""
        if self._annotations or self._ever_written.any():
            raise InvalidInputError("Only a new propagator can be seeded: this one has computed results already.")
        stack = self._validated_label_stack(labels)
        checked = [(self._validated_index(index), self._validated_labels(mask))
                   for index, mask in annotation_items(annotated)]
        for index, mask in checked:
            stack[index] = mask
        order = list(OrderedDict((index, None) for index, _ in reversed(checked)))[::-1]  # the last one of a frame wins
        last = {index: mask for index, mask in checked}
        certain: "OrderedDict[int, Tuple[torch.Tensor, torch.Tensor]]" = OrderedDict()
        with torch.inference_mode():
            for number, index in enumerate(order):
                later = order[number + 1:]
                index_k16, value = self._annotated_memory(index, self._one_hot(last[index]), (later, later))
                certain[index] = (index_k16[0], value[:, :, 0])
            for t in range(self.num_frames):
                self._prob[:, t] = self._one_hot(stack[t])[:, 0].to(self._prob.device)
        self._ever_written[:] = True
        self._certain = certain
        for index in order:
            self._annotations[index] = last[index]
        release_free_heap()
        log.debug("STCN: seeded %d frames with %d annotations", self.num_frames, len(order))
        return True

    def _interact(self, planned: PlannedInteraction, order: Sequence[List[int]], labels: np.ndarray,
                  certain: "OrderedDict[int, Tuple[torch.Tensor, torch.Tensor]]",
                  written: "_Journal", visits: "_Visits", step) -> None:
        """MiVOS' ``interact`` for one annotation, limited to its needed frames, its passes run
        in ``order`` (they are independent: both start from the certain memory and write
        different frames). ``certain`` and ``written`` (the probability state) are updated in
        place; ``visits`` is the whole call's sequence of feature reads, for the cache."""
        index = planned.index
        mask = self._one_hot(labels)  # (K+1, 1, Hp, Wp) on the device
        previous = written.current(index).unsqueeze(1).to(self._device)
        change = mask - previous
        pos_change, neg_change = change.clamp(0, 1), (-change).clamp(0, 1)

        index_k16, value = self._annotated_memory(index, mask, visits.after(index)[:2])
        certain.pop(index, None)
        certain[index] = (index_k16[0], value[:, :, 0])

        for frames in order:
            forward = frames[0] > index
            full_length = len(planned.forward if forward else planned.backward)
            bound = planned.upper if forward else planned.lower
            self._run_pass(planned, frames, full_length, bound, certain, index_k16,
                           pos_change, neg_change, written, visits, step)
        written.write(index, mask[:, 0].cpu())

    def _run_pass(self, planned: PlannedInteraction, frames: List[int], full_length: int, bound: int,
                  certain: Mapping[int, Tuple[torch.Tensor, torch.Tensor]], index_k16: torch.Tensor,
                  pos_change: torch.Tensor, neg_change: torch.Tensor,
                  written: "_Journal", visits: "_Visits", step) -> None:
        """One direction of MiVOS' ``interact``: ``frames`` in visiting order (a prefix of the
        whole pass of ``full_length`` frames). Needed frames are written at once: each frame's
        previous estimate is read only here, just before, and the other pass writes other frames."""
        index = planned.index
        hw = index_k16.shape[-2] * index_k16.shape[-1]
        # sized for the whole pass, as the reference does
        capacity = len(certain) + (full_length - 1) // self._every + 1
        memory = MemoryBank(capacity, hw, self._k, self._device, self._net.top_k)
        for k16, value in certain.values():
            memory.add(k16, value)
        added = set(_memory_frames(index, frames, self._every))
        for t in frames:
            upcoming, upcoming_f16, needs_f16 = visits.after(t)
            feats = self._cache.get(t, upcoming, f16=needs_f16, upcoming_f16=upcoming_f16)
            prob = self._net.decode_readout(memory.read(feats.k16), feats.f16_thin,
                                            feats.skip8, feats.skip4)
            self.frames_decoded += 1
            out = soft_aggregate(prob)  # (K+1, 1, Hp, Wp)
            if t in added:
                memory.add(feats.k16, self._net.encode_value(self._image(t), feats.f16, out[1:]))
            if t in planned.needed:
                if 0 <= bound < self.num_frames:
                    previous = written.current(t).unsqueeze(1).to(self._device)
                    out = self._fuse(bound, index, t, out, previous, index_k16, feats.k16,
                                     pos_change, neg_change)
                written.write(t, out[:, 0].cpu())
            step()

    def _annotated_memory(self, index: int, mask: torch.Tensor,
                          later_reads: Tuple[Sequence[int], Sequence[int]]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(key (1, C, h, w), value) of annotated frame ``index`` with its one-hot ``mask``, as it
        joins the certain memory; ``later_reads``: the frames read after it, and those of them
        that read ``f16`` (for the cache)."""
        upcoming, upcoming_f16 = later_reads
        feats = self._cache.get(index, upcoming, f16=True, upcoming_f16=upcoming_f16)
        value = self._net.encode_value(self._image(index), feats.f16, mask[1:])
        return feats.k16.clone(), value  # cache views are only valid until the next get

    def _fuse(self, bound: int, index: int, t: int, current: torch.Tensor, previous: torch.Tensor,
              index_k16: torch.Tensor, query_k16: torch.Tensor, pos_change: torch.Tensor,
              neg_change: torch.Tensor) -> torch.Tensor:
        """Combine the new estimate with the frame's previous one (from the other side)."""
        span = abs(bound - index)
        to_bound = abs(bound - t) / span  # 1 next to the new annotation, 0 next to the other
        to_index = abs(index - t) / span
        if self._fusion is None:
            return to_bound * current + to_index * previous
        attention = self._net.attention(index_k16, pos_change, neg_change, query_k16)
        distances = torch.tensor([[to_bound, to_index]], dtype=torch.float32, device=self._device)
        image = self._image(t)
        weights = torch.cat([
            torch.sigmoid(self._fusion(image, previous[k:k + 1], current[k:k + 1],
                                       attention[k:k + 1], distances))
            for k in range(1, self._k + 1)
        ], dim=0)
        return soft_aggregate(weights)

    # ------------------------------------------------------------------------------ helpers
    def _image(self, t: int) -> torch.Tensor:
        """Normalised, padded frame t, (1, 3, Hp, Wp) on the device."""
        frame = self._frames[t:t + 1]
        if frame.shape[-1] == 1:
            frame = np.repeat(frame, 3, axis=-1)
        return pad_to_multiple(normalize_frames(frame), self._pad).to(self._device)

    def _encode_frames(self, indices: Sequence[int]) -> FrameFeatures:
        images = torch.cat([self._image(t) for t in indices], dim=0)
        keys = self._net.encode_key(images)
        skip8, skip4 = self._net.decoder.project_skips(keys.f8, keys.f4)
        return FrameFeatures(keys.k16, keys.f16_thin, keys.f16, skip8, skip4)

    def _one_hot(self, labels: np.ndarray) -> torch.Tensor:
        lab = torch.from_numpy(labels.astype(np.int64))
        mask = torch.stack([(lab == k) for k in range(self._k + 1)]).float().unsqueeze(1)
        return pad_to_multiple(mask, self._pad).to(self._device)

    def _validated_index(self, index) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise InvalidInputError(f"The slice index must be an integer, got {index!r}.")
        if not 0 <= index < self.num_frames:
            raise InvalidInputError(
                f"Slice index {index} is out of range: this stack has slices 0..{self.num_frames - 1}."
            )
        return int(index)

    def _validated_label_stack(self, labels) -> np.ndarray:
        stack = np.asarray(labels)
        expected = (self.num_frames,) + self.frame_shape
        if stack.shape != expected:
            raise InvalidInputError(
                f"The label maps to seed with have shape {stack.shape}, but this stack is {expected} "
                "(frames, rows, columns): give one label map per frame."
            )
        if stack.dtype.kind not in "iub":
            raise InvalidInputError(f"The label maps to seed with must be integers, got {stack.dtype}.")
        return self._labels_in_range(stack, "The label maps to seed with hold")

    def _validated_labels(self, label_map) -> np.ndarray:
        labels = np.asarray(label_map)
        if labels.shape != self.frame_shape:
            raise InvalidInputError(
                f"The annotation has shape {labels.shape}, but slices here are {self.frame_shape} "
                "(rows, columns): give one label map of the slice's size."
            )
        if labels.dtype.kind == "f":
            if not np.isfinite(labels).all() or not np.array_equal(labels, np.round(labels)):
                raise InvalidInputError("The annotation must hold whole label values 0..K, "
                                        "found fractional, NaN or infinite values.")
        elif labels.dtype.kind not in "iub":
            raise InvalidInputError(f"The annotation must be a label map of integers, got {labels.dtype}.")
        return self._labels_in_range(labels, "The annotation holds")

    def _labels_in_range(self, labels: np.ndarray, what: str) -> np.ndarray:
        """A copy of ``labels`` in the state's label type, or InvalidInputError (``what`` starts
        the message) when a label is not 0..K."""
        if labels.size and (labels.min() < 0 or labels.max() > self._k):
            raise InvalidInputError(
                f"{what} labels {int(labels.min())}..{int(labels.max())}, but this propagator "
                f"tracks objects 1..{self._k} (0 is background)."
            )
        return labels.astype(np.uint8 if self._k < 256 else np.int32, copy=True)


class _Journal:
    """In-place writes into the (K+1, T, Hp, Wp) probability state, undoable until committed.
    The undo keeps a frame's previous values only if it held results before (``ever_written``);
    other frames go back to the initial state (background 1e-7, objects 0)."""

    def __init__(self, prob: torch.Tensor, ever_written: np.ndarray):
        self._prob = prob
        self._ever = ever_written
        self._undo: Dict[int, Optional[torch.Tensor]] = {}

    def current(self, t: int) -> torch.Tensor:
        """Frame t's probabilities (K+1, Hp, Wp) as the running sequence has left them (a view)."""
        return self._prob[:, t]

    def write(self, t: int, value: torch.Tensor) -> None:
        if t not in self._undo:
            self._undo[t] = self._prob[:, t].clone() if self._ever[t] else None
        self._prob[:, t] = value

    def rollback(self) -> None:
        for t, old in self._undo.items():
            if old is None:
                self._prob[0, t] = 1e-7
                self._prob[1:, t] = 0
            else:
                self._prob[:, t] = old
        self._undo.clear()

    def commit(self) -> None:
        for t in self._undo:
            self._ever[t] = True
        self._undo.clear()


class _Visits:
    """The frames whose features a call reads, in order, each with whether that read needs
    ``f16`` (an annotated frame, or a frame that becomes a memory value): the cache keeps
    those read soonest (evicting the one read furthest ahead, Belady's rule), encodes the next
    missing ones in the same batch, and keeps ``f16`` only for frames that will need it."""

    #: how far ahead the cache looks; beyond that a frame counts as not needed again
    LOOKAHEAD = 1024

    def __init__(self, reads: Sequence[Tuple[int, bool]]):
        self._frames = [frame for frame, _ in reads]
        self._needs_f16 = [bool(needs) for _, needs in reads]
        self._next = 0

    def after(self, frame: int) -> Tuple[List[int], List[int], bool]:
        """(the visits after this one, those of them that need ``f16``, whether this one does);
        this visit must be ``frame`` (the propagator reads in plan order)."""
        assert self._frames[self._next] == frame, "feature reads out of plan order"
        needs = self._needs_f16[self._next]
        self._next += 1
        window = slice(self._next, self._next + self.LOOKAHEAD)
        upcoming = self._frames[window]
        upcoming_f16 = [t for t, n in zip(upcoming, self._needs_f16[window]) if n]
        return upcoming, upcoming_f16, needs


def _planned_reads(plan: Sequence[PlannedInteraction], orders: Sequence[Sequence[Sequence[int]]],
                   every: int) -> List[Tuple[int, bool]]:
    """Every feature read of a call in order, each with whether it needs ``f16``: an
    interaction's annotated frame (it joins the memory), then the frames of its passes, of which
    those that join the pass's memory (``_memory_frames``) need it."""
    reads: List[Tuple[int, bool]] = []
    for planned, order in zip(plan, orders):
        reads.append((planned.index, True))
        for frames in order:
            added = set(_memory_frames(planned.index, frames, every))
            reads.extend((t, t in added) for t in frames)
    return reads


def _memory_frames(index: int, frames: Sequence[int], every: int) -> List[int]:
    """The frames of a pass from annotated frame ``index`` (visited in order ``frames``) that
    join its memory: every ``every`` frames from the last one added, never the pass's last
    frame (it would never be read)."""
    added, last_added = [], index
    for t in frames[:-1]:
        if abs(t - last_added) >= every:
            added.append(t)
            last_added = t
    return added


def _pass_orders(plan: Sequence[PlannedInteraction], annotated_last: Optional[int]) -> List[List[List[int]]]:
    """For each interaction, its non-empty passes (frame lists) in running order: first the
    pass towards the previous interaction's frame, whose features are still cached, and last
    the one towards the next interaction's frame, which will need them again."""
    orders = []
    for number, planned in enumerate(plan):
        forward, backward = planned.forward_prefix, planned.backward_prefix
        previous = plan[number - 1].index if number else annotated_last
        following = plan[number + 1].index if number + 1 < len(plan) else None
        if previous is not None and previous != planned.index:
            backward_first = previous < planned.index
        elif following is not None and following != planned.index:
            backward_first = following > planned.index
        else:
            backward_first = False
        passes = [backward, forward] if backward_first else [forward, backward]
        orders.append([frames for frames in passes if frames])
    return orders


def _validated_frames(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim == 3:
        return volume_to_frames(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InvalidInputError(
            f"Expected (T, H, W) intensities or (T, H, W, 3) uint8 frames, got {frames.shape} "
            f"{frames.dtype}."
        )
    if min(frames.shape[:3]) < 1:
        raise InvalidInputError(f"The stack is empty: shape {frames.shape}.")
    return np.ascontiguousarray(frames)
