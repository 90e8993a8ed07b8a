"""The W8A8 GEMM on CPU: ``torch._int_mm`` (oneDNN int8, exact int32 accumulation), then one fused
multiply-add for the epilogue.

``b`` is the weight ``[N, K]``; ``torch._int_mm`` wants ``[K, N]`` and runs fastest when given
the transposed view of a K-contiguous ``[N, K]`` tensor (about 3x faster than a contiguous
``[K, N]`` on this project's CPU box), so no copy is made.
"""

from __future__ import annotations

import torch


def int8_gemm(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Same contract as ``triton_gemm.int8_gemm``: ``cast(a @ b.T * a_scale[:, None] * b_scale + bias)``."""
    acc = torch._int_mm(a.contiguous(), b.t()).to(torch.float32)
    scale = a_scale[:, None] * b_scale[None, :]
    out = acc.mul_(scale) if bias is None else torch.addcmul(bias.to(torch.float32), acc, scale)
    return out.to(out_dtype)
