"""``X^T X`` of linears' calibration inputs: the statistics GPTQ rounding needs.

Measured on the model as it will be quantized (after smoothing), in one forward pass over the
calibration data. Each matrix is ``in_features^2`` float32 on the model's device: about 0.7 GB per
Llama-2-7B block, so a whole 7B model needs room for ~22 GB of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from smoothquant.calibration.batches import Batches, make_batches
from smoothquant.calibration.calibrate import calibration_rows, vocab_size
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


@contextlib.contextmanager
def observing(root: nn.Module, observers: Mapping[str, Any], prefix: str = "") -> Iterator[Mapping[str, Any]]:
    """Run each observer as a forward hook of the named module under ``root`` (names are full
    model names; ``prefix``: the name of ``root`` itself) while the block is entered."""
    cut = len(prefix) + 1 if prefix else 0
    handles = [root.get_submodule(name[cut:]).register_forward_hook(obs) for name, obs in observers.items()]
    try:
        yield observers
    finally:
        for h in handles:
            h.remove()


def hessian_hooks(root: nn.Module, names: Iterable[str], prefix: str = ""):
    """Collect ``X^T X`` of the inputs of the named linears under ``root`` while it runs."""
    return observing(root, {name: _Hessian() for name in names}, prefix)


@torch.no_grad()
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
    rows = calibration_rows(batches, seq_len, num_samples, vocab_size(model))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with hessian_hooks(model, list(names)) as observers:
            todo = make_batches(rows, batch_size)
            for ids in tqdm(todo, desc="hessians", unit="batch", disable=not progress, leave=False):
                model(input_ids=ids.to(device), use_cache=False)
    finally:
        model.train(was_training)
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
