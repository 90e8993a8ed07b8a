"""Smoothing: statistics -> per-channel scales folded into norms and linears."""

from smoothquant.smoothing.scales import smoothing_scales
from smoothquant.smoothing.smooth import resolve_alphas, smooth

__all__ = ["resolve_alphas", "smooth", "smoothing_scales"]
