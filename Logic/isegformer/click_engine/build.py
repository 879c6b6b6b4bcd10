"""Building iSegFormer networks and loading their weights.

Official checkpoints load unchanged: our parameter names are the official ones. Entries the
reference saves but never uses (``backbone.patch_embed_coords.*``, ``maps_transform.*``) are
dropped, and the fixed ``relative_position_index`` tables are checked against ours and dropped.
The variant (Swin-B, Swin-L, tiny, or any other shape) is read from the tensors' shapes, never
from the file name. Anything else missing, extra or mis-shaped is refused, by name.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

import torch

from ..checkpoint import (
    check_finite,
    compare_state_dict,
    describe_keys,
    load_checkpoint,
    save_checkpoint,
)
from ..device import resolve_device
from ..errors import CheckpointError, InvalidInputError
from .model import ClickModelConfig, ISegFormer
from .swin import relative_position_index

log = logging.getLogger(__name__)

VARIANTS: dict[str, ClickModelConfig] = {
    "swin_base": ClickModelConfig(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32),
                                  head_channels=256, name="swin_base"),
    "swin_large": ClickModelConfig(embed_dim=192, depths=(2, 2, 18, 2),
                                   num_heads=(6, 12, 24, 48), head_channels=256,
                                   name="swin_large"),
    "tiny": ClickModelConfig(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8),
                             head_channels=64, name="tiny"),
}

# Saved by the reference, never used by its forward pass.
UNUSED_PREFIXES = ("backbone.patch_embed_coords.", "maps_transform.")
_INDEX_SUFFIX = ".attn.relative_position_index"
_OTHER_MODELS = {  # key prefixes of other models, to say what a wrong file is
    "key_encoder.": "an STCN propagation network",
    "value_encoder.": "an STCN propagation network",
    "attn.": "a MiVOS fusion network",
    "feature_extractor.": "an RITM HRNet model",
}
# Settings of the reference model that this implementation reproduces; a checkpoint whose
# config says otherwise was trained with a different input and would silently misbehave.
_REQUIRED_FLAGS = {"use_disks": True, "with_prev_mask": True, "use_deep_fusion": True,
                   "use_rgb_conv": False, "use_naive_concat": False, "binary_prev_mask": False,
                   "clicks_groups": None}


def build_isegformer(variant: str | ClickModelConfig = "swin_base") -> ISegFormer:
    """A randomly initialised iSegFormer in eval mode: "swin_base", "swin_large" or "tiny"."""
    if isinstance(variant, ClickModelConfig):
        config = variant
    else:
        if variant not in VARIANTS:
            raise InvalidInputError(
                f"Unknown iSegFormer variant {variant!r}; choose one of {sorted(VARIANTS)}."
            )
        config = VARIANTS[variant]
    return ISegFormer(config).eval()


def _not_isegformer(state_dict: Mapping[str, torch.Tensor], missing: str) -> CheckpointError:
    guesses = {what for prefix, what in _OTHER_MODELS.items()
               if any(k.startswith(prefix) for k in state_dict)}
    looks_like = f" It looks like {' or '.join(sorted(guesses))}." if guesses else ""
    return CheckpointError(
        f"These weights are not an iSegFormer click model: there is no '{missing}'.{looks_like} "
        f"Its keys begin: {describe_keys(list(state_dict), 6)}. Use an iSegFormer checkpoint "
        "(for example imagenet21k_pretrain_oaizib_finetune_swin_base_epoch_54.pth)."
    )


def detect_config(state_dict: Mapping[str, torch.Tensor]) -> ClickModelConfig:
    """The network shape that the tensors of an iSegFormer state dict determine."""
    embed_key = "backbone.patch_embed.proj.weight"
    if embed_key not in state_dict:
        raise _not_isegformer(state_dict, embed_key)
    embed = state_dict[embed_key]
    if embed.ndim != 4 or embed.shape[1] != 3 or embed.shape[2] != embed.shape[3]:
        raise CheckpointError(
            f"'{embed_key}' has shape {tuple(embed.shape)}; iSegFormer's patch embedding is "
            "(C, 3, p, p). These weights are of another model."
        )
    if min(embed.shape) < 1:
        raise CheckpointError(
            f"'{embed_key}' has shape {tuple(embed.shape)}: an empty patch embedding, which no "
            "network has. The file is damaged or was crafted; use the official checkpoint."
        )
    depths: dict[int, int] = Counter()
    for key in state_dict:
        m = re.fullmatch(r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.norm1\.weight", key)
        if m:
            depths[int(m.group(1))] += 1
    stages = sorted(depths)
    if not stages or stages != list(range(len(stages))):
        raise CheckpointError(
            f"Cannot tell the Swin stages from these weights (stage indices found: {stages}); "
            "the checkpoint is incomplete or of another model."
        )
    heads, window = [], None
    for stage in stages:
        key = f"backbone.layers.{stage}.blocks.0.attn.relative_position_bias_table"
        if key not in state_dict or state_dict[key].ndim != 2:
            raise CheckpointError(f"The weights lack a 2D '{key}'; the checkpoint is incomplete.")
        rows, stage_heads = state_dict[key].shape
        side = math.isqrt(rows)
        if side * side != rows or side % 2 == 0:
            raise CheckpointError(
                f"'{key}' has {rows} rows, which is not (2*window-1)^2; not a Swin checkpoint."
            )
        window = window or (side + 1) // 2
        heads.append(int(stage_heads))
    fc1 = state_dict.get("backbone.layers.0.blocks.0.mlp.fc1.weight")
    head_conv = state_dict.get("head.fusion_conv.conv.weight")
    if fc1 is None or head_conv is None:
        raise _not_isegformer(
            state_dict, "head.fusion_conv.conv.weight" if fc1 is not None
            else "backbone.layers.0.blocks.0.mlp.fc1.weight")
    embed_dim = int(embed.shape[0])
    shape = ClickModelConfig(
        embed_dim=embed_dim, depths=tuple(depths[s] for s in stages), num_heads=tuple(heads),
        window=int(window), patch_size=int(embed.shape[2]),
        mlp_ratio=float(fc1.shape[0]) / embed_dim, head_channels=int(head_conv.shape[0]),
    )
    validate_click_config(shape, "These weights")
    for name, known in VARIANTS.items():
        if known == shape:
            return known
    log.info("The weights are a custom iSegFormer shape: %s", shape)
    return shape


MAX_STAGES = 8
MAX_BLOCKS_PER_STAGE = 64


def validate_click_config(config: ClickModelConfig, source: str = "This network shape") -> None:
    """Refuse a shape no iSegFormer has: zero or negative sizes, head counts that do not divide
    their stage's channels, rates outside [0, 1). A checkpoint crafted with a 0x0 patch
    embedding would otherwise load and fail at the first click with a division by zero."""
    problems = []
    for field_name in ("embed_dim", "window", "patch_size", "head_channels"):
        value = getattr(config, field_name)
        if type(value) is not int or value < 1:
            problems.append(f"{field_name} is {value!r} (must be a positive integer)")
    depths, heads = tuple(config.depths), tuple(config.num_heads)
    if not 1 <= len(depths) <= MAX_STAGES or len(heads) != len(depths):
        problems.append(f"{len(depths)} stage depths and {len(heads)} head counts (must be "
                        f"equal, 1 to {MAX_STAGES})")
    else:
        for stage, (depth, count) in enumerate(zip(depths, heads)):
            if type(depth) is not int or not 1 <= depth <= MAX_BLOCKS_PER_STAGE:
                problems.append(f"stage {stage} has {depth!r} blocks (1 to "
                                f"{MAX_BLOCKS_PER_STAGE})")
            if type(count) is not int or count < 1:
                problems.append(f"stage {stage} has {count!r} attention heads")
            elif type(config.embed_dim) is int and config.embed_dim >= 1 \
                    and (config.embed_dim * 2 ** stage) % count:
                problems.append(f"stage {stage}'s {config.embed_dim * 2 ** stage} channels do "
                                f"not split into {count} heads")
    for field_name, low, high in (("mlp_ratio", 0.0, 64.0), ("click_radius", 0.0, 1e4)):
        value = getattr(config, field_name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) \
                or not (math.isfinite(value) and low < value <= high):
            problems.append(f"{field_name} is {value!r} (must be in ({low:g}, {high:g}])")
    for field_name in ("drop_path_rate", "dropout"):
        value = getattr(config, field_name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) \
                or not 0.0 <= value < 1.0:
            problems.append(f"{field_name} is {value!r} (must be in [0, 1))")
    if problems:
        raise CheckpointError(
            f"Not a usable iSegFormer shape ({source}): {'; '.join(problems)}. The file is "
            "damaged or was crafted; use the official checkpoint or one saved by this package."
        )


def _check_reference_config(config: Any) -> float | None:
    """Refuse a reference config whose settings we do not reproduce; return its click radius."""
    if not isinstance(config, Mapping) or not isinstance(config.get("params"), Mapping):
        return None
    if str(config.get("class", "")).startswith("isegformer."):
        return _radius(config["params"].get("click_radius"))
    params = config["params"]
    cls = str(config.get("class", ""))
    if cls and not cls.endswith("SwinformerModel"):
        raise CheckpointError(
            f"This checkpoint is a {cls}, not an iSegFormer (SwinformerModel); only the "
            "Swin-based iSegFormer is supported."
        )
    for flag, wanted in _REQUIRED_FLAGS.items():
        entry = params.get(flag)
        if isinstance(entry, Mapping) and "value" in entry and entry["value"] != wanted:
            raise CheckpointError(
                f"This checkpoint was trained with {flag}={entry['value']!r}, but this "
                f"implementation reproduces the paper's model ({flag}={wanted!r}); its "
                "predictions would be wrong, so it is refused."
            )
    radius = params.get("norm_radius")
    return _radius(radius.get("value")) if isinstance(radius, Mapping) else None


def _radius(value: Any) -> float | None:
    """A click radius from a checkpoint's config (checked later by validate_click_config)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:  # an integer beyond float range
        return float("inf")


