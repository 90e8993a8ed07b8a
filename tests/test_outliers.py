"""``Scheme.float_outliers``: linears whose range product no two per-tensor scales can cover stay in
floating point; the product is invariant under smoothing, so the choice does not depend on alpha."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

import smoothquant as sq
from smoothquant.errors import SchemeError, StatsMismatchError
from smoothquant.quantization import get_scheme, quantization_targets
from smoothquant.quantization.outliers import range_outliers, range_product_ratio
from tiny_models import tiny_batches, tiny_model

PLANTED = "model.layers.1.mlp.down_proj"


def _ratios(model: nn.Module, stats: sq.ActStats) -> dict[str, float]:
    return {n: range_product_ratio(m, stats.inputs[n]) for n, m in quantization_targets(model).items()}


@pytest.mark.parametrize("alpha", [0.2, 0.8])
def test_range_product_does_not_depend_on_the_smoothing_of_the_input(alpha):
    model = tiny_model("llama", dtype=torch.float64)
    stats = sq.calibrate(model, tiny_batches(), progress=False)
    before = _ratios(model, stats)
    smoothed = sq.smooth(model, stats, alpha=alpha, linear_pairs=True)
    after = _ratios(model, smoothed)
    # down_proj (input smoothed by the up_proj pair) and q_proj (by the norm) keep their output rows
    checked = [n for n in before if n.endswith(("down_proj", "q_proj"))]
    assert len(checked) == 4
    for n in checked:
        assert after[n] == pytest.approx(before[n], rel=1e-5)  # statistics are kept in float32
    # the smoothing did change each factor of the product
    assert not torch.allclose(stats.inputs[checked[0]], smoothed.inputs[checked[0]])


def test_only_the_linear_above_the_ratio_stays_float():
    model = tiny_model("llama", dtype=torch.float32)
    with torch.no_grad():  # one huge weight column, as in smollm2's sink-writing down_proj
        model.get_submodule(PLANTED).weight[:, 5] *= 500.0
    batches = tiny_batches()
    stats = sq.calibrate(model, batches, progress=False)
    smoothed = sq.smooth(model, stats, alpha=0.5, linear_pairs=True)
    ratios = _ratios(model, smoothed)
    planted = ratios.pop(PLANTED)
    assert planted > 5 * max(ratios.values())
    threshold = (planted * max(ratios.values())) ** 0.5
    assert range_outliers(quantization_targets(model), smoothed, threshold) == [PLANTED]
    scheme = replace(get_scheme("O3"), float_outliers=threshold)
    float_weight = model.get_submodule(PLANTED).weight.detach().clone()
    sq.quantize(model, scheme, smoothed)
    kept = model.get_submodule(PLANTED)
    assert type(kept) is nn.Linear and torch.equal(kept.weight, float_weight)
    quantized = [n for n, m in model.named_modules() if isinstance(m, sq.FakeQuantLinear)]
    assert sorted(quantized) == sorted(ratios)


def test_without_the_option_everything_is_quantized():
    model = tiny_model("llama", dtype=torch.float32)
    stats = sq.calibrate(model, tiny_batches(), progress=False)
    sq.quantize(model, "O3", stats)
    assert not any(type(m) is nn.Linear and n != "lm_head" for n, m in model.named_modules())


def test_bad_ratio_and_missing_stats_are_clear_errors():
    with pytest.raises(SchemeError, match="must be > 1"):
        replace(get_scheme("O3"), float_outliers=1.0)
    model = tiny_model("llama", dtype=torch.float32)
    with pytest.raises(StatsMismatchError, match="pass stats"):
        sq.quantize(model, replace(get_scheme("O1"), float_outliers=100.0))
    assert not any(isinstance(m, sq.FakeQuantLinear) for m in model.modules())
