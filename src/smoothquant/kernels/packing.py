"""Packed INT8 activation rows: the integers and their fp32 scale in one int8 tensor.

A row is ``Kp + 16`` bytes, ``Kp = ceil(K / 16) * 16``: bytes ``[0, K)`` hold the integers,
bytes ``[Kp, Kp + 4)`` the row's fp32 scale. One tensor can then carry a quantized activation
through model code that only reshapes it (a norm emitting INT8 for the linears it feeds), and the
16-byte row stride is what the GPU GEMM's TMA loads need. Pure torch: no Triton needed to read it.
"""

from __future__ import annotations

import torch

PACK_ALIGN = 16


def packed_width(k: int) -> int:
    return -(-k // PACK_ALIGN) * PACK_ALIGN + PACK_ALIGN


def unpack(packed: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of packed rows ``[..., Kp + 16]``: ``(int8 [M, k], fp32 scales [M])``, no copy."""
    rows = packed.reshape(-1, packed.shape[-1])
    kp = rows.shape[1] - PACK_ALIGN
    return rows[:, :k], rows.view(torch.float32)[:, kp // 4]


def pack(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Packed rows from ``int8 [M, K]`` and fp32 ``scale [M]`` (what the Triton kernels write)."""
    m, k = q.shape
    packed = torch.zeros((m, packed_width(k)), dtype=torch.int8, device=q.device)
    packed[:, :k] = q
    packed.view(torch.float32)[:, (packed.shape[1] - PACK_ALIGN) // 4] = scale.float()
    return packed
