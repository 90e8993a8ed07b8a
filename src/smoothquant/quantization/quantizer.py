"""Symmetric INT8 quantization as tensor functions (the math every backend must reproduce).

``q = clamp(round_half_even(x / scale), -127, 127)``, ``scale = absmax / 127`` (fp32). A zero
absmax gets a tiny scale instead, so all-zero inputs quantize to zeros and never divide by zero.
Integers are returned in a floating tensor for the simulated path; ``torch.int8`` where stored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from smoothquant.errors import QuantizationError
from smoothquant.quantization.scheme import QMAX, ActQuant, WeightQuant

MIN_ABSMAX = 1e-8


def scale_from_absmax(absmax: torch.Tensor) -> torch.Tensor:
    a = absmax.float().clamp_min(MIN_ABSMAX)
    # divide by a tensor, not a Python number: PyTorch's CUDA kernels turn division by a scalar
    # into multiplication by its reciprocal (1 ulp off at times), so the scales, and the integers
    # after them, would depend on the device
    return a / a.new_full((), QMAX)


def check_finite(x: torch.Tensor, what: str = "input") -> None:
    if not torch.isfinite(x).all():
        raise QuantizationError(
            f"cannot quantize an {what} holding NaN or inf: the model overflowed upstream "
            "(run it in float32 or bfloat16) or the input is corrupt"
        )


def round_clamp(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.round(x / scale), -QMAX, QMAX)


# ---- weights ----------------------------------------------------------------------------------
def _grouped(w: torch.Tensor, group_size: int) -> torch.Tensor:
    out_f, in_f = w.shape
    pad = (-in_f) % group_size
    return F.pad(w, (0, pad)).reshape(out_f, -1, group_size)


def weight_scale(w: torch.Tensor, spec: WeightQuant) -> torch.Tensor:
    """Scales of an ``[out, in]`` weight: ``[1]`` per tensor, ``[out, 1]`` per channel,
    ``[out, ceil(in / g)]`` per group (the last group may be short)."""
    check_finite(w, "weight")
    a = w.detach().float().abs()
    if spec.granularity == "tensor":
        return scale_from_absmax(a.amax().reshape(1))
    if spec.granularity == "channel":
        return scale_from_absmax(a.amax(1, keepdim=True))
    return scale_from_absmax(_grouped(a, spec.group_size).amax(-1))


def quantize_weight(w: torch.Tensor, spec: WeightQuant) -> tuple[torch.Tensor, torch.Tensor]:
    """``(int8 [out, in], fp32 scale)``."""
    scale = weight_scale(w, spec)
    w32 = w.detach().float()
    if spec.granularity == "group":
        q = round_clamp(_grouped(w32, spec.group_size), scale[..., None]).reshape(w.shape[0], -1)
        q = q[:, : w.shape[1]]
    else:
        q = round_clamp(w32, scale)
    return q.to(torch.int8), scale


def dequantize_weight(
    q: torch.Tensor, scale: torch.Tensor, spec: WeightQuant, dtype=torch.float32
) -> torch.Tensor:
    qf = q.to(dtype)
    if spec.granularity == "group":
        g = spec.group_size
        return (_grouped(qf, g) * scale.to(dtype)[..., None]).reshape(q.shape[0], -1)[:, : q.shape[1]]
    return qf * scale.to(dtype)


# ---- activations ------------------------------------------------------------------------------
def activation_scale(
    x: torch.Tensor, spec: ActQuant, static_scale: torch.Tensor | None = None
) -> torch.Tensor:
    """Scale for ``x`` of shape ``[..., channels]``: ``[..., 1]`` per token, ``[1]`` per tensor."""
    if not spec.dynamic:
        if static_scale is None:
            raise QuantizationError("static activation quantization needs a calibrated scale")
        check_finite(x)
        return static_scale.float()
    if spec.granularity == "token":
        scale = scale_from_absmax(x.detach().abs().amax(-1, keepdim=True))
    else:
        scale = scale_from_absmax(x.detach().abs().amax().reshape(1))
    check_finite(scale)  # NaN/inf anywhere in x reaches its absmax
    return scale


def quantize_activation(
    x: torch.Tensor, spec: ActQuant, static_scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(integers as x's float dtype, fp32 scale)``."""
    scale = activation_scale(x, spec, static_scale)
    return round_clamp(x, scale.to(x.dtype)), scale


def fake_quantize_activation(
    x: torch.Tensor, spec: ActQuant, static_scale: torch.Tensor | None = None
) -> torch.Tensor:
    q, scale = quantize_activation(x, spec, static_scale)
    return q * scale.to(x.dtype)
