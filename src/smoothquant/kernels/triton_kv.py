"""Triton kernels of the INT8 KV cache: write quantized keys/values, decode attention over them.

The cache holds packed rows (``kernels/packing.py`` with ``KV_PACK_ALIGN``): per (batch, kv head,
position) the ``D`` integers of the key (value) then its fp32 scale, one scale per token and head,
the math of ``quantization/quantizer.py`` (the row quantization of ``triton_quant``).

``decode_attention`` is flash-decoding: one program per (batch, kv head, slice of the cache);
all query heads of a GQA group and all query positions (a few) share the program, so each cache
row is read once. Integers go to the tensor cores in the query's dtype (exact for |q| <= 127), the
key scale multiplies the fp32 scores, the value scale the probabilities; softmax runs in fp32
(base 2). With more than one slice a second kernel merges the partial outputs by their
log-sum-exp. Cache rows outside the range the queries attend to (by the mask: a static cache's
unwritten tail, a left-padded row's head) are not read from memory.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from smoothquant.kernels.packing import KV_PACK_ALIGN, packed_width
from smoothquant.kernels.triton_quant import _nonfinite, _quantize, _row_scale

_LOG2E = 1.4426950408889634
_MASK_BLOCK = tl.constexpr(256)  # mask bytes per step of the attended-range scan


@triton.jit
def _quant_row_into(src, dst, D: tl.constexpr, DP: tl.constexpr, BLOCK_D: tl.constexpr):
    cols = tl.arange(0, BLOCK_D)
    x = tl.load(src + cols, mask=cols < D, other=0.0).to(tl.float32)
    scale = _row_scale(tl.max(tl.abs(x), 0), src, True)
    tl.store(dst + cols, _quantize(x, scale, tl.math.div_rn(1.0, scale)), mask=cols < D)
    bad = tl.max(_nonfinite(x).to(tl.int32), 0) > 0
    tl.store(dst.to(tl.pointer_type(tl.float32), bitcast=True) + DP // 4, tl.where(bad, float("nan"), scale))


@triton.jit
def _kv_write_kernel(
    k_ptr, v_ptr, kc_ptr, vc_ptr, start_ptr, H, S,
    sk_b, sk_h, sk_s, sv_b, sv_h, sv_s, rkc_b, rkc_h, rvc_b, rvc_h,
    D: tl.constexpr, DP: tl.constexpr, W: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    s = pid % S
    h = (pid // S) % H
    b = (pid // S // H).to(tl.int64)
    pos = tl.load(start_ptr).to(tl.int64) + s
    _quant_row_into(
        k_ptr + b * sk_b + h * sk_h + s * sk_s, kc_ptr + (b * rkc_b + h * rkc_h + pos) * W, D, DP, BLOCK_D
    )
    _quant_row_into(
        v_ptr + b * sv_b + h * sv_h + s * sv_s, vc_ptr + (b * rvc_b + h * rvc_h + pos) * W, D, DP, BLOCK_D
    )


def _rows(cache: torch.Tensor) -> tuple[int, int]:
    """Batch and head strides of a packed cache in rows: offsets ``row * W`` with a constexpr ``W``
    tell the compiler the rows' alignment, so it can load several bytes per instruction."""
    w = cache.shape[-1]
    assert cache.stride(0) % w == 0 and cache.stride(1) % w == 0
    return cache.stride(0) // w, cache.stride(1) // w


def write_kv(
    k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: torch.Tensor
) -> None:
    """Quantize ``k, v [B, H, S, D]`` into rows ``start .. start + S`` of the packed caches
    ``[B, H, L, W]``; ``start`` is a one-element device tensor (no host synchronisation)."""
    b, h, s, d = k.shape
    w = packed_width(d, KV_PACK_ALIGN)
    dp = w - KV_PACK_ALIGN
    k = k if k.stride(-1) == 1 else k.contiguous()
    v = v if v.stride(-1) == 1 else v.contiguous()
    for c in (k_cache, v_cache):
        assert c.shape[-1] == w and c.stride(-1) == 1 and c.stride(-2) == w, "cache rows must be contiguous"
    if k.numel():
        _kv_write_kernel[(b * h * s,)](
            k, v, k_cache, v_cache, start, h, s, *k.stride()[:3], *v.stride()[:3],
            *_rows(k_cache), *_rows(v_cache),
            D=d, DP=dp, W=w, BLOCK_D=triton.next_power_of_2(d), num_warps=1,
        )  # fmt: skip


