"""Fold a smoothing scale into the model: ``1/s`` into the producer, ``s`` into the consumers.

Each edit is computed in fp32 (fp64 for fp64 models) and written back in the parameter's dtype.
"""

from __future__ import annotations

import torch

from smoothquant.families import ResolvedGroup
from smoothquant.nn_utils import compute_dtype, weight_oi
from smoothquant.smoothing.scales import expand_to_consumer


def _assign(param: torch.Tensor, value: torch.Tensor) -> None:
    param.copy_(value.to(param.dtype))


@torch.no_grad()
def fold_into_producer(group: ResolvedGroup, s: torch.Tensor) -> None:
    """Divide the producer's output channels by ``s``.

    Norms: ``w' = (offset + w) / s - offset`` (offset 1 for Gemma's ``(1 + w)`` scale, else 0)
    and ``b' = b / s``. Linears: the output rows (of one chunk, for fused producers) and bias.
    """
    producer = group.producer
    if group.is_linear_pair:
        weight = weight_oi(producer)
        rows = group.rows or slice(None)
        dt = compute_dtype(weight.dtype)
        _assign(weight[rows], weight[rows].to(dt) / s.to(dt)[:, None])
        bias = getattr(producer, "bias", None)
        if bias is not None:
            _assign(bias[rows], bias[rows].to(dt) / s.to(dt))
        return
    weight = producer.weight
    dt = compute_dtype(weight.dtype)
    offset = group.norm_offset
    _assign(weight, (weight.to(dt) + offset) / s.to(dt) - offset)
    bias = getattr(producer, "bias", None)
    if bias is not None:
        _assign(bias, bias.to(dt) / s.to(dt))


@torch.no_grad()
def fold_into_consumers(group: ResolvedGroup, s: torch.Tensor) -> None:
    """Multiply the input columns of every consumer (and passive reader) by ``s``."""
    index = group.channel_index()
    for module in (*group.consumers.values(), *group.passive.values()):
        weight = weight_oi(module)  # routers' plain `weight` params are [out, in] too
        dt = compute_dtype(weight.dtype)
        _assign(weight, weight.to(dt) * expand_to_consumer(s.to(dt), index)[None, :])
