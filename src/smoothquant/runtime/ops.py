"""Functional W8A8 ops: quantize an activation, multiply by an INT8 weight, dequantize.

Four backends compute the same integers (the math of ``quantization/quantizer.py``):

- ``"cutlass"``: the GEMMs on CUTLASS's warp-specialised Hopper kernels (``kernels/cuda``), the
  activation quantization, norms and the GEMMs CUTLASS cannot fuse (the gated epilogue below
  ``kernels/cuda/configs.GATED_MIN_ROWS`` rows, the INT8 hand-off) on Triton,
- ``"triton"``: this project's Triton kernels (CUDA; on CPU only under ``TRITON_INTERPRET=1``),
- ``"cpu"``: exact int8 GEMM on CPU tensors (``torch._int_mm`` where the CPU has int8 dot products, chunked fp32 GEMMs elsewhere: ``kernels/cpu.py``),
- ``"reference"``: pure torch, the int32 accumulation emulated exactly in float64.

``"auto"`` picks ``cutlass`` for CUDA tensors on a Hopper GPU with nvcc and CUTLASS's headers
(``triton`` elsewhere on CUDA, saying why once) and ``cpu`` for CPU tensors. Activation integers
travel as ``(q [M, K] int8, scale [M] fp32)``; per-tensor scales are broadcast to every row so one
GEMM epilogue serves all schemes.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os

import torch
import torch.nn.functional as F

from smoothquant.errors import BackendError
from smoothquant.kernels import cpu as cpu_kernels
from smoothquant.kernels.packing import pack, unpack
from smoothquant.nn_utils import compute_dtype
from smoothquant.quantization.quantizer import quantize_activation, scale_from_absmax
from smoothquant.quantization.scheme import TENSOR_STATIC, ActQuant

BACKENDS = ("auto", "cutlass", "triton", "cpu", "reference")
GPU_BACKENDS = ("cutlass", "triton")  # both run the Triton quantization, norm and attention kernels
log = logging.getLogger(__name__)


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _cutlass_reason(index: int | None) -> str | None:  # asked on every forward: once per device
    from smoothquant.kernels.cuda import gemm

    return gemm.unavailable_reason(torch.device("cuda", index))


def choose_gpu_backend(reason: str | None) -> str:
    """``auto`` on CUDA: CUTLASS where it can run, else Triton, saying once why (``reason``)."""
    if reason is None:
        return "cutlass"
    _say_once(f"smoothquant: CUTLASS GEMMs unavailable ({reason}); using the Triton GEMMs")
    return "triton"


@functools.cache
def _say_once(message: str) -> None:
    log.warning(message)


@functools.cache
def _auto_cuda(index: int | None) -> str:
    if not triton_available():
        raise BackendError("the INT8 runtime on CUDA needs the triton package (pip install triton)")
    return choose_gpu_backend(_cutlass_reason(index))


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend for tensors on ``device`` (raises :class:`BackendError` if unusable)."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if device.type == "cuda":
            return _auto_cuda(device.index)
        backend = "cpu" if device.type == "cpu" else "reference"
    if backend == "cutlass":
        reason = _cutlass_reason(device.index) if device.type == "cuda" else f"{device.type} tensors"
        if reason is not None:
            raise BackendError(f"backend 'cutlass' cannot run here ({reason}); use 'auto' or 'triton'")
    if backend == "triton":
        if not triton_available():
            raise BackendError("backend 'triton' needs the triton package (pip install triton)")
        if device.type != "cuda" and not _interpreting():
            raise BackendError(
                "backend 'triton' runs on CUDA tensors (or on CPU under TRITON_INTERPRET=1, for "
                "tests); use backend='cpu' or move the model to a GPU"
            )
    if backend == "cpu" and device.type != "cpu":
        raise BackendError(f"backend 'cpu' runs on CPU tensors, not {device.type}; use 'auto' or 'triton'")
    return backend


def quantize_rows(
    x: torch.Tensor, spec: ActQuant, static_scale: torch.Tensor | None, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [M, K]`` -> ``(int8 [M, K], fp32 scale [M])``, the integers FakeQuantLinear computes."""
    if backend in GPU_BACKENDS:
        from smoothquant.kernels import triton_quant

        if spec.dynamic and spec.granularity == "tensor":
            # one global absmax: torch's reduction, then the static-scale kernel
            static_scale = scale_from_absmax(x.detach().abs().amax().reshape(1))
        packed = triton_quant.quantize_rows(
            x, None if spec.dynamic and spec.granularity == "token" else static_scale
        )
        return unpack(packed, x.shape[-1])
    q, scale = quantize_activation(x.to(compute_dtype(x.dtype)), spec, static_scale)
    return q.to(torch.int8), scale.to(torch.float32).reshape(-1).expand(x.shape[0])


