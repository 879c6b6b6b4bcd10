"""The opt-in fast CPU mode of the click model: int8 linear layers (dynamic quantization).

About two thirds of a CPU click is the Swin blocks' linear layers, which float32 already runs
near the processor's peak. ``torch.ao.quantization.quantize_dynamic`` stores their weights as
int8 (one scale per output channel: on the reference's NoC cases its masks were closer to
float32 than with one scale per tensor) and quantizes each layer's input on the fly, so the
matrix products run in 8-bit integers (fbgemm on x86, qnnpack on ARM). Everything else (attention, norms, the decoder,
the click disks) stays float32.

The result is NOT the reference's. Measured: one click's probabilities move by about 1e-3
(Swin-B, random weights) to 3e-2 (the golden trained tiny model), and as each click's
probability feeds the next, the simulated user's click sequences part ways after a few clicks
(see the README's *The click model and checkpoint files*, and
``benchmarks/fast_cpu_agreement.py``). That is why it is opt-in
(``ClickPredictor(..., precision="int8")``) and never the default.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from ..errors import InvalidInputError

#: Quantized engines able to run dynamic int8 linear layers, best first.
_ENGINES = ("x86", "fbgemm", "qnnpack")


def quantized_engine() -> str:
    """The quantized engine to use on this machine; raises when torch has none."""
    supported = torch.backends.quantized.supported_engines
    for engine in _ENGINES:
        if engine in supported:
            return engine
    raise InvalidInputError(
        "This PyTorch build has no int8 engine (fbgemm, x86 or qnnpack), so precision='int8' "
        f"cannot run here (supported: {supported}); use the float32 precision."
    )


def quantize_linear_layers(model: nn.Module) -> nn.Module:
    """A copy of ``model`` on the CPU whose ``nn.Linear`` layers compute in int8.

    The input model is left as it was (it may be shared with a float32 predictor). The copy is
    for inference only: its int8 layers have no gradients.
    """
    engine = quantized_engine()
    if torch.backends.quantized.engine != engine:
        torch.backends.quantized.engine = engine
    model = copy.deepcopy(model).to("cpu").eval()
    with warnings.catch_warnings():
        # torch >= 2.10 warns that eager quantization moves to torchao; it still works and
        # torchao is not a dependency of this package.
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(
            model, {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig},
            dtype=torch.qint8, inplace=True)
    quantized.int8_engine = engine
    # One activation scale per call: the image and its flip each get their own, so that a
    # click's result does not depend on the thread count (see sample_streams.py).
    quantized.split_samples = True
    return quantized
