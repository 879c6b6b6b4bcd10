"""The reference's propagation (iSegFormer v1.0, maskprop/MiVOS) timed on propagation.py's work.

The counterpart of ``propagation.py``: the same synthetic 160 x 384 x 384 volume, the same 5
annotated slices, then the same correction of the middle one, with the same random weights
(``STCNNetwork()`` and ``FusionNet()`` after ``torch.manual_seed(0)``, loaded into the
reference's ``PropagationNetwork`` and ``FusionNet``; speed does not depend on them). The
reference runs as its own OAI-ZIB experiment ran it (``experiments/test_maskprop.ipynb``):
``InferenceCore(prop, fusion, frames, 1, mem_freq=5, mem_profile=0)`` on the CPU, then one
``interact`` per annotated slice, one after another, outside ``torch.no_grad`` as there (the
reference turns gradients off only around its two passes). Each run is a fresh process, after
a small warm-up in it; the table has propagation.py's columns.

Nothing of the reference is copied: ``inference_core``, ``model.propagation.prop_net``,
``model.fusion_net`` and ``interact.interactive_utils.images_to_torch`` are imported from the
checkout given by ``--reference`` (an iSegFormer v1.0 checkout or its ``maskprop/MiVOS``
folder). Import-time stand-ins, none of which computes anything that is timed:

* ``cv2`` (not installed here) and ``matplotlib.pyplot`` are empty modules: the reference's
  ``interactive_utils`` imports them for its GUI helpers, which are not called;
* the ImageNet downloads of the ResNet trunks (``mod_resnet.resnet18`` and torchvision's
  ``resnet50`` with ``pretrained=True``) are turned off: every weight is overwritten anyway.

No CUDA call needs patching: with ``device='cpu'`` the inference core calls none (only its
unused Gaussian-kernel path would). The intensity-to-uint8 step of the reference's
``load_volume`` (percentiles, clipping, scaling) is done by this package's
``volume_to_frames``, which the golden tests check against it, inside the timed region as in
``propagation.py``; the file read of ``load_volume`` is left out on both sides.

    PYTHONPATH=Logic .venv/bin/python benchmarks/reference_propagation.py --reference ~/src/iSegFormer
    PYTHONPATH=Logic .venv/bin/python benchmarks/reference_propagation.py --reference ~/src/iSegFormer \\
        --slices 16 --size 128 --check        # agreement with this package, same weights, no timing

Side by side with this package (interleaved fresh processes, ratios of the medians):

    PYTHONPATH=Logic .venv/bin/python benchmarks/propagation.py --engines ours reference \\
        --reference ~/src/iSegFormer --modes batch sequential --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import propagation as ours  # noqa: E402  (the same volume, slices and table)


def mivos_folder(checkout: Path) -> Path:
    checkout = Path(checkout).expanduser().resolve()
    for folder in (checkout / "maskprop" / "MiVOS", checkout):
        if (folder / "inference_core.py").is_file() and (folder / "model" / "propagation" / "prop_net.py").is_file():
            return folder
    raise SystemExit(f"{checkout} is neither an iSegFormer v1.0 checkout nor its maskprop/MiVOS folder "
                     "(no inference_core.py and model/propagation/prop_net.py): "
                     "git clone -b v1.0 https://github.com/uncbiag/iSegFormer")


def import_reference(checkout: Path) -> dict[str, Any]:
    """The reference's InferenceCore, PropagationNetwork, FusionNet and images_to_torch."""
    folder = mivos_folder(checkout)
    for name in ("cv2", "matplotlib.pyplot"):
        if name == "cv2" or name not in sys.modules:
            sys.modules[name] = types.ModuleType(name)
    sys.path.insert(0, str(folder))
    import torchvision.models

    from model.propagation import mod_resnet, modules

    def no_download(build: Callable) -> Callable:
        def built(pretrained: bool = False, *args: Any, **kwargs: Any):
            return build(*args, **kwargs)
        return built

    resnet18 = mod_resnet.resnet18
    mod_resnet.resnet18 = lambda pretrained=True, extra_chan=0: resnet18(False, extra_chan)
    modules.models = types.SimpleNamespace(resnet50=no_download(torchvision.models.resnet50))
    from inference_core import InferenceCore
    from interact.interactive_utils import images_to_torch
    from model.fusion_net import FusionNet
    from model.propagation.prop_net import PropagationNetwork

    return dict(InferenceCore=InferenceCore, PropagationNetwork=PropagationNetwork,
                FusionNet=FusionNet, images_to_torch=images_to_torch)