ACTIVATIONS = {
    "silu": F.silu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


def int8_matmul(
    q: torch.Tensor,
    scale: torch.Tensor,
    qweight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    backend: str,
    act: str | None = None,
    out_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """``cast((q @ qweight.T) * scale[:, None] * weight_scale[None, :] + bias)``; ``qweight [N, K]``.

    ``act``: ``qweight`` holds a gated MLP's gate and up rows interleaved
    (``kernels/layout.interleave_gate_up``); the result is ``act(gate) * up`` computed in
    ``out_dtype`` as the floating-point MLP computes it (fused into the GEMM on Triton).
    ``out_scale`` (fp32 ``[1]``): the result quantized at that static per-tensor scale, as packed
    INT8 rows (fused into the GEMM's epilogue on Triton)."""
    if backend == "cutlass":
        from smoothquant.kernels.cuda import configs, gemm

        if out_scale is None and q.shape[0] <= configs.MAX_ROWS and gemm.supports(q, qweight, out_dtype):
            if act is None:
                return gemm.int8_gemm(q, scale, qweight, weight_scale, bias, out_dtype)
            if q.shape[0] >= configs.GATED_MIN_ROWS:
                from smoothquant.kernels import triton_gemm

                y = gemm.int8_gemm(q, scale, qweight, weight_scale, bias, out_dtype)
                return triton_gemm.gated_act(y, act)
        backend = "triton"
    if backend == "triton":
        from smoothquant.kernels import triton_gemm

        return triton_gemm.int8_gemm(
            q, scale, qweight, weight_scale, bias, out_dtype, act=act, out_scale=out_scale
        )
    if backend == "cpu":
        out = cpu_kernels.int8_gemm(q, scale.contiguous(), qweight, weight_scale, bias, out_dtype)
    else:
        acc = (q.double() @ qweight.double().t()).float()  # exact: |acc| < 2**53
        out = acc * scale[:, None] * weight_scale[None, :]
        if bias is not None:
            out = out + bias.float()
        out = out.to(out_dtype)
    if act is not None:
        from smoothquant.kernels.layout import split_gate_up

        gate, up = (t.t() for t in split_gate_up(out.t()))
        out = ACTIVATIONS[act](gate) * up
    if out_scale is None:
        return out
    return pack(*quantize_rows(out, TENSOR_STATIC, out_scale, backend))


def w8a8_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    input_quant: ActQuant,
    input_scale: torch.Tensor | None,
    backend: str,
    out_dtype: torch.dtype | None = None,
    act: str | None = None,
    out_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """A linear layer in INT8: quantize ``x [..., K]`` per ``input_quant``, GEMM, epilogue.

    ``x`` may instead be packed INT8 rows from a folded norm (``kernels/packing.py``), used as
    they are; the result is then in ``out_dtype`` (the model's dtype), else in ``x``'s dtype.
    ``act``, ``out_scale``: see :func:`int8_matmul`."""
    k = qweight.shape[1]
    if x.dtype == torch.int8:
        q, scale = unpack(x, k)
        dtype = out_dtype or torch.float32
    else:
        q, scale = quantize_rows(x.reshape(-1, k), input_quant, input_scale, backend)
        dtype = x.dtype
    y = int8_matmul(q, scale, qweight, weight_scale, bias, dtype, backend, act=act, out_scale=out_scale)
    return y.reshape(*x.shape[:-1], -1)


def norm_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float, rms: bool, offset: float
) -> torch.Tensor:
    """The norm the fused norm + quantize kernel computes: fp32 math, one rounding to ``x.dtype``."""
    xf = x.float()
    if rms:
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    else:
        y = F.layer_norm(xf, xf.shape[-1:], eps=eps)
    y = y * (offset + weight.float())
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def norm_quantize(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    rms: bool,
    offset: float,
    spec: ActQuant,
    static_scale: torch.Tensor | None,
    backend: str,
) -> torch.Tensor:
    """A norm whose output goes straight to INT8: packed rows ``[..., Kp + 16]`` (per-token
    dynamic or per-tensor static scales). One kernel on Triton; norm then quantize elsewhere."""
    if backend in GPU_BACKENDS:
        from smoothquant.kernels import triton_quant

        return triton_quant.norm_quantize_rows(
            x, weight, bias, eps, rms=rms, weight_offset=offset, static_scale=static_scale
        )
    y = norm_reference(x, weight, bias, eps, rms, offset)
    q, scale = quantize_rows(y.reshape(-1, y.shape[-1]), spec, static_scale, backend)
    return pack(q, scale).reshape(*x.shape[:-1], -1)
