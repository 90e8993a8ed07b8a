"""A model-level check of the alpha search: keep its per-group alphas only where they pay.

The search scores each group (and each block) by the error of its own quantized output. Those
local errors do not always add up to the model's loss: on gemma3-270m O1 and qwen2.5-0.5b W8A8
(GPTQ, searched ranges) the searched alphas had the lower output error and KL, yet a single alpha
for the whole model gave the lower perplexity (docs/auto-alpha.md). So, when asked, the pipeline
builds the model once per candidate (the searched alphas and each single alpha of a small grid,
quantized exactly as the final model will be) and scores each by its next-token loss on the
calibration sequences. A single alpha replaces the searched alphas only when its calibration
perplexity is lower by more than :data:`MARGIN`: below that the difference is calibration noise
(on smollm2-135m O1 a 0.06% calibration gain of alpha 0.4 turned into a 0.2% loss on WikiText-2
test), and the per-group choice is the finer one. The final model is then within the margin of
every single alpha of the grid on the calibration data, at the price of one full quantization per
candidate; how that carries to held-out text is measured in docs/auto-alpha.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from smoothquant.calibration.batches import make_batches
from smoothquant.errors import ArgumentError
from smoothquant.quantization import Scheme

CHECK_GRID: tuple[float, ...] = (0.4, 0.5, 0.6, 0.7, 0.8)
MARGIN = 0.0025  # relative calibration perplexity a single alpha must gain to replace the search
SEARCHED = "searched"


@dataclass(frozen=True)
class Candidate:
    """One model the check builds: the searched alphas (``alpha`` None) or one alpha everywhere."""

    label: str
    alpha: float | None
    linear_pairs: bool


@dataclass
class ModelCheck:
    """``losses``: candidate label -> mean next-token loss (nats) on ``num_tokens`` calibration
    tokens; ``chosen``: the label kept."""

    losses: dict[str, float]
    chosen: str
    num_tokens: int
    seconds: float

    def summary(self) -> str:
        ranked = sorted(self.losses.items(), key=lambda kv: kv[1])
        cells = ", ".join(f"{k} {math.exp(v):.3f}" for k, v in ranked)
        return (
            f"model check ({len(self.losses)} candidates, {self.num_tokens} calibration tokens, "
            f"{self.seconds:.0f} s): kept {self.chosen}; calibration perplexity {cells}"
        )

    def to_recipe(self) -> dict:
        return {
            "chosen": self.chosen,
            "losses": {k: round(v, 6) for k, v in self.losses.items()},
            "num_tokens": self.num_tokens,
            "seconds": round(self.seconds, 3),
        }


def check_grid(grid: Sequence[float] | bool | None) -> tuple[float, ...]:
    """``True``: :data:`CHECK_GRID`; ``None``/``False``/empty: no check; else the sorted alphas."""
    if grid is None or grid is False:
        return ()
    if grid is True:
        return CHECK_GRID
    try:
        values = tuple(sorted({float(a) for a in grid}))
    except (TypeError, ValueError):
        raise ArgumentError(f"check_alphas must be alphas in [0, 1] or True, got {grid!r}") from None
    if any(not 0.0 <= a <= 1.0 for a in values):
        raise ArgumentError(f"check_alphas must lie in [0, 1], got {list(values)}")
    return values


def candidates(scheme: Scheme, grid: tuple[float, ...], linear_pairs: bool) -> list[Candidate]:
    """The searched alphas first (ties keep them), then one candidate per single alpha.

    A single alpha smooths the linear -> linear pairs only where activations are scaled per
    tensor: on per-token schemes one alpha on ``up_proj -> down_proj`` costs precision in
    ``up_proj``'s rows and gains little (measured, docs/auto-alpha.md), while the search can
    switch each pair off by itself.
    """
    pairs = linear_pairs and scheme.inputs.granularity == "tensor"
    return [Candidate(SEARCHED, None, linear_pairs)] + [
        Candidate(f"{a:g}{' pairs' if pairs else ''}", a, pairs) for a in grid
    ]


@torch.no_grad()
def calibration_loss(model: nn.Module, rows: list[torch.Tensor], batch_size: int = 1) -> tuple[float, int]:
    """Mean next-token cross-entropy of ``model`` over ``rows`` and the number of tokens scored."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for ids in make_batches(rows, batch_size):
            ids = ids.to(device)
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
            for b in range(ids.shape[0]):
                total += float(F.cross_entropy(logits[b].float(), ids[b, 1:], reduction="sum"))
                count += ids.shape[1] - 1
    finally:
        model.train(was_training)
    return total / max(count, 1), count


def choose(losses: dict[str, float], num_tokens: int, seconds: float, margin: float = MARGIN) -> ModelCheck:
    """The searched alphas, unless a single alpha's calibration perplexity is lower by more than
    ``margin`` (relative); then the lowest-loss single alpha (the first of equals)."""
    bar = losses[SEARCHED] - math.log1p(margin)
    better = [k for k in losses if k != SEARCHED and losses[k] < bar]
    best = min(better, key=lambda k: losses[k]) if better else SEARCHED
    return ModelCheck(dict(losses), best, num_tokens, seconds)
