"""Bad input gets a clear SmoothQuantError, and a failed call leaves the model untouched."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import smoothquant as sq
from smoothquant.errors import (
    ArgumentError,
    CalibrationError,
    QuantizationError,
    StatsMismatchError,
    UnsupportedModelError,
)
from tiny_models import tiny_batches, tiny_model


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model, before) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), k


def test_unsupported_family_names_the_supported_ones() -> None:
    config = AutoConfig.for_model("gptj", n_embd=64, n_layer=1, n_head=4, vocab_size=64, rotary_dim=8)
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(
        UnsupportedModelError, match=r"'gptj'.*Supported families: opt, bloom.*register_family"
    ):
        sq.resolve(model)
    stats = sq.calibrate(model, torch.randint(0, 64, (1, 8)), progress=False)  # still calibrates
    with pytest.raises(UnsupportedModelError):
        sq.smooth(model, stats)
    with pytest.raises(UnsupportedModelError):
        sq.quantize(model, "w8a8")


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), "0.5", True, {"*": 2.0}])
def test_alpha_outside_unit_interval(alpha) -> None:
    model = tiny_model("llama")
    stats = sq.calibrate(model, tiny_batches(), progress=False)
    before = _state(model)
    with pytest.raises(ArgumentError, match=r"alpha must be a number in \[0, 1\]"):
        sq.smooth(model, stats, alpha=alpha)
    _assert_unchanged(model, before)


def test_alpha_mapping_must_cover_every_group() -> None:
    model = tiny_model("llama")
    stats = sq.calibrate(model, tiny_batches(), progress=False)
    with pytest.raises(
        ArgumentError, match=r"no alpha given for smoothing group 'model\.layers\.0\.attn_in'"
    ):
        sq.smooth(model, stats, alpha={"*.mlp_in": 0.5})


def test_statistics_from_another_model() -> None:
    llama = tiny_model("llama")
    qwen_stats = sq.calibrate(tiny_model("opt"), tiny_batches(), progress=False)
    before = _state(llama)
    with pytest.raises(StatsMismatchError, match=r"from opt.*do not match this model.*missing"):
        sq.smooth(llama, qwen_stats)
    _assert_unchanged(llama, before)


def test_statistics_with_wrong_shapes() -> None:
    model = tiny_model("llama")
    stats = sq.calibrate(model, tiny_batches(), progress=False)
    stats.inputs["model.layers.1.mlp.up_proj"] = torch.ones(7)
    before = _state(model)
    with pytest.raises(StatsMismatchError, match=r"shape mismatch.*model.layers.1.mlp.up_proj: \(7,\) vs 64"):
        sq.smooth(model, stats)
    _assert_unchanged(model, before)
    with pytest.raises(StatsMismatchError, match="shape mismatch"):
        sq.quantize(model, "O3", stats)
    _assert_unchanged(model, before)


@pytest.mark.parametrize(
    "data", [[], torch.zeros(0, dtype=torch.long), [torch.zeros(2, 0, dtype=torch.long)], None]
)
def test_empty_calibration_data(data) -> None:
    with pytest.raises(CalibrationError, match="empty"):
        sq.calibrate(tiny_model("llama"), data, progress=False)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (torch.randn(2, 8), "integer token ids"),
        (torch.randint(0, 10_000, (2, 8)), "vocabulary has 128 entries"),
        ({"attention_mask": torch.ones(2, 3)}, "no 'input_ids'"),
        ("some text", "cannot use str"),
    ],
)
def test_malformed_calibration_data(data, match: str) -> None:
    with pytest.raises(CalibrationError, match=match):
        sq.calibrate(tiny_model("llama"), data, progress=False)


def test_static_scheme_without_stats() -> None:
    model = tiny_model("llama")
    before = _state(model)
    with pytest.raises(StatsMismatchError, match="pass stats=calibrate"):
        sq.quantize(model, "O3")
    _assert_unchanged(model, before)


def test_quantizing_twice() -> None:
    model = sq.quantize(tiny_model("llama"), "w8a8")
    with pytest.raises(QuantizationError, match="already quantized"):
        sq.quantize(model, "w8a8")


def test_nan_activations_at_run_time() -> None:
    model = sq.quantize(tiny_model("llama", dtype=torch.float32), "w8a8")
    with torch.no_grad():
        model.model.layers[0].input_layernorm.weight[0] = float("nan")
        with pytest.raises(QuantizationError, match="NaN or inf"):
            model(tiny_batches())
