"""``quantize(..., keep_float=...)``: named linears stay in floating point, and the checkpoint lists
them in ``ignore`` (mixed precision without a new format)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import smoothquant as sq
from smoothquant.calibration import collect_hessians
from smoothquant.errors import QuantizationError
from smoothquant.pipeline import QuantizationResult
from smoothquant.quantization import get_scheme, quantization_targets, search_input_clip
from tiny_models import tiny_batches, tiny_model

KEPT = "model.layers.1.mlp.down_proj"


def test_kept_linears_stay_float_and_are_ignored_by_the_checkpoint(tmp_path):
    model = tiny_model("llama", dtype=torch.float32)
    batches = tiny_batches()
    stats = sq.calibrate(model, batches, progress=False)
    smoothed = sq.smooth(model, stats, alpha=0.5, linear_pairs=True)
    float_weight = model.get_submodule(KEPT).weight.detach().clone()
    names = quantization_targets(model)
    # Hessians and searched ranges measured for every target, the kept one included
    hessians = collect_hessians(model, batches, names, progress=False)
    clip = search_input_clip(model, batches, names, smoothed, progress=False)
    sq.quantize(model, "O3", smoothed, hessians=hessians, input_clip=clip, keep_float=[KEPT])
    kept = model.get_submodule(KEPT)
    assert type(kept) is nn.Linear and torch.equal(kept.weight, float_weight)
    quantized = [n for n, m in model.named_modules() if isinstance(m, sq.FakeQuantLinear)]
    assert len(quantized) == len(names) - 1 and KEPT not in quantized
    with torch.no_grad():
        expected = model(tiny_batches(seed=1)).logits
    result = QuantizationResult(model, get_scheme("O3"), stats, smoothed, weight_rounding="gptq")
    sq.save_quantized(result, tmp_path / "q")
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert KEPT in config["quantization_config"]["ignore"]
    loaded = sq.load(tmp_path / "q", backend=None)
    assert type(loaded.get_submodule(KEPT)) is nn.Linear
    with torch.no_grad():
        assert torch.equal(loaded(tiny_batches(seed=1)).logits, expected)


def test_unknown_kept_names_are_refused_before_any_change():
    model = tiny_model("llama", dtype=torch.float32)
    stats = sq.calibrate(model, tiny_batches(), progress=False)
    with pytest.raises(QuantizationError, match="keep_float names 1 modules"):
        sq.quantize(model, "O3", stats, keep_float=["model.layers.9.mlp.down_proj"])
    assert not any(isinstance(m, sq.FakeQuantLinear) for m in model.modules())
