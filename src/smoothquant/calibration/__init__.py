"""Calibration: model + data -> per-channel activation statistics."""

from smoothquant.calibration.calibrate import calibrate
from smoothquant.calibration.stats import ActStats

__all__ = ["ActStats", "calibrate"]
