"""Quantization formats (schemes), the INT8 math, and simulated-INT8 modules."""

from smoothquant.quantization.apply import quantization_targets, quantize
from smoothquant.quantization.clip import search_input_clip
from smoothquant.quantization.fake import FakeQuantLinear
from smoothquant.quantization.scheme import PRESETS, QMAX, ActQuant, Scheme, WeightQuant, get_scheme

__all__ = [
    "PRESETS",
    "QMAX",
    "ActQuant",
    "FakeQuantLinear",
    "Scheme",
    "WeightQuant",
    "get_scheme",
    "quantization_targets",
    "quantize",
    "search_input_clip",
]