def reference_networks(ref: dict[str, Any]):
    """The reference's networks with propagation.py's random weights (seed 0), and ours."""
    import torch

    from isegformer.propagation.stcn import FusionNet, STCNNetwork

    torch.manual_seed(0)
    network, fusion = STCNNetwork().eval(), FusionNet().eval()
    prop_net = ref["PropagationNetwork"]().eval()
    prop_net.load_state_dict(network.state_dict(), strict=True)
    fuse_net = ref["FusionNet"]().eval()
    fuse_net.load_state_dict(fusion.state_dict(), strict=True)
    return prop_net, fuse_net, network, fusion


def one_hot(labels: np.ndarray):
    """(2, 1, H, W) float32 background/object mask, the reference's ``interact`` input."""
    import torch

    obj = torch.from_numpy(labels.astype(np.float32))
    return torch.stack([1 - obj, obj]).unsqueeze(1)


def counted(method: Callable, counter: dict, key: str) -> Callable:
    """``method`` that counts its calls (an instance attribute: the class is not changed)."""
    def call(*args: Any, **kwargs: Any):
        counter[key] += 1
        return method(*args, **kwargs)
    return call


def new_core(ref: dict[str, Any], prop_net, fuse_net, volume: np.ndarray, counter: dict):
    from isegformer.propagation.stcn.preprocess import volume_to_frames

    frames = ref["images_to_torch"](volume_to_frames(volume), device="cpu")
    core = ref["InferenceCore"](prop_net, fuse_net, frames, 1, mem_freq=5,
                                mem_profile=0, device="cpu")
    core.prop_net = types.SimpleNamespace(
        encode_key=counted(prop_net.encode_key, counter, "encoded"),
        segment_with_query=counted(prop_net.segment_with_query, counter, "decoded"),
        encode_value=prop_net.encode_value, get_attention=prop_net.get_attention)
    return core


