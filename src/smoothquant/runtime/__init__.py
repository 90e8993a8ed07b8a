"""The INT8 runtime: functional W8A8 ops over three backends, ``Int8Linear``/``Int8Norm``
modules, and ``convert`` (fake-quant model -> model running on INT8 kernels)."""

from smoothquant.runtime.convert import ConversionReport, convert
from smoothquant.runtime.linear import Int8Linear
from smoothquant.runtime.norm import Int8Norm
from smoothquant.runtime.ops import BACKENDS, resolve_backend

__all__ = ["BACKENDS", "ConversionReport", "Int8Linear", "Int8Norm", "convert", "resolve_backend"]
