"""End to end on tiny models: smoothing makes W8A8 accurate where naive W8A8 is not."""

from __future__ import annotations

import pytest
import torch

import smoothquant as sq
from smoothquant.errors import StatsMismatchError
from tiny_models import tiny_batches, tiny_model


def _planted_llama():
    """A tiny Llama whose input norms have one channel x100: a systematic activation outlier."""
    model = tiny_model("llama", dtype=torch.float32)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight[7] *= 100
    return model


def _logit_error(scheme: str) -> float:
    model = _planted_llama()
    calib, held_out = tiny_batches(8, 32, seed=1), tiny_batches(4, 32, seed=2)
    with torch.no_grad():
        ref = model(held_out).logits
    sq.quantize_model(model, calib, scheme, alpha=0.5, progress=False)
    with torch.no_grad():
        out = model(held_out).logits
    return ((out - ref).norm() / ref.norm()).item()


def test_smoothing_beats_naive_w8a8_on_a_planted_outlier() -> None:
    # measured: naive 0.138, O1 0.023, O2 0.049, O3 0.054 relative logit error
    naive = _logit_error("naive")
    for scheme in ("O1", "O2", "O3"):
        err = _logit_error(scheme)
        assert err < naive / 2, (scheme, err, naive)


def test_pipeline_result_and_recipe() -> None:
    model = tiny_model("qwen2", dtype=torch.float32)
    result = sq.quantize_model(model, tiny_batches(), "O3", alpha={"*.mlp_in": 0.8, "*": 0.5}, progress=False)
    recipe = result.recipe()
    assert recipe["scheme"] == "O3" and recipe["inputs"]["dynamic"] is False
    assert recipe["alpha"]["model.layers.0.mlp_in"] == 0.8
    assert recipe["alpha"]["model.layers.1.attn_in"] == 0.5
    assert recipe["calibration"]["num_tokens"] == 4 * 16
    quantized = [m for m in model.modules() if isinstance(m, sq.FakeQuantLinear)]
    assert len(quantized) == 14 and all(m.input_scale is not None for m in quantized)


def test_dynamic_baselines_need_no_calibration_data() -> None:
    model = tiny_model("llama", dtype=torch.float32)
    result = sq.quantize_model(model, None, "zeroquant", progress=False)
    assert result.stats is None
    assert sum(isinstance(m, sq.FakeQuantLinear) for m in model.modules()) == 14


def test_static_scheme_refuses_stats_measured_before_smoothing() -> None:
    model = tiny_model("llama", dtype=torch.float32)
    stats = sq.calibrate(model, tiny_batches(), progress=False)
    sq.smooth(model, stats, alpha=0.5)
    with pytest.raises(StatsMismatchError, match="before its last smoothing"):
        sq.quantize(model, "O3", stats)


def test_smoothed_stats_work_for_static_quantization() -> None:
    model = tiny_model("llama", dtype=torch.float32)
    ids = tiny_batches()
    smoothed = sq.smooth(model, sq.calibrate(model, ids, progress=False), alpha=0.5)
    sq.quantize(model, "O3", smoothed, quantize_bmm_inputs=True)
    q = model.model.layers[0].self_attn.q_proj
    assert q.output_quant is not None and q.output_scale is not None
    assert model.model.layers[0].mlp.down_proj.output_quant is None  # only q/k/v outputs


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe"])
def test_moe_quantizes_experts_and_keeps_router_float(name: str) -> None:
    model = tiny_model(name, dtype=torch.float32)
    ids = tiny_batches(8, 16)
    with torch.no_grad():
        ref = model(ids).logits
    sq.quantize_model(model, ids, "w8a8", progress=False)
    mlp = model.model.layers[0].mlp
    assert not isinstance(mlp.gate, sq.FakeQuantLinear)
    assert not any(isinstance(m, torch.nn.Linear) for m in mlp.experts.modules())
    assert sum(isinstance(m, sq.FakeQuantLinear) for m in mlp.experts.modules()) == 3 * len(mlp.experts)
    with torch.no_grad():
        out = model(ids).logits
    assert ((out - ref).norm() / ref.norm()).item() < 0.05


def test_quantize_lm_head_on_request() -> None:
    model = tiny_model("llama", dtype=torch.float32)
    sq.quantize(model, "w8a8", quantize_lm_head=True)
    assert isinstance(model.lm_head, sq.FakeQuantLinear)
    assert isinstance(model.model.embed_tokens, torch.nn.Embedding)


def test_not_inplace_leaves_the_original_untouched() -> None:
    model = tiny_model("llama", dtype=torch.float32)
    copy = sq.quantize(model, "w8a8", inplace=False)
    assert copy is not model
    assert isinstance(model.model.layers[0].self_attn.q_proj, torch.nn.Linear)
    assert isinstance(copy.model.layers[0].self_attn.q_proj, sq.FakeQuantLinear)