def run_one(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    ref = import_reference(args.reference)
    label = ours.load_label(args.label, args.slices[0], args.size)
    volume = ours.synthetic_volume(label)
    truth = (label == ours.OBJECT_LABEL).astype(np.uint8)
    del label
    prop_net, fuse_net, network, fusion = reference_networks(ref)
    del network, fusion
    counter = {"encoded": 0, "decoded": 0}

    # warm-up on a tiny stack (allocator, kernels), not timed; 80x80, not propagation.py's
    # 64x64, as the reference's top-20 read needs at least 20 positions (5x5) per memory frame
    small = new_core(ref, prop_net, fuse_net, volume[:6, :80, :80], counter)
    small.interact(one_hot(truth[3, :80, :80]), 3)
    del small
    counter.update(encoded=0, decoded=0)

    load = os.getloadavg()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    core = new_core(ref, prop_net, fuse_net, volume, counter)
    slices = ours.annotated_slices(volume.shape[0])
    interactions = []
    for index in slices:
        start = time.perf_counter()
        labels = core.interact(one_hot(truth[index]), index)
        interactions.append(time.perf_counter() - start)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    decoded, encoded = counter["decoded"], counter["encoded"]

    middle = slices[len(slices) // 2]
    corrected = truth[middle].copy()
    corrected[:, : corrected.shape[1] // 2] = 0  # the user removes half of the object
    wall1 = time.perf_counter()
    labels = core.interact(one_hot(corrected), middle)
    correction_wall = time.perf_counter() - wall1

    inter = np.logical_and(labels == 1, truth == 1).sum()
    dice = 2 * inter / max(1, (labels == 1).sum() + truth.sum())
    return {
        "mode": "sequential", "load_average": load, "slices": int(volume.shape[0]), "size": list(volume.shape[1:]),
        "annotated": slices, "seconds": wall, "cpu_seconds": cpu, "interaction_seconds": interactions,
        "frames_decoded": decoded, "frames_encoded": encoded, "slices_per_second": decoded / wall,
        "correction_seconds": correction_wall, "correction_frames": counter["decoded"] - decoded,
        "cache_frames": core.k_buf_size + 1,  # the key buffer is flushed when it exceeds its size
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "dice_random_weights": float(dice),
    }


def check_agreement(args: argparse.Namespace) -> int:
    """This package and the reference on the same small volume and weights, in one process:
    after each interaction, the largest probability difference and the pixels labelled
    differently. The correction is left out: there this package replaces the slice's certain
    memory entry where the reference keeps both (a documented difference)."""
    import torch

    from isegformer.propagation.stcn import STCNPropagator
    from isegformer.propagation.stcn.preprocess import unpad

    torch.set_num_threads(args.threads)
    ref = import_reference(args.reference)
    label = ours.load_label(args.label, args.slices[0], args.size)
    volume = ours.synthetic_volume(label)
    truth = (label == ours.OBJECT_LABEL).astype(np.uint8)
    prop_net, fuse_net, network, fusion = reference_networks(ref)
    core = new_core(ref, prop_net, fuse_net, volume, {"encoded": 0, "decoded": 0})
    mine = STCNPropagator.from_volume(volume, 0, 1, network, fusion, device="cpu")
    print(f"{volume.shape[0]}x{volume.shape[1]}x{volume.shape[2]}, {args.threads} threads; "
          f"ours: {type(mine).__name__} defaults (winograd on the CPU); reference: {mivos_folder(args.reference)}")
    worst = 0.0
    done = []
    for index in ours.annotated_slices(volume.shape[0]):
        done.append(index)
        theirs_labels = core.interact(one_hot(truth[index]), index)
        mine_prob = mine.annotate(index, truth[index])
        theirs_prob = unpad(core.prob[:, :, 0], core.pad).numpy()
        diff = float(np.abs(mine_prob - theirs_prob).max())
        worst = max(worst, diff)
        changed = int((mine.labels() != theirs_labels).sum())
        # random weights can saturate the sigmoid: say how much of the volume is not
        propagated = np.delete(theirs_prob[1], done, axis=0)
        uncertain = float(((propagated > 0.01) & (propagated < 0.99)).mean())
        spread = float(propagated.std())
        print(f"  after slice {index:>3}: max |prob ours - reference| {diff:.2e}, "
              f"pixels labelled differently {changed} of {theirs_labels.size}; "
              f"reference's propagated object probabilities: {uncertain:.1%} in (0.01, 0.99), "
              f"std {spread:.3f}")
    print(f"largest probability difference {worst:.2e}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, required=True,
                        help="iSegFormer v1.0 checkout, or its maskprop/MiVOS folder")
    parser.add_argument("--slices", type=int, nargs="+", default=[160])
    parser.add_argument("--size", type=int, default=None, help="centred in-plane crop (default: the full 384x384)")
    parser.add_argument("--label", type=Path, default=ours.DEFAULT_LABEL)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=1, help="fresh-process runs per slice count")
    parser.add_argument("--modes", nargs="+", choices=("sequential",), default=["sequential"],
                        help="the reference's only protocol: one interaction after another")
    parser.add_argument("--check", action="store_true",
                        help="compare with this package (same weights) instead of timing")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    mivos_folder(args.reference)
    if args.child:
        print(json.dumps(run_one(args)))
        return 0
    if args.check:
        return check_agreement(args)
    args.engines, args.winograd, args.cache_mib = ["reference"], "default", None
    return ours.run_table(args)


if __name__ == "__main__":
    sys.exit(main())
