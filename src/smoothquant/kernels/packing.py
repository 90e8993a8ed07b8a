"""Packed INT8 rows: the integers and their fp32 scale in one int8 tensor.

A row is ``Kp + align`` bytes, ``Kp = ceil(K / align) * align``: bytes ``[0, K)`` hold the
integers, bytes ``[Kp, Kp + 4)`` the row's fp32 scale. One tensor can then carry a quantized
activation through model code that only reshapes it (a norm emitting INT8 for the linears it
feeds; the INT8 KV cache handing its keys and values to the attention function).

``align`` is 16 for activations (``PACK_ALIGN``: the row stride the GPU GEMM's TMA loads need)
and 16 for the KV cache too (``KV_PACK_ALIGN``): with 4-byte rows the decode attention's loads
can only be 4 bytes wide, which measured much slower than the 9% of bytes saved
(docs/kernels.md, INT8 KV cache). Pure torch: no Triton needed to read it.
"""

from __future__ import annotations

import torch

PACK_ALIGN = 16
KV_PACK_ALIGN = 16


def packed_width(k: int, align: int = PACK_ALIGN) -> int:
    return -(-k // align) * align + align


def unpack(packed: torch.Tensor, k: int, align: int = PACK_ALIGN) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of packed rows ``[..., Kp + align]``: ``(int8 [M, k], fp32 scales [M])``, no copy."""
    rows = packed.reshape(-1, packed.shape[-1])
    kp = rows.shape[1] - align
    return rows[:, :k], rows.view(torch.float32)[:, kp // 4]


def pack(q: torch.Tensor, scale: torch.Tensor, align: int = PACK_ALIGN) -> torch.Tensor:
    """Packed rows from ``int8 [M, K]`` and fp32 ``scale [M]`` (what the Triton kernels write)."""
    m, k = q.shape
    packed = torch.zeros((m, packed_width(k, align)), dtype=torch.int8, device=q.device)
    packed[:, :k] = q
    packed.view(torch.float32)[:, (packed.shape[1] - align) // 4] = scale.float()
    return packed
