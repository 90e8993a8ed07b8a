"""Calibration: model + data -> per-channel activation statistics (and, for GPTQ rounding, the
inputs' ``X^T X``; for searched ranges, each static input's best clip factor)."""

from smoothquant.calibration.calibrate import calibrate
from smoothquant.calibration.clip import search_input_clip
from smoothquant.calibration.hessians import collect_hessians
from smoothquant.calibration.stats import ActStats

__all__ = ["ActStats", "calibrate", "collect_hessians", "search_input_clip"]
