"""Linears whose ranges no pair of per-tensor scales can cover: kept in floating point.

With one scale for a linear's input and one for its weight (O1-O3), the input step is
``max_j a_j / 127`` and the weight step ``max_j w_j / 127`` (``a_j``: calibrated absmax of input
channel ``j``, ``w_j``: absmax of weight column ``j``). Smoothing that input divides ``a_j`` and
multiplies ``w_j`` by the same ``s_j``, so the *range product* ``p_j = a_j w_j`` does not change:
whatever alpha, the two steps multiply to at least ``max_j p_j / 127^2``, while a typical channel
spans ``median_j p_j``. Where ``max / median`` of ``p`` is in the thousands, the typical channel
gets less than one level on one side or the other, for every alpha. That is not a tail: in
smollm2-135m six of 210 linears (the ``down_proj`` of layers 1, 2, 9, 11, 28, 29, which write and
then erase the attention sink's massive activation; layer 11's ratio is 2e5) carry most of O3's
loss, and every other linear's ratio is below 250.

Those linears are left in floating point (``Scheme.float_outliers``): mixed precision inside the
same checkpoint format, listed in its ``ignore``, as LLM.int8() does per column at run time.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from smoothquant.calibration.stats import ActStats
from smoothquant.errors import StatsMismatchError
from smoothquant.nn_utils import weight_oi


def range_product_ratio(module: nn.Module, input_absmax: torch.Tensor) -> float:
    """``max_j / median_j`` of ``a_j * w_j`` for one linear (channels where either side is zero
    are left out: they hold no range to cover)."""
    w = weight_oi(module).detach().abs().amax(0).float().cpu()
    p = input_absmax.float().cpu() * w
    p = p[p > 0]
    if p.numel() == 0:
        return 1.0
    return float(p.max() / p.median())


def range_outliers(targets: Mapping[str, nn.Module], stats: ActStats, ratio: float) -> list[str]:
    """The targets whose :func:`range_product_ratio` exceeds ``ratio``, measured on ``stats`` of
    the model as it is now (smoothed or not: the product does not depend on the smoothing of the
    linear's own input)."""
    unseen = [n for n in targets if n not in stats.inputs]
    if unseen:
        raise StatsMismatchError(
            f"float_outliers needs the input range of every quantized linear; none for {', '.join(unseen[:3])}"
        )
    return [n for n, m in targets.items() if range_product_ratio(m, stats.inputs[n]) > ratio]
