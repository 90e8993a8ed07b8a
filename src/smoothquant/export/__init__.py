"""Save and load quantized models: compressed-tensors W8A8 INT8 checkpoints (what vLLM serves)."""

from smoothquant.export.load import load
from smoothquant.export.oneshot import ExportSummary, quantize_and_save
from smoothquant.export.save import save_quantized

__all__ = ["ExportSummary", "load", "quantize_and_save", "save_quantized"]
