"""``FakeQuantLinear``: an exact simulation of a W8A8 linear in floating point.

It stores what a real INT8 layer stores (int8 weight, fp32 scales, bias, static input scale) and
computes ``deq(q_x) @ deq(q_w).T + b`` in fp32, which equals the integer GEMM with an fp32
epilogue up to fp32 rounding. It is the reference the INT8 runtime is tested against, and it is
what the export writes from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from smoothquant.nn_utils import compute_dtype, weight_oi
from smoothquant.quantization.quantizer import (
    dequantize_weight,
    fake_quantize_activation,
    quantize_activation,
    quantize_weight,
    scale_from_absmax,
)
from smoothquant.quantization.scheme import ActQuant, WeightQuant

# scale buffers keep fp32 whatever dtype the model is cast to (see _apply)
_FP32_BUFFERS = ("weight_scale", "input_scale", "output_scale")


class FakeQuantLinear(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        weight_quant: WeightQuant,
        input_quant: ActQuant,
        output_quant: ActQuant | None = None,
        outlier_threshold: float | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_quant, self.input_quant, self.output_quant = weight_quant, input_quant, output_quant
        self.outlier_threshold = outlier_threshold
        self.register_buffer(
            "qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device)
        )
        n_scales = {"tensor": (1,), "channel": (out_features, 1)}.get(weight_quant.granularity)
        if n_scales is None:
            n_scales = (out_features, -(-in_features // weight_quant.group_size))
        self.register_buffer("weight_scale", torch.ones(n_scales, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)
        static_in = not input_quant.dynamic
        static_out = output_quant is not None and not output_quant.dynamic
        self.register_buffer("input_scale", torch.ones(1, device=device) if static_in else None)
        self.register_buffer("output_scale", torch.ones(1, device=device) if static_out else None)
        self._deq_cache: tuple[tuple, torch.Tensor] | None = None

    @classmethod
    def from_float(
        cls,
        module: nn.Module,
        weight_quant: WeightQuant,
        input_quant: ActQuant,
        output_quant: ActQuant | None = None,
        *,
        outlier_threshold: float | None = None,
        input_absmax: torch.Tensor | float | None = None,
        output_absmax: torch.Tensor | float | None = None,
    ) -> FakeQuantLinear:
        """Quantize an ``nn.Linear`` or ``Conv1D``; static schemes need the calibrated absmax."""
        weight = weight_oi(module).detach()
        out_f, in_f = weight.shape
        bias = getattr(module, "bias", None)
        new = cls(
            in_f,
            out_f,
            bias is not None,
            weight_quant,
            input_quant,
            output_quant,
            outlier_threshold,
            dtype=weight.dtype,
            device=weight.device,
        )
        q, scale = quantize_weight(weight, weight_quant)
        new.qweight.copy_(q)
        new.weight_scale.copy_(scale)
        if bias is not None:
            new.bias.copy_(bias.detach())
        for name, absmax in (("input_scale", input_absmax), ("output_scale", output_absmax)):
            if getattr(new, name) is not None:
                if absmax is None:
                    raise ValueError(f"{name}: static quantization needs a calibrated absmax")
                getattr(new, name).copy_(scale_from_absmax(torch.as_tensor(absmax).reshape(1)))
        return new

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        kept = {n: self._buffers.pop(n) for n in _FP32_BUFFERS if n in self._buffers}
        try:
            super()._apply(fn, recurse)
        finally:
            for n, buf in kept.items():
                # follow device moves, ignore dtype casts: scales must stay fp32
                self._buffers[n] = (
                    None if buf is None else buf.to(fn(torch.empty(0, device=buf.device)).device)
                )
        self._deq_cache = None
        return self

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``q_w * s_w`` as ``[out, in]`` (cached; recomputed if the buffers change)."""
        key = (self.qweight.data_ptr(), self.qweight._version, self.weight_scale._version, dtype)
        if self._deq_cache is None or self._deq_cache[0] != key:
            self._deq_cache = (
                key,
                dequantize_weight(self.qweight, self.weight_scale, self.weight_quant, dtype),
            )
        return self._deq_cache[1]

    def quantize_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The integers and scale the INT8 GEMM would see for ``x`` (no outlier handling)."""
        return quantize_activation(x.to(compute_dtype(x.dtype)), self.input_quant, self.input_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = compute_dtype(x.dtype)
        xc = x.to(dt)
        if self.outlier_threshold is not None:
            # LLM.int8(): columns with any |x| > threshold bypass quantization (in the dequantized
            # weight's precision, as bitsandbytes does); the rest are quantized without them.
            outliers = (xc.reshape(-1, xc.shape[-1]).abs() > self.outlier_threshold).any(0)
            regular = xc.masked_fill(outliers, 0.0)
            xq = torch.where(
                outliers, xc, fake_quantize_activation(regular, self.input_quant, self.input_scale)
            )
        else:
            xq = fake_quantize_activation(xc, self.input_quant, self.input_scale)
        y = F.linear(xq, self.dequantized_weight(dt))
        if self.bias is not None:
            y = y + self.bias.to(dt)
        if self.output_quant is not None:
            y = fake_quantize_activation(y, self.output_quant, self.output_scale)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        w, a = self.weight_quant, self.input_quant
        kind = "dynamic" if a.dynamic else "static"
        parts = [
            f"in={self.in_features}",
            f"out={self.out_features}",
            f"W={w.granularity}",
            f"A={a.granularity}-{kind}",
        ]
        if self.output_quant is not None:
            parts.append("out-quant")
        if self.outlier_threshold is not None:
            parts.append(f"fp-outliers>{self.outlier_threshold}")
        return ", ".join(parts)
