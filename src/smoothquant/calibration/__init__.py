"""Calibration: model + data -> per-channel activation statistics (and, for GPTQ rounding, the
inputs' ``X^T X``). Searched input ranges, which quantize, are in :mod:`smoothquant.quantization.clip`."""

from smoothquant.calibration.calibrate import calibrate
from smoothquant.calibration.hessians import collect_hessians
from smoothquant.calibration.stats import ActStats

__all__ = ["ActStats", "calibrate", "collect_hessians"]
