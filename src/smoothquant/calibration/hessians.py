"""``X^T X`` of linears' calibration inputs: the statistics GPTQ rounding needs.

Measured on the model as it will be quantized (after smoothing), in one forward pass over the
calibration data. Each matrix is ``in_features^2`` float32 on the model's device: about 0.7 GB per
Llama-2-7B block, so a whole 7B model needs room for ~22 GB of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from smoothquant.calibration.batches import Batches
from smoothquant.calibration.calibrate import hooked, observed_pass
from smoothquant.errors import CalibrationError


class _Hessian:
    """Running ``sum x^T x`` over the tokens a linear sees (float32, on the model's device)."""

    def __init__(self) -> None:
        self.h: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        x = args[0].detach()
        x = x.reshape(-1, x.shape[-1]).float()
        if x.shape[0] == 0:
            return
        xtx = x.T @ x
        self.h = xtx if self.h is None else self.h.add_(xtx)


def hessian_hooks(root: nn.Module, names: Iterable[str], prefix: str = ""):
    """Collect ``X^T X`` of the inputs of the named linears under ``root`` while it runs."""
    return hooked(root, {name: _Hessian() for name in names}, prefix)


def collect_hessians(
    model: nn.Module,
    batches: Batches,
    names: Iterable[str],
    *,
    seq_len: int | None = None,
    batch_size: int = 1,
    num_samples: int | None = None,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """``X^T X`` of the input of every named linear over the calibration data (one forward pass)."""
    observers = {name: _Hessian() for name in names}
    observed_pass(
        model,
        batches,
        observers,
        desc="hessians",
        seq_len=seq_len,
        batch_size=batch_size,
        num_samples=num_samples,
        progress=progress,
    )
    return hessians_of(observers)


def hessians_of(observers: Mapping[str, _Hessian]) -> dict[str, torch.Tensor]:
    """The collected matrices; linears that saw no token (unrouted experts) are left out."""
    out = {n: o.h for n, o in observers.items() if o.h is not None}
    bad = [n for n, h in out.items() if not torch.isfinite(h).all()]
    if bad:
        raise CalibrationError(
            f"activations overflowed (NaN/inf) at {', '.join(bad[:3])}: run in float32 or bfloat16"
        )
    return out
