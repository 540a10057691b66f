"""The fake-quantization scheme of each target family, as a torchao PT2E quantizer.

Why torchao PT2E QAT (prepare_qat_pt2e) and not NNCF's PyTorch QAT: the LiteRT backend already
quantizes through PT2E (litert-torch's PT2EQuantizer), so one fake-quant graph library serves all four
families; a PT2E quantizer config states a scheme exactly (dtype, range, symmetric/affine, per-channel
axis), and the prepared graph keeps the student's state-dict names, so the fine-tuned weights load
back into the plain nn.Module for each backend's own INT8 writer (and its checks). torch 2.13 moved
PT2E out of torch.ao.quantization; torchao 0.18 (torchao.quantization.pt2e) is the maintained home.

Schemes (activations per-tensor, weights per-channel on axis 0, both fake-quantized with moving-average
min/max observers, which is why the final artifact is calibrated with `minmax`):
- tensorrt: symmetric int8 activations (zero point 0), symmetric int8 weights [-127, 127] (TensorRT's rules);
- onnxruntime: U8S8, uint8 affine activations, symmetric int8 weights (torchao's X86 inductor config);
- openvino: NNCF's default CPU preset (`performance`): symmetric int8 activations and weights; NNCF later
  picks unsigned for non-negative tensors, one bit the fake quant here does not model;
- litert: litert-torch's own symmetric per-channel QAT config (int8 affine activations, int8 symmetric
  weights), applied by torchao's X86 annotator: litert-torch 0.10's own QAT conv-bn annotator calls
  torch.export on a function and fails under torch 2.13.
"""
from __future__ import annotations

from typing import Any

SCHEMES = {
    "tensorrt": "int8 symmetric per-tensor activations (zero point 0), int8 symmetric per-channel weights (axis 0)",
    "onnxruntime": "U8S8: uint8 affine per-tensor activations, int8 symmetric per-channel weights (axis 0)",
    "openvino": "NNCF performance preset: int8 symmetric per-tensor activations, int8 symmetric per-channel weights",
    "litert": "litert-torch QAT config: int8 affine per-tensor activations, int8 symmetric per-channel weights",
}


def _symmetric_int8_config():
    import torch
    from torchao.quantization.pt2e.fake_quantize import FakeQuantize, FusedMovingAvgObsFakeQuantize
    from torchao.quantization.pt2e.observer import MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver
    from torchao.quantization.pt2e.quantizer import QuantizationSpec
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import QuantizationConfig

    eps = 2 ** -12
    # Not the fused kernel: it sets zero point -128 on non-negative (post-ReLU) tensors, which is not symmetric.
    act = QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_symmetric,
                           observer_or_fake_quant_ctr=FakeQuantize.with_args(
                               observer=MovingAverageMinMaxObserver, eps=eps))
    weight = QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=torch.per_channel_symmetric,
                              ch_axis=0, observer_or_fake_quant_ctr=FusedMovingAvgObsFakeQuantize.with_args(
                                  observer=MovingAveragePerChannelMinMaxObserver, eps=eps))
    return QuantizationConfig(act, act, weight, None, True)


def qat_quantizer(backend: str) -> Any:
    """A PT2E quantizer whose fake quantization matches `backend`'s INT8 scheme (for prepare_qat_pt2e)."""
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config)

    q = X86InductorQuantizer()
    if backend == "onnxruntime":
        q.set_global(get_default_x86_inductor_quantization_config(is_qat=True))
    elif backend in ("tensorrt", "openvino"):
        q.set_global(_symmetric_int8_config())
    elif backend == "litert":
        from litert_torch.quantize.pt2e_quantizer import get_symmetric_quantization_config
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import QuantizationConfig

        c = get_symmetric_quantization_config(is_per_channel=True, is_qat=True)
        q.set_global(QuantizationConfig(c.input_activation, c.output_activation, c.weight, None, True))
    else:
        raise ValueError(f"no QAT scheme for backend {backend!r}")
    return q
