"""Functional ops of the INT8 KV cache: quantize and write keys/values, read them back, attend.

Keys and values are stored as packed rows (``kernels/packing.py``, ``KV_PACK_ALIGN``): ``D``
integers and one fp32 scale per (token, head), symmetric, the math of
``quantization/quantizer.py`` (``s = max(absmax, 1e-8) / 127``, ``q = clamp(round_half_even(x /
s), -127, 127)``). Backends as in ``runtime/ops.py``: ``"triton"`` (CUDA, or the interpreter in
tests) runs ``kernels/triton_kv.py``; ``"cpu"``/``"reference"`` run the quantizer in torch and
attend through dequantized float tensors.
"""

from __future__ import annotations

import torch

from smoothquant.kernels.packing import KV_PACK_ALIGN, pack, packed_width, unpack
from smoothquant.quantization.quantizer import quantize_activation
from smoothquant.quantization.scheme import TOKEN_DYNAMIC
from smoothquant.runtime.ops import GPU_BACKENDS

# the decode kernel keeps every query row of a GQA group in one tile: a few positions at most
MAX_DECODE_QUERIES = 16
MAX_DECODE_ROWS = 64


def kv_width(head_dim: int) -> int:
    """Bytes of one packed cache row: the integers, padded to 4 bytes, then the fp32 scale."""
    return packed_width(head_dim, KV_PACK_ALIGN)


def quantize_kv(k: torch.Tensor, v: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed rows ``[B, H, S, W]`` of ``k, v [B, H, S, D]``: one scale per (token, head)."""
    if backend in GPU_BACKENDS:
        kq = torch.zeros((*k.shape[:-1], kv_width(k.shape[-1])), dtype=torch.int8, device=k.device)
        vq = torch.zeros_like(kq)  # padding bytes zero, as the torch path writes them
        write_kv(kq, vq, k, v, torch.zeros(1, dtype=torch.int64, device=k.device), backend)
        return kq, vq
    return _quantize_rows(k), _quantize_rows(v)


def _quantize_rows(x: torch.Tensor) -> torch.Tensor:
    q, scale = quantize_activation(x.reshape(-1, x.shape[-1]).float(), TOKEN_DYNAMIC)
    return pack(q.to(torch.int8), scale.reshape(-1), KV_PACK_ALIGN).reshape(*x.shape[:-1], -1)


def write_kv(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    start: torch.Tensor,
    backend: str,
) -> None:
    """Quantize ``k, v [B, H, S, D]`` into positions ``start .. start + S`` of the packed caches
    ``[B, H, L, W]``. ``start`` is a device tensor, so CUDA graphs replay the write correctly."""
    if backend in GPU_BACKENDS:
        from smoothquant.kernels import triton_kv

        triton_kv.write_kv(k_cache, v_cache, k, v, start.reshape(1))
        return
    pos = torch.arange(k.shape[-2], device=k_cache.device) + start
    k_cache.index_copy_(2, pos, _quantize_rows(k))
    v_cache.index_copy_(2, pos, _quantize_rows(v))


def dequantize_kv(packed: torch.Tensor, head_dim: int, dtype: torch.dtype) -> torch.Tensor:
    """``[..., W]`` packed rows -> ``[..., head_dim]`` floats ``q * scale`` (computed in fp32)."""
    q, scale = unpack(packed, head_dim, KV_PACK_ALIGN)
    return (q.float() * scale[:, None]).to(dtype).reshape(*packed.shape[:-1], head_dim)


def decode_supported(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Whether the decode kernel serves this call (a few queries, a boolean mask or none)."""
    hq, s = query.shape[1:3]
    if s > MAX_DECODE_QUERIES or hq % key.shape[1] or (hq // key.shape[1]) * s > MAX_DECODE_ROWS:
        return False
    return mask is None or (mask.dtype == torch.bool and mask.dim() == 4 and mask.shape[-1] == key.shape[-2])


def decode_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    **tuning,
) -> torch.Tensor:
    """Attention of a few queries ``[B, Hq, S, D]`` over the packed caches, on the Triton kernel,
    without dequantizing the cache; ``[B, S, Hq, D]``. ``mask``: boolean ``[B|1, 1|Hq, S, L]``
    (True: attend); None means what it means to SDPA: all keys for one query, causal from the
    first key (``is_causal``) for several."""
    from smoothquant.kernels import triton_kv

    s, length = query.shape[2], k_cache.shape[2]
    if mask is None and s > 1:
        mask = torch.ones(s, length, dtype=torch.bool, device=query.device).tril()[None, None]
    return triton_kv.decode_attention(query, k_cache, v_cache, mask, scale, **tuning)
