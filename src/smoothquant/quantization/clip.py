"""Static input ranges below the calibrated absmax, chosen by each linear's output error.

A static (O3) input scale covers the largest value any calibration token reached. After
smoothing, that maximum often belongs to a handful of tokens (attention sinks, a rare outlier
channel) while every other token uses a fraction of the 255 levels. A smaller range clips those
few values and gives the rest a finer step. Which factor wins differs per linear, so each one is
measured: one pass over the calibration data with a hook per linear that quantizes its input
with every candidate range and accumulates the error of the linear's (float-weight) output,
per token relative to the token's own output (the next norm rescales every token to one size).
Nothing is stored per token; the cost is one matmul per candidate per linear and batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from smoothquant.calibration.batches import Batches
from smoothquant.calibration.calibrate import observed_pass
from smoothquant.calibration.stats import ActStats
from smoothquant.errors import ArgumentError, StatsMismatchError
from smoothquant.nn_utils import weight_oi
from smoothquant.quantization.quantizer import round_clamp, scale_from_absmax

# 1.0 .. 0.5: smaller ranges clip the sink tokens' values so hard that the model breaks although
# each linear's own error keeps falling (smollm2 O3 with factors down to 0.1: docs/auto-alpha.md)
CLIP_GRID: tuple[float, ...] = tuple(round(1.0 - 0.05 * i, 2) for i in range(11))


class _ClipError:
    """Per candidate factor: sum over tokens of ``|Q(x) W^T - x W^T|^2 / |x W^T|^2``."""

    def __init__(self, absmax: float, grid: Sequence[float]) -> None:
        self.scales = [scale_from_absmax(torch.tensor(absmax * c)) for c in grid]
        self.errors = torch.zeros(len(grid), dtype=torch.float64)

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        x = args[0].detach()
        x = x.reshape(-1, x.shape[-1]).float()
        if x.shape[0] == 0:
            return
        w = weight_oi(module).detach().float()
        ref = (x @ w.T).pow(2).sum(-1)
        den = ref.clamp_min(1e-3 * float(ref.median()) + 1e-30)
        for i, s in enumerate(self.scales):
            s = s.to(x.device)
            diff = (round_clamp(x, s) * s - x) @ w.T
            self.errors[i] += float((diff.pow(2).sum(-1) / den).sum())


def search_input_clip(
    model: nn.Module,
    batches: Batches,
    names: Iterable[str],
    stats: ActStats,
    *,
    grid: Sequence[float] = CLIP_GRID,
    seq_len: int | None = None,
    batch_size: int = 1,
    num_samples: int | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """name -> the factor of ``grid`` to multiply the static input range (``stats``' absmax of the
    model as it is now, i.e. after smoothing) by, for every named linear.

    Pass the result as ``quantize(..., input_clip=...)``; ``quantize_model(..., ranges="search")``
    does both."""
    grid = tuple(float(c) for c in grid)
    if not grid or any(not 0.0 < c <= 1.0 for c in grid):
        raise ArgumentError(f"clip factors must be in (0, 1], got {list(grid)!r}")
    names = list(names)
    unseen = [n for n in names if n not in stats.inputs]
    if unseen:
        raise StatsMismatchError(f"no calibrated input range for {', '.join(unseen[:3])}")
    observers = {n: _ClipError(float(stats.inputs[n].max()), grid) for n in names}
    observed_pass(
        model,
        batches,
        observers,
        desc="input ranges",
        seq_len=seq_len,
        batch_size=batch_size,
        num_samples=num_samples,
        progress=progress,
    )
    return {n: grid[int(obs.errors.argmin())] for n, obs in observers.items()}
