"""``Int8Linear``: a linear layer that really runs in INT8 (int8 weights in memory, int32 GEMM)."""

from __future__ import annotations

import torch
from torch import nn

from smoothquant.errors import BackendError, QuantizationError
from smoothquant.nn_utils import weight_oi
from smoothquant.quantization.fake import FakeQuantLinear
from smoothquant.quantization.quantizer import quantize_weight, scale_from_absmax
from smoothquant.quantization.scheme import ActQuant, WeightQuant
from smoothquant.runtime import ops

# weights are stored [out, in_padded]: a 16-byte row stride is what the GPU kernel's TMA loads need
ROW_ALIGN = 16


def keep_fp32(module: torch.nn.Module, apply, fn, names: tuple[str, ...]) -> None:
    """``module._apply`` for modules whose scale buffers follow device moves but stay fp32."""
    kept = {n: module._buffers.pop(n) for n in names if n in module._buffers}
    try:
        apply(fn)
    finally:
        for n, buf in kept.items():
            module._buffers[n] = None if buf is None else buf.to(fn(torch.empty(0, device=buf.device)).device)


def unsupported_reason(module: FakeQuantLinear) -> str | None:
    """Why a fake-quant linear cannot run on the INT8 kernels (None: it can)."""
    if module.weight_quant.granularity not in ("tensor", "channel"):
        return f"{module.weight_quant.granularity}-wise weight scales"
    if module.outlier_threshold is not None:
        return "LLM.int8() floating-point outlier columns"
    if module.output_quant is not None:
        return "quantized outputs (BMM inputs)"
    return None


class Int8Weights(nn.Module):
    """Base of the modules holding int8 weights: ``weight_scale``/``input_scale`` stay fp32 when
    the model is cast, and ``out_dtype`` (what packed INT8 inputs produce) follows the cast."""

    out_dtype: torch.dtype

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        keep_fp32(
            self, lambda f: super(Int8Weights, self)._apply(f, recurse), fn, ("weight_scale", "input_scale")
        )
        self.out_dtype = fn(torch.empty(0, dtype=self.out_dtype)).dtype
        return self


class Int8Linear(Int8Weights):
    """``y = cast((q_x @ q_w.T) * s_x * s_w + b)`` with ``q_x`` quantized per ``input_quant``.

    Buffers: ``qweight`` int8 ``[out, in]`` (rows padded to 16 bytes), ``weight_scale`` fp32
    ``[out]`` (a per-tensor scale is repeated per row, so one epilogue serves both), ``bias`` in
    the model's dtype, ``input_scale`` fp32 ``[1]`` for static activation scales. Scales stay fp32
    when the model is cast. It also accepts packed INT8 rows from a folded norm
    (:class:`~smoothquant.runtime.norm.Int8Norm`) in place of a floating-point input.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        weight_quant: WeightQuant,
        input_quant: ActQuant,
        *,
        backend: str = "auto",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if weight_quant.granularity not in ("tensor", "channel"):
            raise QuantizationError(
                f"Int8Linear supports per-tensor and per-channel weights, not {weight_quant.granularity}-wise"
            )
        if backend not in ops.BACKENDS:
            raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(ops.BACKENDS)}")
        self.in_features, self.out_features = in_features, out_features
        self.weight_quant, self.input_quant, self.backend = weight_quant, input_quant, backend
        self.out_dtype = dtype
        padded = -(-in_features // ROW_ALIGN) * ROW_ALIGN
        self.register_buffer("qweight", torch.zeros(out_features, padded, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)
        static = not input_quant.dynamic
        self.register_buffer("input_scale", torch.ones(1, device=device) if static else None)

    @property
    def weight_int8(self) -> torch.Tensor:
        """The integers as an ``[out, in]`` view."""
        return self.qweight[:, : self.in_features]

    @classmethod
    def _build(cls, q, scale, bias, weight_quant, input_quant, input_scale, backend, dtype) -> Int8Linear:
        out_f, in_f = q.shape
        new = cls(
            in_f,
            out_f,
            bias is not None,
            weight_quant,
            input_quant,
            backend=backend,
            dtype=dtype,
            device=q.device,
        )
        with torch.no_grad():
            new.weight_int8.copy_(q)
            new.weight_scale.copy_(scale.reshape(-1).expand(out_f))
            if bias is not None:
                new.bias.copy_(bias)
            if new.input_scale is not None:
                if input_scale is None:
                    raise QuantizationError("static activation quantization needs a calibrated input scale")
                new.input_scale.copy_(input_scale.reshape(1))
        return new

    @classmethod
    def from_fake(
        cls, fake: FakeQuantLinear, backend: str = "auto", dtype: torch.dtype | None = None
    ) -> Int8Linear:
        """The INT8 twin of a :class:`FakeQuantLinear`: same integers, same scales, same outputs.

        ``dtype``: the model's dtype, what the layer returns when fed packed INT8 rows (default:
        the bias dtype, else float32).
        """
        reason = unsupported_reason(fake)
        if reason is not None:
            raise QuantizationError(f"Int8Linear cannot run a FakeQuantLinear with {reason}")
        if dtype is None:
            dtype = fake.bias.dtype if fake.bias is not None else torch.float32
        return cls._build(
            fake.qweight, fake.weight_scale, fake.bias, fake.weight_quant, fake.input_quant, fake.input_scale,
            backend, dtype,
        )  # fmt: skip

    @classmethod
    def from_float(
        cls,
        linear: nn.Module,
        weight_quant: WeightQuant,
        input_quant: ActQuant,
        input_absmax: torch.Tensor | float | None = None,
        backend: str = "auto",
    ) -> Int8Linear:
        """Quantize an ``nn.Linear`` (or ``Conv1D``); static activations need the calibrated absmax."""
        weight = weight_oi(linear).detach()
        q, scale = quantize_weight(weight, weight_quant)
        input_scale = None
        if not input_quant.dynamic:
            if input_absmax is None:
                raise QuantizationError("static activation quantization needs input_absmax from calibration")
            input_scale = scale_from_absmax(torch.as_tensor(input_absmax, device=weight.device).reshape(1))
        bias = getattr(linear, "bias", None)
        bias = None if bias is None else bias.detach()
        return cls._build(q, scale, bias, weight_quant, input_quant, input_scale, backend, weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: floats, or packed INT8 rows from a folded norm
        backend = ops.resolve_backend(self.backend, x.device)
        return ops.w8a8_linear(
            x, self.weight_int8, self.weight_scale, self.bias, self.input_quant, self.input_scale, backend,
            self.out_dtype,
        )  # fmt: skip

    def extra_repr(self) -> str:
        a = self.input_quant
        return (
            f"in={self.in_features}, out={self.out_features}, W={self.weight_quant.granularity}, "
            f"A={a.granularity}-{'dynamic' if a.dynamic else 'static'}, backend={self.backend}"
        )
