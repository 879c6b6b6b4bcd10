"""Run the reference iSegFormer (uncbiag/iSegFormer, branch v1.0) from a checkout, for timing.

Nothing of the reference is copied here: its ``isegm`` package is imported from the checkout
given on the command line (``git clone -b v1.0 https://github.com/uncbiag/iSegFormer``). Its
2022 code imports packages that are not installed here and that its inference never calls
(mmcv's registries and file helpers, OpenCV for the simulated clicker, tensorboard); they are
replaced by stand-ins at import time. The only stand-ins that compute are mmcv's
``ConvModule`` (a conv with bias, then an optional ReLU: mmcv 1.x for ``norm_cfg=None``) and
``BaseModule`` (an ``nn.Module``). The golden fixtures were produced the same way.

    from reference_isegformer import ReferenceClickEngine
    engine = ReferenceClickEngine("/path/to/iSegFormer", our_model.state_dict())
    engine.start(image_uint8_hw)
    probability = engine.click(y, x, positive)
"""
from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

# The settings of models/iter_mask/swinformer_base_oaizib_itermask.py; the sizes come from our
# ClickModelConfig (Swin-B there: embed 128, depths 2-2-18-2, heads 4-8-16-32, head 256).
MODEL_FLAGS = dict(use_naive_concat=False, use_rgb_conv=False, use_deep_fusion=True,
                   use_disks=True, norm_radius=5, with_prev_mask=True)


class _AnyAttribute(types.ModuleType):
    """A stand-in module: every attribute it does not define is a harmless callable."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _inert


def _inert(*args: Any, **kwargs: Any) -> Any:
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return args[0]          # used as a plain decorator
    return lambda fn=None, *a, **k: fn  # used as a decorator factory, or called


class _Registry:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def register_module(self, *args: Any, **kwargs: Any):
        return lambda cls: cls


class _BaseModule(nn.Module):
    def __init__(self, init_cfg: Any = None) -> None:
        super().__init__()


class _ConvModule(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, norm_cfg: Any = None, act_cfg: Any = "relu", **_: Any) -> None:
        super().__init__()
        if norm_cfg is not None:
            raise NotImplementedError("the stand-in ConvModule has no norm layer")
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=True)
        self.activate = act_cfg is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return torch.relu(x) if self.activate else x


def _install_stand_ins() -> None:
    def module(name: str, **attributes: Any) -> types.ModuleType:
        stub = sys.modules.get(name) or _AnyAttribute(name)
        for key, value in attributes.items():
            setattr(stub, key, value)
        sys.modules[name] = stub
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, stub)
        return stub

    module("mmcv")
    module("mmcv.cnn", ConvModule=_ConvModule, MODELS=_Registry())
    module("mmcv.cnn.bricks")
    module("mmcv.cnn.bricks.registry", ATTENTION=_Registry())
    module("mmcv.utils", Registry=_Registry)
    module("mmcv.runner", BaseModule=_BaseModule)
    module("mmcv.runner.base_module", BaseModule=_BaseModule)
    module("mmcv.fileio")
    module("mmcv.parallel")
    module("cv2")  # the reference's clicker imports it for the NoC loop; clicks are given here
    if "torch.utils.tensorboard" not in sys.modules:
        module("torch.utils.tensorboard", SummaryWriter=object)


def import_reference(checkout: str | Path) -> dict[str, Any]:
    """The reference's model, predictor, zoom-in and clicker classes, imported from ``checkout``."""
    root = Path(checkout).expanduser().resolve()
    if not (root / "isegm" / "model" / "is_swinformer_model.py").is_file():
        raise SystemExit(
            f"{root} is not an iSegFormer v1.0 checkout (no isegm/model/is_swinformer_model.py): "
            "git clone -b v1.0 https://github.com/uncbiag/iSegFormer")
    _install_stand_ins()
    sys.path.insert(0, str(root))
    # predictors/__init__ imports the BRS predictors and the HRNet model (unused here): load
    # the package without running it, so that only predictors/base.py is imported.
    predictors = types.ModuleType("isegm.inference.predictors")
    predictors.__path__ = [str(root / "isegm" / "inference" / "predictors")]
    import isegm.inference  # noqa: F401  (the parent package, before the stand-in child)
    sys.modules["isegm.inference.predictors"] = predictors
    from isegm.inference.clicker import Click, Clicker
    from isegm.inference.predictors.base import BasePredictor
    from isegm.inference.transforms import ZoomIn
    from isegm.model.is_swinformer_model import SwinformerModel
    return dict(SwinformerModel=SwinformerModel, BasePredictor=BasePredictor, ZoomIn=ZoomIn,
                Click=Click, Clicker=Clicker)


class ReferenceClickEngine:
    """The reference's NoBRS predictor (zoom-in, flip) on a Swin-B with the given weights."""

    def __init__(self, checkout: str | Path, config: Any, state_dict: Mapping[str, torch.Tensor],
                 zoom_in: Mapping[str, Any], device: str = "cpu") -> None:
        """``config``: our ClickModelConfig of the weights (their shapes are the reference's)."""
        ref = import_reference(checkout)
        self._ref = ref
        from isegm.model.modeling.transformer_helper.cross_entropy_loss import CrossEntropyLoss

        channels = [config.embed_dim * 2 ** i for i in range(len(config.depths))]
        backbone = dict(in_chans=3, in_coord_chans=3, embed_dim=config.embed_dim,
                        depths=list(config.depths), num_heads=list(config.num_heads),
                        window_size=config.window, ape=False, drop_path_rate=0.3,
                        patch_norm=True, use_checkpoint=False)
        head = dict(in_channels=channels, in_index=list(range(len(channels))),
                    channels=config.head_channels, dropout_ratio=0.1, num_classes=1,
                    loss_decode=CrossEntropyLoss(), align_corners=False)
        torch.manual_seed(0)
        net = ref["SwinformerModel"](backbone_params=backbone, head_params=head, **MODEL_FLAGS)
        missing, unexpected = net.load_state_dict(dict(state_dict), strict=False)
        unused = ("backbone.patch_embed_coords.", "maps_transform.")
        missing = [k for k in missing if not k.startswith(unused)
                   and not k.endswith("relative_position_index")]
        if missing or unexpected:
            raise SystemExit(f"weights do not fit the reference model: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        self.net = net.to(device).eval()
        self._zoom_in = dict(zoom_in)
        self.device = device
        self.predictor = None
        self.clicker = None

    def start(self, image: np.ndarray) -> None:
        """A new image (H, W) or (H, W, 3) uint8: fresh predictor state and clicks."""
        rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=-1)
        self.predictor = self._ref["BasePredictor"](
            self.net, self.device, zoom_in=self._ref["ZoomIn"](**self._zoom_in), with_flip=True)
        self.predictor.set_input_image(rgb)
        self.clicker = self._ref["Clicker"]()

    @torch.no_grad()
    def click(self, y: int, x: int, positive: bool) -> np.ndarray:
        self.clicker.add_click(self._ref["Click"](is_positive=positive, coords=(y, x)))
        return self.predictor.get_prediction(self.clicker)
