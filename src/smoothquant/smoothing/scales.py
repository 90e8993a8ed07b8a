"""The smoothing factor itself, as pure tensor functions.

``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)``: dividing activation channel j by ``s_j`` and
multiplying weight row j by it leaves ``X W`` unchanged while moving quantization difficulty
from activations (alpha -> 1) to weights (alpha -> 0).
"""

from __future__ import annotations

import torch

MIN_SCALE = 1e-5


def smoothing_scales(
    act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Per-channel factors with guards: never NaN/inf, >= MIN_SCALE, 1 where a side is all zero.

    A channel whose activation or weight is identically zero carries no information about how to
    balance the two, and any other value would only amplify rounding noise, so it keeps s = 1.
    """
    a = act_absmax.to(dtype)
    w = weight_absmax.to(dtype)
    s = a.pow(alpha) / w.pow(1.0 - alpha)
    s = s.clamp_min(MIN_SCALE)
    usable = (a > 0) & (w > 0) & torch.isfinite(s)
    return torch.where(usable, s, torch.ones_like(s))


def gamma_scales(gamma: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Outlier Suppression's Gamma Migration: s = |gamma| (the norm keeps only the sign)."""
    s = gamma.to(dtype).abs().clamp_min(MIN_SCALE)
    return torch.where(torch.isfinite(s), s, torch.ones_like(s))


def reduce_to_producer(values: torch.Tensor, index: torch.Tensor | None, width: int) -> torch.Tensor:
    """Max of per-consumer-channel values over the consumer channels reading each producer channel."""
    if index is None:
        return values
    out = torch.zeros(width, dtype=values.dtype, device=values.device)
    return out.scatter_reduce(0, index.to(values.device), values, reduce="amax", include_self=True)


def expand_to_consumer(scales: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    return scales if index is None else scales[index.to(scales.device)]