def prepare_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: Any = None
) -> tuple[ClickModelConfig, dict[str, torch.Tensor]]:
    """Detect the shape and drop the unused entries: returns (config, state dict for ISegFormer).

    Raises CheckpointError naming every missing, unexpected or mis-shaped key.
    """
    if not state_dict:
        raise CheckpointError("The checkpoint's state dict is empty.")
    radius = _check_reference_config(config)  # first: a config naming another model says most
    model_config = detect_config(state_dict)
    if radius is not None and radius != model_config.click_radius:
        model_config = dataclasses.replace(model_config, click_radius=radius)
        validate_click_config(model_config, "This checkpoint's settings")

    kept: dict[str, torch.Tensor] = {}
    dropped: Counter[str] = Counter()
    expected_index = relative_position_index(model_config.window)
    for key, tensor in state_dict.items():
        if key.startswith(UNUSED_PREFIXES):
            dropped[next(p for p in UNUSED_PREFIXES if key.startswith(p)) + "*"] += 1
        elif key.endswith(_INDEX_SUFFIX):
            if tuple(tensor.shape) != tuple(expected_index.shape) or not torch.equal(
                tensor.to(torch.int64), expected_index
            ):
                raise CheckpointError(
                    f"'{key}' differs from the standard Swin relative position table for window "
                    f"{model_config.window}; this checkpoint is not of the model implemented here."
                )
            dropped["*" + _INDEX_SUFFIX + " (checked, recomputed)"] += 1
        else:
            kept[key] = tensor
    if dropped:
        log.info("Dropped checkpoint entries the model does not use: %s",
                 ", ".join(f"{name} ({n})" for name, n in sorted(dropped.items())))

    with torch.device("meta"):
        expected = {k: v.shape for k, v in ISegFormer(model_config).state_dict().items()}
    mismatch = compare_state_dict(kept, expected)
    if not mismatch.fits:
        raise CheckpointError(
            f"The weights do not fit an iSegFormer {model_config.name} "
            f"(embed {model_config.embed_dim}, depths {list(model_config.depths)}): "
            + mismatch.describe()
            + ". The file is incomplete, of another model, or of another version; use the "
            "official checkpoint or one saved by this package."
        )
    not_float = [k for k, v in kept.items() if not v.is_floating_point()]
    if not_float:
        raise CheckpointError(f"These weights are not floating point: {describe_keys(not_float)}.")
    return model_config, kept


