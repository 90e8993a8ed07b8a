"""Save and load quantized models: compressed-tensors W8A8 INT8 checkpoints (what vLLM serves)."""

from smoothquant.export.load import load
from smoothquant.export.save import save_quantized
from smoothquant.export.summary import ExportSummary, QuantizeSummary

__all__ = ["ExportSummary", "QuantizeSummary", "load", "save_quantized"]
