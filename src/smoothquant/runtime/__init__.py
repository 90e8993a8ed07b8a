"""The INT8 runtime: functional W8A8 ops over three backends, ``Int8Linear``/``Int8Norm``/
``Int8GatedMLP`` modules and sibling GEMMs, ``convert`` (fake-quant model -> model running on
INT8 kernels), and the optional INT8 KV cache (``enable_int8_kv_cache`` with
``Int8StaticCache``/``Int8DynamicCache``)."""

from smoothquant.runtime.convert import ConversionReport, convert
from smoothquant.runtime.kv_cache import Int8DynamicCache, Int8StaticCache, enable_int8_kv_cache
from smoothquant.runtime.linear import Int8Linear
from smoothquant.runtime.mlp import Int8GatedMLP
from smoothquant.runtime.norm import Int8Norm
from smoothquant.runtime.ops import BACKENDS, resolve_backend

__all__ = [
    "BACKENDS",
    "ConversionReport",
    "Int8DynamicCache",
    "Int8GatedMLP",
    "Int8Linear",
    "Int8Norm",
    "Int8StaticCache",
    "convert",
    "enable_int8_kv_cache",
    "resolve_backend",
]
