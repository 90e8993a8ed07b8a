"""The whole method in one call: calibrate -> smooth -> quantize.

The three steps stay usable on their own; this module only strings them together the way a
scheme asks (baselines skip smoothing, clipping schemes recalibrate after it) and records what
was done, so export can write a recipe.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from smoothquant.calibration import ActStats, calibrate
from smoothquant.calibration.batches import Batches
from smoothquant.errors import CalibrationError
from smoothquant.quantization import Scheme, get_scheme, quantize
from smoothquant.smoothing import smooth
from smoothquant.smoothing.smooth import Alpha


@dataclass
class QuantizationResult:
    model: nn.Module
    scheme: Scheme
    stats: ActStats | None
    smoothed_stats: ActStats | None
    alpha: dict[str, float | None] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def recipe(self) -> dict[str, Any]:
        """What was applied, JSON-serialisable (scheme, alpha per group, calibration size)."""
        s = self.scheme
        return {
            "scheme": s.name,
            "weights": vars(s.weights),
            "inputs": vars(s.inputs),
            "outputs": vars(s.outputs) if s.outputs else None,
            "outlier_threshold": s.outlier_threshold,
            "migration": s.migration,
            "alpha": self.alpha,
            "calibration": {k: self.stats.meta.get(k) for k in ("num_tokens", "num_sequences")}
            if self.stats
            else None,
        }


def quantize_model(
    model: nn.Module,
    calibration: Batches | None = None,
    scheme: str | Scheme = "w8a8",
    alpha: Alpha = 0.5,
    *,
    linear_pairs: bool = False,
    stats: ActStats | None = None,
    seq_len: int | None = 512,
    batch_size: int = 1,
    num_samples: int | None = None,
    quantize_bmm_inputs: bool = False,
    quantize_lm_head: bool = False,
    progress: bool = True,
) -> QuantizationResult:
    """Calibrate (unless ``stats`` are given), smooth as the scheme says, and quantize in place.

    Dynamic baselines (``naive``, ``zeroquant``, ``llm.int8``) need no calibration data.
    """
    scheme = get_scheme(scheme, quantize_bmm_inputs=quantize_bmm_inputs)
    seconds: dict[str, float] = {}
    calib_kwargs = dict(seq_len=seq_len, batch_size=batch_size, num_samples=num_samples, progress=progress)
    if stats is None and scheme.needs_calibration:
        if calibration is None:
            raise CalibrationError(f"scheme {scheme.name} needs calibration data (or precomputed stats)")
        t = time.perf_counter()
        stats = calibrate(model, calibration, token_histograms=scheme.needs_token_histograms, **calib_kwargs)
        seconds["calibrate"] = time.perf_counter() - t
    smoothed = stats
    applied: dict[str, float | None] = {}
    if scheme.migration != "none":
        t = time.perf_counter()
        method = "gamma" if scheme.migration == "gamma" else "smoothquant"
        smoothed = smooth(model, stats, alpha, linear_pairs=linear_pairs, method=method)
        applied = smoothed.meta["smoothing"]["alpha"]
        seconds["smooth"] = time.perf_counter() - t
        if scheme.needs_token_histograms:
            # token histograms of the smoothed model cannot be derived; measure them
            t = time.perf_counter()
            smoothed = calibrate(model, calibration, token_histograms=True, **calib_kwargs)
            seconds["recalibrate"] = time.perf_counter() - t
    t = time.perf_counter()
    quantize(model, scheme, smoothed, quantize_lm_head=quantize_lm_head)
    seconds["quantize"] = time.perf_counter() - t
    return QuantizationResult(model, scheme, stats, smoothed, applied, seconds)