@triton.jit
def _attended_range(m_rows, row_ok, start, end, HAS_MASK: tl.constexpr):
    # The range of cache rows some query attends to (a static cache's unwritten tail is never
    # read). The attention loops then load K/V by address alone, so the compiler can prefetch
    # the next blocks while one computes; gating each block's loads on its mask bytes made every
    # iteration wait for two dependent loads (docs/kernels.md, INT8 KV cache, change 1). ``m_rows``:
    # [rows, 1] mask row pointers.
    if HAS_MASK:
        lo = end
        hi = start
        for r0 in range(start, end, _MASK_BLOCK):
            r = r0 + tl.arange(0, _MASK_BLOCK)
            allowed = tl.load(m_rows + r[None, :], mask=row_ok[:, None] & (r < end)[None, :], other=0)
            used = tl.max((allowed != 0).to(tl.int32), 0) > 0
            lo = tl.minimum(lo, tl.min(tl.where(used, r, end), 0))
            hi = tl.maximum(hi, tl.max(tl.where(used, r + 1, start), 0))
    else:
        lo = start
        hi = end
    return lo, hi


@triton.jit
def _decode_attn_row_kernel(
    q_ptr, k_ptr, v_ptr, m_ptr, o_ptr, part_ptr, lse_ptr,
    L, HKV, split_len, qk_scale,
    sq_b, sq_h, rk_b, rk_h, rv_b, rv_h, sm_b, sm_h, so_b, so_h,
    D: tl.constexpr, DP: tl.constexpr, W: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HAS_MASK: tl.constexpr,
):  # fmt: skip
    """One query row per KV head (multi-head attention, one decode position): no tensor cores.

    With a single row the MMA tiles of ``_decode_attn_kernel`` are 15/16 padding and every
    iteration shuffles the int8 tiles into MMA layouts through shared memory. Here the scores
    are fp32 dot products reduced within each key's threads, and ``p * v`` accumulates into a
    ``[BLOCK_N, D]`` register tile (the rescale factor of the online softmax is one scalar for
    one row), summed over keys once at the end: elementwise work per iteration, the loads of
    the next blocks in flight meanwhile.
    """
    pid = tl.program_id(0)
    split = tl.program_id(1)
    b = (pid // HKV).to(tl.int64)
    h = pid % HKV
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D if BLOCK_D != D else tl.full([BLOCK_D], 1, tl.int1)
    q = tl.load(q_ptr + b * sq_b + h * sq_h + d, mask=d_ok, other=0.0).to(tl.float32) * qk_scale
    k_rows = k_ptr + (b * rk_b + h * rk_h) * W
    v_rows = v_ptr + (b * rv_b + h * rv_h) * W
    k_scales = k_rows.to(tl.pointer_type(tl.float32), bitcast=True) + DP // 4
    v_scales = v_rows.to(tl.pointer_type(tl.float32), bitcast=True) + DP // 4
    start = split * split_len
    end = tl.minimum(start + split_len, L)
    m_row = m_ptr + b * sm_b + h * sm_h + tl.zeros([1, 1], tl.int64)
    lo, hi = _attended_range(m_row, tl.full([1], 1, tl.int1), start, end, HAS_MASK)
    m_i = tl.max(tl.full([BLOCK_N], float("-inf"), tl.float32), 0)  # fp32 scalars, loop-carried
    l_i = tl.sum(tl.zeros([BLOCK_N], tl.float32), 0)
    acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for n0 in range(lo, hi, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        need = n < hi
        ok = need
        if HAS_MASK:
            ok = ok & (tl.load(m_ptr + b * sm_b + h * sm_h + n, mask=need, other=0) != 0)
        kq = tl.load(k_rows + n[:, None] * W + d[None, :], mask=need[:, None] & d_ok[None, :], other=0)
        ks = tl.load(k_scales + n * (W // 4), mask=need, other=0.0)
        scores = tl.where(ok, tl.sum(kq.to(tl.float32) * q[None, :], 1) * ks, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 0))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m_i - m_use)
        p = tl.math.exp2(scores - m_use)
        l_i = l_i * alpha + tl.sum(p, 0)
        vq = tl.load(v_rows + n[:, None] * W + d[None, :], mask=need[:, None] & d_ok[None, :], other=0)
        vs = tl.load(v_scales + n * (W // 4), mask=need, other=0.0)
        acc = acc * alpha + (p * vs)[:, None] * vq.to(tl.float32)
        m_i = m_new
    total = tl.sum(acc, 0)
    out = total / tl.where(l_i == 0.0, 1.0, l_i)  # a row that attends to nothing gets zeros
    if not SPLIT:
        tl.store(o_ptr + b * so_b + h * so_h + d, out.to(o_ptr.dtype.element_ty), mask=d_ok)
    else:
        r = (b * HKV + h) * tl.num_programs(1) + split  # partials [B, Hq, 1, splits, (D)]
        tl.store(part_ptr + r * D + d, out, mask=d_ok)
        lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.math.log2(tl.where(l_i == 0.0, 1.0, l_i)))
        tl.store(lse_ptr + r, lse)


@triton.jit
def _decode_attn_kernel(
    q_ptr, k_ptr, v_ptr, m_ptr, o_ptr, part_ptr, lse_ptr,
    L, HKV, split_len, qk_scale,
    sq_b, sq_h, sq_s, rk_b, rk_h, rv_b, rv_h, sm_b, sm_h, sm_s, so_b, so_s, so_h,
    S: tl.constexpr, G: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, W: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_MASK: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    split = tl.program_id(1)
    b = (pid // HKV).to(tl.int64)
    kvh = pid % HKV
    rows = tl.arange(0, BLOCK_M)  # row r: query head kvh * G + r // S, query position r % S
    row_ok = rows < G * S
    h = kvh * G + rows // S
    s = rows % S
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D if BLOCK_D != D else tl.full([BLOCK_D], 1, tl.int1)  # constant: loads stay vectorized
    q = tl.load(
        q_ptr + b * sq_b + h[:, None] * sq_h + s[:, None] * sq_s + d[None, :],
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    ).to(DOT_DTYPE)
    k_rows = k_ptr + (b * rk_b + kvh * rk_h) * W
    v_rows = v_ptr + (b * rv_b + kvh * rv_h) * W
    k_scales = k_rows.to(tl.pointer_type(tl.float32), bitcast=True) + DP // 4
    v_scales = v_rows.to(tl.pointer_type(tl.float32), bitcast=True) + DP // 4
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    start = split * split_len
    end = tl.minimum(start + split_len, L)
    m_rows = m_ptr + b * sm_b + h[:, None] * sm_h + s[:, None] * sm_s
    lo, hi = _attended_range(m_rows, row_ok, start, end, HAS_MASK)
    for n0 in range(lo, hi, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        need = n < hi
        ok = row_ok[:, None] & need[None, :]
        if HAS_MASK:
            ok = ok & (tl.load(m_rows + n[None, :], mask=ok, other=0) != 0)
        kq = tl.load(k_rows + n[:, None] * W + d[None, :], mask=need[:, None] & d_ok[None, :], other=0)
        ks = tl.load(k_scales + n * (W // 4), mask=need, other=0.0)
        scores = tl.dot(q, tl.trans(kq.to(DOT_DTYPE)), input_precision=PRECISION)
        scores = tl.where(ok, scores * (ks * qk_scale)[None, :], float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing to attend to yet
        alpha = tl.math.exp2(m_i - m_use)
        p = tl.math.exp2(scores - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        vq = tl.load(v_rows + n[:, None] * W + d[None, :], mask=need[:, None] & d_ok[None, :], other=0)
        vs = tl.load(v_scales + n * (W // 4), mask=need, other=0.0)
        pv = (p * vs[None, :]).to(DOT_DTYPE)
        acc = acc * alpha[:, None] + tl.dot(pv, vq.to(DOT_DTYPE), input_precision=PRECISION)
        m_i = m_new
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]  # a row that attends to nothing gets zeros
    if not SPLIT:
        o = o_ptr + b * so_b + s[:, None] * so_s + h[:, None] * so_h + d[None, :]
        tl.store(o, out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    else:
        r = ((b * (HKV * G) + h) * S + s) * tl.num_programs(1) + split  # partials [B, Hq, S, splits, (D)]
        tl.store(part_ptr + r[:, None] * D + d[None, :], out, mask=row_ok[:, None] & d_ok[None, :])
        lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.math.log2(tl.where(l_i == 0.0, 1.0, l_i)))
        tl.store(lse_ptr + r, lse, mask=row_ok)


@triton.jit
def _combine_kernel(
    part_ptr, lse_ptr, o_ptr, HQ, so_b, so_s, so_h,
    NSPLIT, S: tl.constexpr, D: tl.constexpr, BLOCK_SPLIT: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    r = tl.program_id(0).to(tl.int64)  # (b, h, s) of the partials' layout
    s = r % S
    h = (r // S) % HQ
    b = r // S // HQ
    sp = tl.arange(0, BLOCK_SPLIT)
    d = tl.arange(0, BLOCK_D)
    lse = tl.load(lse_ptr + r * NSPLIT + sp, mask=sp < NSPLIT, other=float("-inf"))
    top = tl.max(lse, 0)
    wgt = tl.math.exp2(lse - tl.where(top == float("-inf"), 0.0, top))
    part = tl.load(
        part_ptr + (r * NSPLIT + sp[:, None]) * D + d[None, :],
        mask=(sp < NSPLIT)[:, None] & (d < D)[None, :],
        other=0.0,
    )
    total = tl.sum(wgt, 0)
    out = tl.sum(wgt[:, None] * part, 0) / tl.where(total == 0.0, 1.0, total)
    tl.store(o_ptr + b * so_b + s * so_s + h * so_h + d, out.to(o_ptr.dtype.element_ty), mask=d < D)


def _dot_dtype(dtype: torch.dtype) -> tl.dtype:
    """Tensor-core operands in the query's dtype; fp32 in Triton's interpreter, whose bf16/fp16
    dots are wrong (3.9: bf16 x bf16 -> 1e10 errors)."""
    if dtype == torch.float32 or os.environ.get("TRITON_INTERPRET") == "1":
        return tl.float32
    return {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}[dtype]


@functools.lru_cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def default_splits(batch_heads: int, length: int, block_n: int, device: torch.device) -> int:
    """Slices of the cache per (batch, kv head): enough programs for about two waves of the
    GPU's SMs (batch 1 of a 32-head model would otherwise use 32 SMs of 132), never a slice
    shorter than one block."""
    sms = _sm_count(device.index or 0) if device.type == "cuda" else 4
    return max(1, min(triton.cdiv(length, block_n), triton.cdiv(2 * sms, batch_heads)))


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    *,
    num_splits: int | None = None,
    block_n: int | None = None,
    num_warps: int = 4,
    num_stages: int | None = None,
    align: int = KV_PACK_ALIGN,
    kernel: str = "auto",
) -> torch.Tensor:
    """Attention of ``q [B, Hq, S, D]`` over packed int8 caches ``[B, Hkv, L, W]``; ``mask`` is
    boolean, broadcastable to ``[B, Hq, S, L]`` (True: attend), or None (attend to all L).
    Returns ``[B, S, Hq, D]`` in ``q``'s dtype (the layout attention functions return).
    ``align``: the caches' packing alignment (``kernels/packing.py``). ``kernel``: "row" (one
    query row per KV head: multi-head attention at one position), "tile" (the tensor-core
    kernel, any few rows), or "auto" (row where it applies and batch x heads fill the GPU)."""
    b, hq, s, d = q.shape
    _, hkv, length, w = k_cache.shape
    g = hq // hkv
    q = q if q.stride(-1) == 1 else q.contiguous()
    out = torch.empty((b, s, hq, d), dtype=q.dtype, device=q.device)
    if mask is not None:
        mask = mask.expand(b, hq, s, length)
        mask = mask if mask.stride(-1) == 1 else mask.contiguous()
        mask = mask.view(torch.int8)
    # the row kernel wants enough (batch, head) programs to fill the GPU unsplit; below that the
    # tile kernel's split along the sequence wins (timings: docs/kernels-notes.md, code figures)
    if kernel not in ("auto", "row", "tile"):
        raise ValueError(f"kernel must be 'auto', 'row' or 'tile', got {kernel!r}")
    many = b * hkv >= 2 * (_sm_count(q.device.index or 0) if q.device.type == "cuda" else 4)
    row = kernel == "row" or (kernel == "auto" and g * s == 1 and many)
    if row and g * s != 1:
        raise ValueError("the row kernel serves one query row per KV head")
    block_n = block_n or (32 if row else 64)  # the row kernel keeps a [block_n, D] fp32 tile
    num_stages = num_stages or (3 if row else 2)
    splits = num_splits or default_splits(b * hkv, length, block_n, q.device)
    split_len = triton.cdiv(triton.cdiv(length, splits), block_n) * block_n
    splits = triton.cdiv(length, split_len)
    dot_dtype = _dot_dtype(q.dtype)
    part = lse = out
    if splits > 1:
        part = torch.empty((b, hq, s, splits, d), dtype=torch.float32, device=q.device)
        lse = torch.empty((b, hq, s, splits), dtype=torch.float32, device=q.device)
    if row:
        _decode_attn_row_kernel[(b * hkv, splits)](
            q, k_cache, v_cache, q if mask is None else mask, out, part, lse,
            length, hkv, split_len, scale * _LOG2E, q.stride(0), q.stride(1),
            *_rows(k_cache), *_rows(v_cache), *(mask.stride()[:2] if mask is not None else (0, 0)),
            out.stride(0), out.stride(2),
            D=d, DP=w - align, W=w, SPLIT=splits > 1, BLOCK_N=block_n, BLOCK_D=max(16, triton.next_power_of_2(d)),
            HAS_MASK=mask is not None, num_warps=num_warps, num_stages=num_stages,
        )  # fmt: skip
    else:
        _decode_attn_kernel[(b * hkv, splits)](
            q, k_cache, v_cache, q if mask is None else mask, out, part, lse,
            length, hkv, split_len, scale * _LOG2E,
            *q.stride()[:3], *_rows(k_cache), *_rows(v_cache),
            *(mask.stride()[:3] if mask is not None else (0, 0, 0)), *out.stride()[:3],
            S=s, G=g, D=d, DP=w - align, W=w, SPLIT=splits > 1,
            BLOCK_M=max(16, triton.next_power_of_2(g * s)), BLOCK_N=block_n, BLOCK_D=max(16, triton.next_power_of_2(d)),
            HAS_MASK=mask is not None, DOT_DTYPE=dot_dtype,
            PRECISION="ieee" if dot_dtype == tl.float32 else "tf32",  # fp32 models: fp32 products, not tf32
            num_warps=num_warps, num_stages=num_stages,
        )  # fmt: skip
    if splits > 1:
        _combine_kernel[(b * hq * s,)](
            part, lse, out, hq, *out.stride()[:3],
            splits, S=s, D=d, BLOCK_SPLIT=triton.next_power_of_2(splits),
            BLOCK_D=triton.next_power_of_2(d), num_warps=1 if d <= 128 else 2,
        )  # fmt: skip
    return out