def load_click_model(
    source: str | os.PathLike | Mapping[str, Any], device: str | torch.device = "auto"
) -> ISegFormer:
    """An iSegFormer in eval mode on ``device``, with the weights of ``source``.

    ``source`` is a checkpoint file (official ``{'state_dict', 'config'}``, a plain state dict,
    or one saved by :func:`save_click_model`), or an already loaded state dict / checkpoint dict.
    """
    config = None
    if isinstance(source, (str, os.PathLike)):
        checkpoint = load_checkpoint(source)
        state_dict, config = checkpoint["state_dict"], checkpoint["config"]
    elif isinstance(source, Mapping):
        if "state_dict" in source and isinstance(source["state_dict"], Mapping):
            state_dict, config = source["state_dict"], source.get("config")
        else:
            state_dict = source
        if not all(isinstance(k, str) for k in state_dict):
            raise CheckpointError("A state dict's keys must be parameter names (strings).")
        bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise CheckpointError(f"These state dict entries are not tensors: {describe_keys(bad)}.")
    else:
        raise InvalidInputError(
            f"load_click_model needs a checkpoint path or a state dict, got {type(source).__name__}."
        )
    model_config, state_dict = prepare_state_dict(state_dict, config)
    check_finite(state_dict, str(source) if isinstance(source, (str, os.PathLike))
                 else "The given state dict")
    target = resolve_device(device)
    model = ISegFormer(model_config)
    model.load_state_dict(state_dict, strict=True)
    log.info("Loaded iSegFormer %s (%d tensors) onto %s.", model_config.name, len(state_dict), target)
    return model.eval().to(target)


def save_click_model(model: ISegFormer, path: str | os.PathLike) -> Path:
    """Save in the official layout, so that :func:`load_click_model` reads it back."""
    return save_checkpoint(path, model.state_dict(), model.config.to_plain())
