"""Text for calibration and evaluation: named corpora with fixed, non-overlapping splits, cut into
token windows."""

from smoothquant.data.sources import DATASETS, SPLITS, load_documents, load_text
from smoothquant.data.tokens import bos_prefix, calibration_batches, eval_windows, token_stream

__all__ = [
    "DATASETS",
    "SPLITS",
    "bos_prefix",
    "calibration_batches",
    "eval_windows",
    "load_documents",
    "load_text",
    "token_stream",
]
