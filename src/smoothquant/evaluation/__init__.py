"""Evaluation: perplexity and fidelity to the floating-point model on fixed token windows."""

from smoothquant.evaluation.metrics import (
    EvalResult,
    EvaluationError,
    Reference,
    compare,
    perplexity,
    reference_pass,
)

__all__ = ["EvalResult", "EvaluationError", "Reference", "compare", "perplexity", "reference_pass"]
