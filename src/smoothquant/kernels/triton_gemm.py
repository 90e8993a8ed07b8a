"""The W8A8 GEMM in Triton: int8 x int8 -> int32 on the tensor cores, dequantized in the epilogue.

``C[m, n] = cast(acc[m, n] * a_scale[m] * b_scale[n] + bias[n])`` with ``acc`` the exact int32 dot
product. ``A`` is ``[M, K]`` int8 (packed activation rows), ``B`` the weight ``[N, K]`` int8,
both K-contiguous: the layout Hopper's int8 ``wgmma`` reads from shared memory without a
transpose, and the one ``torch._int_mm`` on CPU runs fastest as ``B.t()``. Both are read through
TMA tensor descriptors (row strides padded to 16 bytes at load time), so odd M, N and K need no
special path: out-of-range boxes read zeros.

One kernel covers all sizes; a :class:`GemmConfig` picks tile shape, pipelining depth, a
persistent grid (programs loop over tiles, so the next tile's loads overlap this tile's epilogue)
and split-K for small M, where ``M / BLOCK_M * N / BLOCK_N`` tiles are too few to keep every SM
busy. Split-K writes exact int32 partial sums; a second small kernel adds them in a fixed order
and applies the epilogue (deterministic, and no inter-program synchronisation to get wrong).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from smoothquant.kernels.launch import pdl_kwargs, use_pdl
from smoothquant.kernels.layout import PAIR
from smoothquant.kernels.packing import PACK_ALIGN, packed_width
from smoothquant.kernels.triton_quant import _nonfinite, _pdl_wait, _quantize, _round_to_bf16

_PAIR = tl.constexpr(PAIR)
ACTIVATIONS = {"silu": 1, "gelu_tanh": 2}  # epilogue activations of interleave_gate_up weights


@dataclass(frozen=True)
class GemmConfig:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    group_m: int = 8
    split_k: int = 1
    persistent: bool = False
    subtile: bool = False  # store the output in two halves: half the staging buffer, one more stage
    prefetch_k: int = 0  # PDL: columns of the first weight tile pulled into L2 while the previous kernel runs

    def __str__(self) -> str:
        s = f"{self.block_m}x{self.block_n}x{self.block_k} w{self.num_warps} s{self.num_stages}"
        s += f" g{self.group_m}" if self.group_m != 8 else ""
        s += f" sk{self.split_k}" if self.split_k > 1 else ""
        s += f" pf{self.prefetch_k}" if self.prefetch_k else ""
        return s + (" P" if self.persistent else "") + (" ST" if self.subtile else "")


def _wave_efficiency(tiles: int, num_sms: int) -> float:
    """Busy fraction of the last wave of programs: 1 when the tiles fill every SM each wave."""
    return tiles / (-(-tiles // num_sms) * num_sms)


def choose_config(m: int, n: int, num_sms: int = 132) -> GemmConfig:
    """Tile shapes by problem size: the fastest of ``smoothquant bench gemm --sweep`` on an H100
    for Llama-2 7B/13B shapes (docs/kernels-notes.md)."""
    if m <= 16:  # weight-streaming: many narrow column tiles, deep pipelines
        if _wave_efficiency(-(-n // 32), num_sms) < 0.85:  # e.g. N = 5120: 160 tiles, 1.2 waves
            return GemmConfig(16, 64, 512, 4, 4)
        return GemmConfig(16, 32, 512, 4, 4, prefetch_k=1024) if n >= 8192 else GemmConfig(16, 32, 256, 4, 6)
    if m <= 128:
        return GemmConfig(64, 128, 128, 4, 4, split_k=1 if n >= 8192 else 2)
    if m <= 512:
        # one wave of 64-row tiles, or 128-row tiles when those fill the waves as well
        narrow = GemmConfig(64, 256, 128, 4, 4, persistent=True)
        wide = GemmConfig(128, 256, 128, 8, 4, persistent=True, subtile=True)
        eff = {c: _wave_efficiency(-(-m // c.block_m) * -(-n // c.block_n), num_sms) for c in (narrow, wide)}
        return narrow if eff[narrow] > eff[wide] + 0.02 else wide
    return GemmConfig(128, 256, 128, 8, 4, persistent=True, subtile=True)


@triton.jit
def _tile_coords(tile, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    # grouped ordering: GROUP_M row-tiles share each weight column-tile while it is in L2
    group = GROUP_M * num_pid_n
    first_m = (tile // group) * GROUP_M
    size_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    return first_m + (tile % group) % size_m, (tile % group) // size_m


@triton.jit
def _prefetch_l2(ptr, stride, r0, R, c0, C, ROWS: tl.constexpr, COLS: tl.constexpr):
    # one prefetch.global.L2 per 128-byte line of ptr[r0:r0+ROWS, c0:c0+COLS] (clipped to R x C);
    # lines outside are replaced by the first line, a no-op prefetch
    rows = r0 + tl.arange(0, ROWS)
    cols = c0 + tl.arange(0, COLS // 128) * 128
    ok = (rows[:, None] < R) & (cols[None, :] < C)
    lines = tl.where(ok, ptr + rows[:, None].to(tl.int64) * stride + cols[None, :], ptr)
    tl.inline_asm_elementwise("prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l", [lines], dtype=tl.int32,
                              is_pure=False, pack=1)  # fmt: skip


@triton.jit
def _pdl_enter(b_ptr, stride_b, first, M, N, K, PDL: tl.constexpr, PREFETCH_K: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
               SPLIT_K: tl.constexpr):  # fmt: skip
    # Programmatic dependent launch: this grid starts while the previous kernel (the activation
    # quantization, or the previous GEMM) is still running. The weights do not depend on it, so
    # the first tile's weight columns go to L2 first; gdc_wait then blocks until the previous
    # grid has finished and its writes are visible, before anything reads the activations.
    if PDL and PREFETCH_K > 0:
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        k_per_split = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K)
        _, pid_n = _tile_coords(first // SPLIT_K, num_pid_m, num_pid_n, GROUP_M)
        _prefetch_l2(b_ptr, stride_b, pid_n * BLOCK_N, N, (first % SPLIT_K) * k_per_split * BLOCK_K, K,
                     BLOCK_N, PREFETCH_K)  # fmt: skip
    _pdl_wait(PDL)


@triton.jit
def _round_to(y, dtype: tl.constexpr):
    # y rounded to the output dtype and back: the value a floating-point model would hold
    if dtype == tl.bfloat16:
        y = _round_to_bf16(y)
    elif dtype == tl.float16:
        y = y.to(tl.float16).to(tl.float32)
    return y


@triton.jit
def _gated(out, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ACT: tl.constexpr, dtype: tl.constexpr):
    # columns come as pairs of PAIR gate then PAIR up rows of the weight (``interleave_gate_up``):
    # act(gate) * up, each step rounded to the model dtype as the floating-point MLP rounds it
    pairs = tl.permute(tl.reshape(out, (BLOCK_M, BLOCK_N // (2 * _PAIR), 2, _PAIR)), (0, 1, 3, 2))
    gate, up = tl.split(pairs)
    gate = _round_to(tl.reshape(gate, (BLOCK_M, BLOCK_N // 2)), dtype)
    up = _round_to(tl.reshape(up, (BLOCK_M, BLOCK_N // 2)), dtype)
    if ACT == 1:  # silu
        act = gate / (1.0 + tl.exp(-gate))
    else:  # gelu, tanh approximation: 0.5 x (1 + tanh(y)) = x / (1 + exp(-2y)), no cancellation
        inner = 0.7978845608028654 * (gate + 0.044715 * gate * gate * gate)
        act = gate / (1.0 + tl.exp(-2.0 * inner))
    return _round_to(_round_to(act, dtype) * up, dtype)  # exact: the final cast cannot round again


@triton.jit
def _quantize_out(out, m0, M, out_scale_ptr, c_ptr, stride_cm, scale_col, BLOCK_M: tl.constexpr):
    # the output as packed INT8 rows at a static per-tensor scale (what the next linear's input
    # quantization would compute from the stored floats). The host wrote the scale into every
    # row's slot; a row holding a non-finite value gets NaN there (every writer writes NaN)
    scale = tl.load(out_scale_ptr)
    recip = tl.math.div_rn(1.0, scale)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    bad = tl.max(_nonfinite(out).to(tl.int32), 1)
    slots = (
        c_ptr.to(tl.pointer_type(tl.float32), bitcast=True)
        + offs_m.to(tl.int64) * (stride_cm // 4)
        + scale_col
    )
    tl.store(slots, tl.full([BLOCK_M], float("nan"), tl.float32), mask=(offs_m < M) & (bad > 0))
    return _quantize(out, scale, recip)


@triton.jit
def _epilogue(acc, m0, n0, M, N, a_scale_ptr, stride_as, b_scale_ptr, bias_ptr, c_ptr, c_desc, stride_cm,
              out_scale_ptr, scale_col, HAS_BIAS: tl.constexpr, TMA_STORE: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, SUBTILE: tl.constexpr, ACT: tl.constexpr, QUANT_OUT: tl.constexpr,
              DTYPE: tl.constexpr):  # fmt: skip
    # DTYPE: the model's dtype, where its values are rounded (the output's, unless QUANT_OUT
    # writes INT8 rows instead)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    sa = tl.load(a_scale_ptr + offs_m * stride_as, mask=offs_m < M, other=0.0)
    sb = tl.load(b_scale_ptr + offs_n, mask=mask_n, other=0.0)
    out = acc.to(tl.float32) * sa[:, None] * sb[None, :]
    if HAS_BIAS:
        out += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    if ACT != 0:  # the gated MLP: N weight rows give N / 2 outputs
        out = _gated(out, BLOCK_M, BLOCK_N, ACT, DTYPE)
        if QUANT_OUT:
            out = _quantize_out(out, m0, M, out_scale_ptr, c_ptr, stride_cm, scale_col, BLOCK_M)
        _store(out.to(c_ptr.dtype.element_ty), m0, n0 // 2, M, N // 2, c_ptr, c_desc, stride_cm, TMA_STORE,
               BLOCK_M, BLOCK_N // 2, SUBTILE)  # fmt: skip
    else:
        if QUANT_OUT:
            out = _quantize_out(
                _round_to(out, DTYPE), m0, M, out_scale_ptr, c_ptr, stride_cm, scale_col, BLOCK_M
            )
        _store(out.to(c_ptr.dtype.element_ty), m0, n0, M, N, c_ptr, c_desc, stride_cm, TMA_STORE, BLOCK_M,
               BLOCK_N, SUBTILE)  # fmt: skip


@triton.jit
def _store(out, m0, n0, M, N, c_ptr, c_desc, stride_cm, TMA_STORE: tl.constexpr, BLOCK_M: tl.constexpr,
           BLOCK_N: tl.constexpr, SUBTILE: tl.constexpr):  # fmt: skip
    if TMA_STORE and SUBTILE:
        halves = tl.permute(tl.reshape(out, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
        left, right = tl.split(halves)
        c_desc.store([m0, n0], left)
        c_desc.store([m0, n0 + BLOCK_N // 2], right)
    elif TMA_STORE:  # no per-element addresses: frees the registers a 128x256 tile needs
        c_desc.store([m0, n0], out)
    else:
        offs_m = m0 + tl.arange(0, BLOCK_M)
        offs_n = n0 + tl.arange(0, BLOCK_N)
        c = c_ptr + offs_m[:, None].to(tl.int64) * stride_cm + offs_n[None, :]
        tl.store(c, out, mask=(offs_m < M)[:, None] & (offs_n < N)[None, :])


@triton.jit
def _w8a8_gemm_kernel(
    a_desc, b_desc, a_scale_ptr, stride_as, b_scale_ptr, bias_ptr, c_ptr, c_desc, stride_cm, ws_ptr,
    M, N, K, num_programs, b_ptr, stride_b, out_scale_ptr, scale_col,
    HAS_BIAS: tl.constexpr, TMA_STORE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, SPLIT_K: tl.constexpr, FLATTEN: tl.constexpr,
    SUBTILE: tl.constexpr, PDL: tl.constexpr = False, PREFETCH_K: tl.constexpr = 0, ACT: tl.constexpr = 0,
    QUANT_OUT: tl.constexpr = False, DTYPE: tl.constexpr = tl.float32,
):  # fmt: skip
    _pdl_enter(b_ptr, stride_b, tl.program_id(0), M, N, K, PDL, PREFETCH_K, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M,
               SPLIT_K)  # fmt: skip
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    k_per_split = tl.cdiv(k_tiles, SPLIT_K)
    for work in tl.range(tl.program_id(0), num_pid_m * num_pid_n * SPLIT_K, num_programs, flatten=FLATTEN):
        split = work % SPLIT_K
        pid_m, pid_n = _tile_coords(work // SPLIT_K, num_pid_m, num_pid_n, GROUP_M)
        k_lo = split * k_per_split
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for kt in range(k_lo, tl.minimum(k_lo + k_per_split, k_tiles)):
            a = a_desc.load([pid_m * BLOCK_M, kt * BLOCK_K])
            b = b_desc.load([pid_n * BLOCK_N, kt * BLOCK_K])
            acc = tl.dot(a, b.T, acc, out_dtype=tl.int32)
        m0 = pid_m * BLOCK_M
        n0 = pid_n * BLOCK_N
        if SPLIT_K == 1:
            _epilogue(acc, m0, n0, M, N, a_scale_ptr, stride_as, b_scale_ptr, bias_ptr, c_ptr, c_desc, stride_cm,
                      out_scale_ptr, scale_col, HAS_BIAS, TMA_STORE, BLOCK_M, BLOCK_N, SUBTILE, ACT, QUANT_OUT,
                      DTYPE)  # fmt: skip
        else:
            offs_m = m0 + tl.arange(0, BLOCK_M)
            offs_n = n0 + tl.arange(0, BLOCK_N)
            ws = ws_ptr + (split * M + offs_m[:, None]).to(tl.int64) * N + offs_n[None, :]
            tl.store(ws, acc, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _split_k_reduce_kernel(
    ws_ptr, split_stride, a_scale_ptr, stride_as, b_scale_ptr, bias_ptr, c_ptr, stride_cm, M, N, out_scale_ptr,
    scale_col, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PDL: tl.constexpr = False, ACT: tl.constexpr = 0, QUANT_OUT: tl.constexpr = False,
    DTYPE: tl.constexpr = tl.float32,
):  # fmt: skip
    _pdl_wait(PDL)
    m0 = tl.program_id(0) * BLOCK_M
    n0 = tl.program_id(1) * BLOCK_N
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    ws = ws_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for split in tl.static_range(SPLIT_K):
        acc += tl.load(ws + split * split_stride, mask=mask, other=0)
    _epilogue(acc, m0, n0, M, N, a_scale_ptr, stride_as, b_scale_ptr, bias_ptr, c_ptr, c_ptr, stride_cm,
              out_scale_ptr, scale_col, HAS_BIAS, False, BLOCK_M, BLOCK_N, False, ACT, QUANT_OUT, DTYPE)  # fmt: skip


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2  # the interpreter: still exercise the persistent loop


_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def _output(
    m: int,
    n: int,
    act: str | None,
    out_dtype: torch.dtype,
    cfg: GemmConfig,
    device: torch.device,
    out_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, TensorDescriptor | None, bool, int]:
    """The result and, where its rows suit TMA, a store descriptor for it. With ``out_scale``: packed
    INT8 rows (``kernels/packing.py``), every row's scale slot holding ``out_scale``; returns the
    tensor, the descriptor, whether TMA stores, and the scale slot's fp32 column."""
    if act is not None and n % (2 * PAIR):
        raise ValueError(f"a gated GEMM needs interleaved rows in pairs of {PAIR}: N={n}")
    n_out = n // 2 if act else n
    scale_col = 0
    if out_scale is None:
        c = view = torch.empty((m, n_out), dtype=out_dtype, device=device)
    else:
        c = torch.empty((m, packed_width(n_out)), dtype=torch.int8, device=device)
        scale_col = (c.shape[1] - PACK_ALIGN) // 4
        c.view(torch.float32)[:, scale_col].copy_(out_scale.reshape(1).expand(m))
        view = c[:, :n_out]
    tma_store = cfg.split_k == 1 and (view.stride(0) * view.element_size()) % 16 == 0 and m > 0
    store_n = (cfg.block_n // 2 if cfg.subtile else cfg.block_n) // (2 if act else 1)
    c_desc = TensorDescriptor.from_tensor(view, [cfg.block_m, store_n]) if tma_store else None
    return c, c_desc, tma_store, scale_col


def int8_gemm(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    config: GemmConfig | None = None,
    act: str | None = None,
    out_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """``a [M, K]`` int8, ``a_scale [M]`` fp32 (any stride), ``b [N, K]`` int8, ``b_scale [N]``
    fp32, ``bias [N]`` or None; row strides of ``a`` and ``b`` must be multiples of 16 bytes.

    ``act`` ("silu", "gelu_tanh"): ``b`` holds a gated MLP's gate and up weights interleaved
    (``kernels/layout.interleave_gate_up``) and the result is ``act(gate) * up``, ``[M, N / 2]``.
    ``out_scale`` (fp32 ``[1]``): the result, computed in ``out_dtype``, is returned as packed INT8
    rows at that static scale instead: the next linear's input quantization, fused."""
    m, k = a.shape
    n = b.shape[0]
    cfg = config or choose_config(m, n, _num_sms(a.device))
    c, c_desc, tma_store, scale_col = _output(m, n, act, out_dtype, cfg, a.device, out_scale)
    if m == 0 or n == 0:
        return c
    work = triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n) * cfg.split_k
    programs = min(work, _num_sms(a.device)) if cfg.persistent else work
    ws = torch.empty((cfg.split_k, m, n), dtype=torch.int32, device=a.device) if cfg.split_k > 1 else c
    bias_arg = b_scale if bias is None else bias
    out_scale_arg = b_scale if out_scale is None else out_scale
    pdl = use_pdl(a.device)
    epilogue = dict(
        ACT=ACTIVATIONS[act] if act else 0, QUANT_OUT=out_scale is not None, DTYPE=_TL_DTYPES[out_dtype]
    )
    _w8a8_gemm_kernel[(programs,)](
        TensorDescriptor.from_tensor(a, [cfg.block_m, cfg.block_k]),
        TensorDescriptor.from_tensor(b, [cfg.block_n, cfg.block_k]),
        a_scale, a_scale.stride(0), b_scale, bias_arg, c, c_desc, c.stride(0), ws, m, n, k, programs,
        b, b.stride(0), out_scale_arg, scale_col, HAS_BIAS=bias is not None, TMA_STORE=tma_store,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m, SPLIT_K=cfg.split_k,
        FLATTEN=cfg.persistent, SUBTILE=cfg.subtile, PDL=pdl, PREFETCH_K=cfg.prefetch_k if pdl else 0,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **epilogue, **pdl_kwargs(pdl),
    )  # fmt: skip
    if cfg.split_k > 1:
        block_m, block_n = min(triton.next_power_of_2(m), 16), 256
        _split_k_reduce_kernel[(triton.cdiv(m, block_m), triton.cdiv(n, block_n))](
            ws, m * n, a_scale, a_scale.stride(0), b_scale, bias_arg, c, c.stride(0), m, n, out_scale_arg,
            scale_col, HAS_BIAS=bias is not None, SPLIT_K=cfg.split_k, BLOCK_M=block_m, BLOCK_N=block_n, PDL=pdl,
            num_warps=4, **epilogue, **pdl_kwargs(pdl),
        )  # fmt: skip
    return c


@triton.jit
def _gated_act_kernel(y_ptr, out_ptr, M, N, stride_y, stride_o, ACT: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, PDL: tl.constexpr):  # fmt: skip
    _pdl_wait(PDL)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = offs_m[:, None].to(tl.int64)
    y = tl.load(y_ptr + rows * stride_y + offs_n[None, :], mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))
    out = _gated(y.to(tl.float32), BLOCK_M, BLOCK_N, ACT, y_ptr.dtype.element_ty)
    offs_o = tl.program_id(1) * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
    mask = (offs_m[:, None] < M) & (offs_o[None, :] < N // 2)
    tl.store(out_ptr + rows * stride_o + offs_o[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


def gated_act(y: torch.Tensor, act: str) -> torch.Tensor:
    """``act(gate) * up`` of a GEMM output whose columns are ``interleave_gate_up`` pairs: the
    gated epilogue's step as a kernel of its own, for GEMMs that cannot fuse it (CUTLASS)."""
    m, n = y.shape
    out = torch.empty((m, n // 2), dtype=y.dtype, device=y.device)
    block_m, block_n = 16, 256
    pdl = use_pdl(y.device)
    _gated_act_kernel[(triton.cdiv(m, block_m), triton.cdiv(n, block_n))](
        y, out, m, n, y.stride(0), out.stride(0), ACT=ACTIVATIONS[act], BLOCK_M=block_m, BLOCK_N=block_n,
        PDL=pdl, num_warps=4, **pdl_kwargs(pdl),
    )  # fmt: skip
    return out
