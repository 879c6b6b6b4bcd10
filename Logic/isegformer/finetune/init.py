"""Where fine-tuning starts: the official checkpoint, a previous fine-tune, or scratch.

"Scratch" means a randomly initialised network, optionally with its Swin backbone taken from an
ImageNet classification checkpoint the user has locally (the paper pretrains on ImageNet-21k).
Such checkpoints come in two layouts, the official Swin repository's (``{'model': ...}``,
patch merging at the end of stage i) and timm's (patch merging at the start of stage i+1); both
are mapped onto our backbone, and only tensors whose shapes match are taken.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..checkpoint import check_finite, load_checkpoint
from ..click_engine.build import VARIANTS, build_isegformer, load_click_model
from ..click_engine.model import ClickModelConfig, ISegFormer
from ..errors import CheckpointError, InvalidInputError

log = logging.getLogger(__name__)

#: The registry entry of the official checkpoint, per variant.
OFFICIAL_MODELS = {"swin_base": "isegformer_swin_base_oaizib"}


@dataclass
class InitReport:
    """What the starting weights were: for the log, the CLI and finetune.json."""

    source: str
    loaded: int = 0
    skipped: list[str] = field(default_factory=list)

    def describe(self) -> str:
        text = f"start: {self.source}"
        if self.loaded:
            text += f" ({self.loaded} backbone tensors loaded"
            text += f", {len(self.skipped)} skipped)" if self.skipped else ")"
        return text


def initial_model(
    init: str,
    variant: str | ClickModelConfig = "swin_base",
    imagenet_checkpoint: Optional[str | os.PathLike] = None,
) -> tuple[ISegFormer, InitReport]:
    """The network to fine-tune (on the CPU, train mode) and a report of where it came from.

    ``init`` is ``"official"`` (the registry's checkpoint of ``variant``, downloaded if needed),
    ``"scratch"`` (random; with ``imagenet_checkpoint``, an ImageNet Swin backbone), or the path
    of a checkpoint (official or a previous fine-tune).
    """
    if init == "official":
        name = OFFICIAL_MODELS.get(variant if isinstance(variant, str) else "")
        if name is None:
            raise InvalidInputError(
                f"There is no official checkpoint of the {variant!r} variant; official weights "
                f"exist for {sorted(OFFICIAL_MODELS)}. Use --init scratch or --init PATH."
            )
        from ..weights import resolve_model

        path = resolve_model(name, kind="click_model")
        return load_click_model(path, device="cpu").train(), InitReport(f"official ({name})")
    if init == "scratch":
        model = build_isegformer(variant).train()
        report = InitReport("scratch (random weights)")
        if imagenet_checkpoint is not None:
            report = load_imagenet_backbone(model, imagenet_checkpoint)
        return model, report
    path = Path(init).expanduser()
    if not path.is_file():
        raise InvalidInputError(
            f"--init {init!r} is neither 'official', 'scratch' nor an existing checkpoint file."
        )
    model = load_click_model(path, device="cpu").train()
    if not isinstance(variant, ClickModelConfig) and variant in VARIANTS \
            and model.config != VARIANTS[variant]:
        log.info("%s is a %s network; --variant %s is ignored.", path, model.config.name, variant)
    return model, InitReport(f"checkpoint {path}")


def _backbone_key(key: str, timm_layout: bool) -> Optional[str]:
    for prefix in ("module.", "backbone.", "encoder."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    if not key.startswith(("patch_embed.", "layers.")):
        return None  # classifier head, final norm, ...
    if key.endswith(("relative_position_index", "attn_mask")):
        return None  # fixed tables, recomputed by our model
    if timm_layout:
        # timm >= 0.9 keeps stage i's patch merging at the start of stage i+1.
        m = re.match(r"layers\.(\d+)\.downsample\.(.*)$", key)
        if m:
            key = f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}"
    return "backbone." + key


def _read_imagenet_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":  # timm's Hugging Face downloads; safetensors comes with timm
        if not path.is_file():
            raise CheckpointError(f"{path} does not exist. Give the ImageNet checkpoint's path.")
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # the library raises several types for a damaged file
            raise CheckpointError(f"{path} could not be read as safetensors ({err}).") from err
    return load_checkpoint(path, advice="Give a Swin Transformer ImageNet checkpoint (.pth).")["state_dict"]


def load_imagenet_backbone(model: ISegFormer, path: str | os.PathLike) -> InitReport:
    """Copy the Swin backbone tensors of an ImageNet checkpoint into ``model`` where shapes match."""
    state = _read_imagenet_state(Path(path).expanduser())
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path} is not a state dict of named tensors.")
    check_finite(state, str(path), "Give an intact ImageNet checkpoint.")
    # Only timm's layout has no patch merging in stage 0 but has it in a later stage.
    has_merging = {int(m.group(1)) for k in state
                   if (m := re.search(r"layers\.(\d+)\.downsample\.", k))}
    timm_layout = bool(has_merging) and 0 not in has_merging
    ours = model.state_dict()
    updates: dict[str, torch.Tensor] = {}
    skipped = []
    for key, tensor in state.items():
        target = _backbone_key(key, timm_layout)
        if target is None:
            continue
        if target in ours and tuple(ours[target].shape) == tuple(tensor.shape):
            updates[target] = tensor.to(ours[target].dtype)
        else:
            skipped.append(key)
    if not updates:
        raise CheckpointError(
            f"{path}: no tensor fits the {model.config.name} Swin backbone (embed "
            f"{model.config.embed_dim}, window {model.config.window}). Give an ImageNet checkpoint "
            "of the same Swin size, e.g. Swin-B window 12 for --variant swin_base."
        )
    model.load_state_dict(updates, strict=False)
    backbone_total = sum(1 for k in ours if k.startswith("backbone."))
    log.info("ImageNet backbone: %d of %d backbone tensors loaded from %s; %d skipped.",
             len(updates), backbone_total, path, len(skipped))
    return InitReport(f"scratch with the ImageNet backbone {Path(path).name}", len(updates), skipped)
