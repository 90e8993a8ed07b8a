"""The W8A8 GEMM on CPU, exact int32 accumulation, then one fused multiply-add for the epilogue.

Two ways to get the integers, chosen once per process from the CPU's flags:

- ``torch._int_mm`` (oneDNN int8) where the CPU has int8 dot-product instructions (AVX-512 VNNI,
  AVX-VNNI or AMX). ``b`` is the weight ``[N, K]``; ``_int_mm`` wants ``[K, N]`` and runs fastest
  on the transposed view of a K-contiguous tensor, so no copy is made.
- Elsewhere (AVX2-only CPUs such as this project's CI machines) ``_int_mm`` falls back to a path
  many times slower than an fp32 GEMM (docs/cpu-timings.md), so the integers are computed by fp32 GEMMs over chunks of
  at most 1024 input channels: every product is below 127 * 127 < 2^14, so a chunk's sum stays
  below 2^24 and fp32 holds it exactly; chunks are summed in int32. Same integers, fp32 speed.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

EXACT_FP32_K = 1024  # 1024 * 127 * 127 < 2**24: chunk sums are exact in fp32
_INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.cache
def has_int8_dot() -> bool:
    """Whether the CPU has int8 dot-product instructions (read from /proc/cpuinfo on Linux)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # not Linux: trust oneDNN to pick a good path
    return any(f in flags for f in _INT8_DOT_FLAGS)


def int8_accumulate(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` for int8 ``a [M, K]``, ``b [N, K]``, exactly, as int32 ``[M, N]``."""
    # K < 8: torch's CPU _int_mm returned wrong sums for K = 1 on an AVX-512 VNNI host (torch 2.11);
    # such tiny products cost nothing on the exact fp32 path below
    if has_int8_dot() and a.shape[1] >= 8:
        return torch._int_mm(a.contiguous(), b.t())
    acc = None
    for k in range(0, a.shape[1], EXACT_FP32_K):
        part = a[:, k : k + EXACT_FP32_K].float() @ b[:, k : k + EXACT_FP32_K].float().t()
        acc = part.to(torch.int32) if acc is None else acc.add_(part.to(torch.int32))
    return acc


def int8_gemm(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Same contract as ``triton_gemm.int8_gemm``: ``cast(a @ b.T * a_scale[:, None] * b_scale + bias)``."""
    acc = int8_accumulate(a, b).to(torch.float32)
    scale = a_scale[:, None] * b_scale[None, :]
    out = acc.mul_(scale) if bias is None else torch.addcmul(bias.to(torch.float32), acc, scale)
    return out.to(out_dtype)
