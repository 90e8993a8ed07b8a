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

from smoothquant.calibration import ActStats, calibrate
from smoothquant.errors import SmoothQuantError
from smoothquant.export import load, quantize_and_save, save_quantized
from smoothquant.families import prepare_model, resolve, supported_families
from smoothquant.layerwise import LayerwiseSummary, quantize_checkpoint
from smoothquant.pipeline import QuantizationResult, quantize_model
from smoothquant.quantization import (
    PRESETS,
    ActQuant,
    FakeQuantLinear,
    Scheme,
    WeightQuant,
    get_scheme,
    quantize,
)
from smoothquant.runtime import convert
from smoothquant.search import AlphaSearch, alphas_from_recipe, search_alpha
from smoothquant.smoothing import smooth

__version__ = "0.1.0"

load_stats = ActStats.load

__all__ = [
    "PRESETS",
    "ActQuant",
    "ActStats",
    "AlphaSearch",
    "FakeQuantLinear",
    "LayerwiseSummary",
    "QuantizationResult",
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
