"""Triton kernels that turn floating-point rows into INT8 rows (activation quantization).

They reproduce ``quantization/quantizer.py`` bit for bit: ``scale = max(absmax, 1e-8) / 127`` and
``q = clamp(round_half_even(x / scale), -127, 127)`` in fp32, with the correctly rounded quotient
(an fma-corrected reciprocal, equal to ``div_rn``; a plain ``/`` compiles to an approximate
division on NVIDIA GPUs) and rounding by adding and subtracting ``1.5 * 2**23`` after the clamp
(exact round-half-even for ``|v| <= 127``, and it runs in Triton's CPU interpreter, where
``libdevice.rint`` does not).

They write packed rows (``kernels/packing.py``: integers and fp32 scale in one int8 tensor). A
row holding NaN or inf gets a NaN scale, so the GEMM writes NaN for it, as a floating-point model
would, without a host synchronisation (the reference raises instead).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from smoothquant.kernels.launch import pdl_kwargs, use_pdl
from smoothquant.kernels.packing import PACK_ALIGN, packed_width
from smoothquant.quantization.quantizer import MIN_ABSMAX
from smoothquant.quantization.scheme import QMAX

_PACK_ALIGN = tl.constexpr(PACK_ALIGN)
# jit code reads module globals only as constexpr
_ROUND_MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2**23: x + M - M rounds fp32 x to an integer, half to even
_QMAX = tl.constexpr(float(QMAX))
_MIN_ABSMAX = tl.constexpr(MIN_ABSMAX)


@triton.jit
def _round_clamp(v):
    v = tl.minimum(tl.maximum(v, -_QMAX), _QMAX)
    return ((v + _ROUND_MAGIC) - _ROUND_MAGIC).to(tl.int8)


@triton.jit
def _div_exact(x, scale, recip):
    # x / scale rounded to nearest, as div_rn gives it, from recip = div_rn(1, scale) and two
    # fmas (Markstein: q0 is within an ulp of the quotient, x - q0 * scale is then exact, and one
    # correction step rounds correctly). scripts/gpu_check.py compares the two on 2**27 quotients
    # around rounding ties; none differ
    q0 = x * recip
    return tl.fma(tl.fma(-q0, scale, x), recip, q0)


@triton.jit
def _quantize(x, scale, recip):
    # clamp(round_half_even(x / scale)) with the division as _div_exact does it: a few flops per
    # element instead of div_rn's subroutine, which made the quantization kernels ALU-bound. Past
    # |x / scale| = 256 the correction step could overflow to NaN; there only the sign matters
    q0 = x * recip
    return _round_clamp(tl.where(tl.abs(q0) > 256.0, q0, _div_exact(x, scale, recip)))


@triton.jit
def _nonfinite(x):
    return (x != x) | (tl.abs(x) == float("inf"))


@triton.jit
def _round_to_bf16(y):
    # fp32 -> bf16 -> fp32, round half to even, in integer ops: Triton's interpreter truncates
    # in .to(tl.bfloat16), the GPU rounds; this is exact on both
    bits = y.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    # a NaN stays NaN: the GPU's canonical NaN, 0x7FFFFFFF, would otherwise carry into the sign
    # bit and come out as -0.0 (the interpreter's NaN, 0x7FC00000, does not show it)
    return tl.where(y != y, y, bits.to(tl.float32, bitcast=True))


@triton.jit
def _store_scale(q_row, stride_q, scale):
    # the scale sits right after the padded integers: fp32 column (stride_q - 16) / 4 of the row
    tl.store(q_row.to(tl.pointer_type(tl.float32), bitcast=True) + (stride_q - _PACK_ALIGN) // 4, scale)


@triton.jit
def _row_scale(absmax, static_ptr, DYNAMIC: tl.constexpr):
    if DYNAMIC:
        scale = tl.math.div_rn(tl.maximum(absmax, _MIN_ABSMAX), _QMAX)
    else:
        scale = tl.load(static_ptr).to(tl.float32)
    return scale


@triton.jit
def _pdl_wait(PDL: tl.constexpr):
    # launched early under programmatic dependent launch: wait until the previous grid has
    # finished and its writes are visible (nothing before this may read or write activations),
    # then let the next kernel (the GEMM reading these rows) launch and prefetch its weights
    if PDL:
        gdc_wait()
        gdc_launch_dependents()


@triton.jit
def _quant_rows_kernel(
    x_ptr, q_ptr, static_ptr, K, stride_x, stride_q,
    DYNAMIC: tl.constexpr, BLOCK_K: tl.constexpr, ONE_TILE: tl.constexpr, PDL: tl.constexpr = False,
):  # fmt: skip
    _pdl_wait(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_K)
    x_row = x_ptr + row * stride_x
    q_row = q_ptr + row * stride_q
    if ONE_TILE:  # the row stays in registers: x is read once
        x = tl.load(x_row + cols, mask=cols < K, other=0.0).to(tl.float32)
        scale = _row_scale(tl.max(tl.abs(x), 0), static_ptr, DYNAMIC)
        tl.store(q_row + cols, _quantize(x, scale, tl.math.div_rn(1.0, scale)), mask=cols < K)
        bad = tl.max(_nonfinite(x).to(tl.int32), 0)
    else:
        absmax = tl.zeros([BLOCK_K], dtype=tl.float32)
        nonfinite = tl.zeros([BLOCK_K], dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):
            x = tl.load(x_row + k0 + cols, mask=k0 + cols < K, other=0.0).to(tl.float32)
            absmax = tl.maximum(absmax, tl.abs(x))
            nonfinite = tl.maximum(nonfinite, _nonfinite(x).to(tl.int32))
        scale = _row_scale(tl.max(absmax, 0), static_ptr, DYNAMIC)
        recip = tl.math.div_rn(1.0, scale)
        for k0 in range(0, K, BLOCK_K):
            x = tl.load(x_row + k0 + cols, mask=k0 + cols < K, other=0.0).to(tl.float32)
            tl.store(q_row + k0 + cols, _quantize(x, scale, recip), mask=k0 + cols < K)
        bad = tl.max(nonfinite, 0)
    _store_scale(q_row, stride_q, tl.where(bad > 0, float("nan"), scale))


@triton.jit
def _norm_quant_kernel(
    x_ptr, w_ptr, b_ptr, q_ptr, static_ptr, K, stride_x, stride_q, eps, w_offset,
    RMS: tl.constexpr, HAS_BIAS: tl.constexpr, DYNAMIC: tl.constexpr,
    ROUND_BF16: tl.constexpr, ROUND_F16: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr = False,
):  # fmt: skip
    _pdl_wait(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_K)
    mask = cols < K
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if RMS:
        y = x * tl.math.rsqrt(tl.sum(x * x, 0) / K + eps)
    else:
        d = tl.where(mask, x - tl.sum(x, 0) / K, 0.0)
        y = d * tl.math.rsqrt(tl.sum(d * d, 0) / K + eps)
    y = y * (w_offset + tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32))
    if HAS_BIAS:
        y = y + tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    # the reference quantizes the norm's output in the model's dtype
    if ROUND_BF16:
        y = _round_to_bf16(y)
    if ROUND_F16:
        y = y.to(tl.float16).to(tl.float32)
    scale = _row_scale(tl.max(tl.abs(y), 0), static_ptr, DYNAMIC)
    q_row = q_ptr + row * stride_q
    tl.store(q_row + cols, _quantize(y, scale, tl.math.div_rn(1.0, scale)), mask=mask)
    _store_scale(q_row, stride_q, tl.where(tl.max(_nonfinite(y).to(tl.int32), 0) > 0, float("nan"), scale))


def _rows(x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def quantize_rows(
    x: torch.Tensor,
    static_scale: torch.Tensor | None = None,
    block_k: int | None = None,
    num_warps: int | None = None,
) -> torch.Tensor:
    """Packed INT8 rows of ``x [..., K]``: per-token dynamic scales, or the fp32 ``static_scale``.

    ``block_k`` (a power of two, at most 16384: the whole row stays in registers when it fits)
    and ``num_warps`` are tuning knobs; the defaults are the fastest of ``scripts/bench_quant.py``
    on an H100: few rows (decode) are latency-bound and want the row in registers across 16
    warps, many rows are bandwidth-bound and want 4096-wide blocks and 4 warps."""
    x2 = _rows(x)
    m, k = x2.shape
    width = packed_width(k)
    packed = torch.empty((m, width), dtype=torch.int8, device=x.device)
    many = m >= 256
    if block_k is None:
        # few rows: the whole row in registers (one load latency instead of two loops of them);
        # many rows: 4096-wide blocks (one tile for K <= 4096, else a second loop over rows still
        # in L2), faster than 2048 at 2048-8192 rows once the division got cheap (timings:
        # docs/kernels-notes.md, code figures)
        block = 4096 if many else triton.next_power_of_2(k)
        block = block if block <= 16384 else 4096
    else:
        block = block_k
    num_warps = num_warps or (4 if many else 16)
    pdl = use_pdl(x.device)
    if m:
        _quant_rows_kernel[(m,)](
            x2, packed, x2 if static_scale is None else static_scale, k, x2.stride(0), width,
            DYNAMIC=static_scale is None, BLOCK_K=block, ONE_TILE=block >= k, PDL=pdl, num_warps=num_warps,
            **pdl_kwargs(pdl),
        )  # fmt: skip
    return packed.reshape(*x.shape[:-1], width)


def norm_quantize_rows(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    *,
    rms: bool,
    weight_offset: float = 0.0,
    static_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """LayerNorm/RMSNorm of ``x`` quantized to packed INT8 rows, in one pass over ``x``.

    The norm is computed in fp32 and rounded once to ``x``'s dtype, the tensor the reference
    would quantize; ``weight_offset`` is 1 for Gemma-style ``(1 + w)`` scales.
    """
    x2 = _rows(x)
    m, k = x2.shape
    width = packed_width(k)
    packed = torch.empty((m, width), dtype=torch.int8, device=x.device)
    if m:
        block = triton.next_power_of_2(k)
        pdl = use_pdl(x.device)
        _norm_quant_kernel[(m,)](
            x2, weight, weight if bias is None else bias, packed,
            weight if static_scale is None else static_scale, k, x2.stride(0), width, eps, weight_offset,
            RMS=rms, HAS_BIAS=bias is not None,
            DYNAMIC=static_scale is None, ROUND_BF16=x.dtype == torch.bfloat16,
            ROUND_F16=x.dtype == torch.float16, BLOCK_K=block, PDL=pdl,
            num_warps=min(max(block // 512, 1), 16) if m >= 256 else 16,  # as quantize_rows
            **pdl_kwargs(pdl),
        )  # fmt: skip
    return packed.reshape(*x.shape[:-1], width)
