"""smoothquant: SmoothQuant W8A8 post-training quantization for large language models.

The public API is a handful of functions, in the order data flows through them::

    stats = smoothquant.calibrate(model, batches)          # activation statistics
    smoothed = smoothquant.smooth(model, stats, alpha=0.5)  # migrate outliers into weights
    smoothquant.quantize(model, "O3", smoothed)             # W8A8 (simulated) linears

or all three at once with :func:`quantize_model`; ``convert(model)`` then runs the quantized
linears on INT8 kernels, ``save_quantized(result, "out")`` writes a compressed-tensors checkpoint
(what vLLM serves) and ``load("out")`` reads one back onto the INT8 runtime.
``quantize_checkpoint("folder", "out", calib_ids)`` writes the same checkpoint from a model too
large for memory, one decoder layer at a time.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from smoothquant.version import __version__

# Public name -> the module that defines it. Importing ``smoothquant`` imports none of them (they
# pull in torch and transformers, seconds of CPU): a name is imported on first use (PEP 562), so
# ``smoothquant --help`` and argument errors stay fast.
_EXPORTS = {
    "ActStats": "smoothquant.calibration",
    "calibrate": "smoothquant.calibration",
    "SmoothQuantError": "smoothquant.errors",
    "load": "smoothquant.export",
    "quantize_and_save": "smoothquant.oneshot",
    "save_quantized": "smoothquant.export",
    "prepare_model": "smoothquant.families",
    "resolve": "smoothquant.families",
    "supported_families": "smoothquant.families",
    "LayerwiseSummary": "smoothquant.layerwise",
    "quantize_checkpoint": "smoothquant.layerwise",
    "QuantizationResult": "smoothquant.recipe",
    "Recipe": "smoothquant.recipe",
    "quantize_model": "smoothquant.pipeline",
    "PRESETS": "smoothquant.quantization",
    "ActQuant": "smoothquant.quantization",
    "FakeQuantLinear": "smoothquant.quantization",
    "Scheme": "smoothquant.quantization",
    "WeightQuant": "smoothquant.quantization",
    "get_scheme": "smoothquant.quantization",
    "quantize": "smoothquant.quantization",
    "convert": "smoothquant.runtime",
    "AlphaSearch": "smoothquant.search",
    "alphas_from_recipe": "smoothquant.search",
    "search_alpha": "smoothquant.search",
    "smooth": "smoothquant.smoothing",
}

if TYPE_CHECKING:  # what type checkers and IDEs see; nothing runs at import time
    from smoothquant.calibration import ActStats, calibrate
    from smoothquant.errors import SmoothQuantError
    from smoothquant.export import load, save_quantized
    from smoothquant.families import prepare_model, resolve, supported_families
    from smoothquant.layerwise import LayerwiseSummary, quantize_checkpoint
    from smoothquant.oneshot import quantize_and_save
    from smoothquant.pipeline import quantize_model
    from smoothquant.quantization import (
        PRESETS,
        ActQuant,
        FakeQuantLinear,
        Scheme,
        WeightQuant,
        get_scheme,
        quantize,
    )
    from smoothquant.recipe import QuantizationResult, Recipe
    from smoothquant.runtime import convert
    from smoothquant.search import AlphaSearch, alphas_from_recipe, search_alpha
    from smoothquant.smoothing import smooth

    load_stats = ActStats.load


def __getattr__(name: str) -> Any:
    if name == "load_stats":
        value = __getattr__("ActStats").load
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module 'smoothquant' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "PRESETS",
    "ActQuant",
    "ActStats",
    "AlphaSearch",
    "FakeQuantLinear",
    "LayerwiseSummary",
    "QuantizationResult",
    "Recipe",
    "Scheme",
    "SmoothQuantError",
    "WeightQuant",
    "__version__",
    "alphas_from_recipe",
    "calibrate",
    "convert",
    "get_scheme",
    "load",
    "load_stats",
    "prepare_model",
    "quantize",
    "quantize_and_save",
    "quantize_checkpoint",
    "quantize_model",
    "resolve",
    "save_quantized",
    "search_alpha",
    "smooth",
    "supported_families",
]
