"""The INT8 quantizer math: error bounds, range, edge cases, and the simulated linear."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from smoothquant.errors import QuantizationError, SchemeError
from smoothquant.quantization import ActQuant, FakeQuantLinear, WeightQuant, get_scheme
from smoothquant.quantization.quantizer import (
    dequantize_weight,
    fake_quantize_activation,
    quantize_activation,
    quantize_weight,
)

WEIGHT_SPECS = [WeightQuant("tensor"), WeightQuant("channel"), WeightQuant("group", group_size=8)]
DYNAMIC_SPECS = [ActQuant("tensor"), ActQuant("token")]

shapes = st.tuples(st.integers(1, 9), st.integers(1, 37))
scales = st.floats(1e-3, 1e3)
seeds = st.integers(0, 2**31 - 1)


def _rand(shape, scale, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype) * scale
    if x.numel() > 2:  # an outlier, as LLM activations have
        x.view(-1)[seed % x.numel()] *= 50
    return x


@settings(max_examples=60, deadline=None)
@given(shape=shapes, scale=scales, seed=seeds, spec=st.sampled_from(WEIGHT_SPECS))
def test_weight_round_trip_error_is_half_a_step(shape, scale, seed, spec) -> None:
    w = _rand(shape, scale, seed)
    q, s = quantize_weight(w, spec)
    assert q.dtype == torch.int8 and q.shape == w.shape
    assert q.abs().max() <= 127
    deq = dequantize_weight(q, s, spec)
    step = dequantize_weight(torch.ones_like(q), s, spec)  # the scale that applies to each element
    assert torch.all((deq - w).abs() <= step / 2 * (1 + 1e-5) + 1e-12)
    # the largest element of each scaling unit maps to +-127 exactly
    assert (q.abs() == 127).any()


@settings(max_examples=60, deadline=None)
@given(shape=shapes, scale=scales, seed=seeds, spec=st.sampled_from(DYNAMIC_SPECS))
def test_dynamic_activation_round_trip(shape, scale, seed, spec) -> None:
    x = _rand(shape, scale, seed)
    q, s = quantize_activation(x, spec)
    assert q.abs().max() <= 127 and torch.equal(q, q.round())
    expected_shape = (shape[0], 1) if spec.granularity == "token" else (1,)
    assert s.shape == expected_shape
    assert torch.all((q * s - x).abs() <= s / 2 * (1 + 1e-5))


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=seeds, ratio=st.floats(0.1, 10.0))
def test_static_activation_clips_to_calibrated_range(shape, seed, ratio) -> None:
    x = _rand(shape, 1.0, seed)
    absmax = float(x.abs().max()) * ratio
    scale = torch.tensor([absmax / 127])
    y = fake_quantize_activation(x, ActQuant("tensor", dynamic=False), scale)
    assert y.abs().max() <= absmax * (1 + 1e-6)
    inside = x.abs() <= absmax
    assert torch.all((y - x)[inside].abs() <= absmax / 127 / 2 * (1 + 1e-5))
    if ratio < 0.99:  # values beyond the static range saturate at +-127 steps
        assert torch.allclose(y[~inside].abs(), torch.full_like(y[~inside], 127 * scale.item()))


@pytest.mark.parametrize("spec", [*DYNAMIC_SPECS])
def test_zero_and_constant_activations(spec: ActQuant) -> None:
    zero = torch.zeros(3, 5)
    q, s = quantize_activation(zero, spec)
    assert torch.equal(q, zero) and torch.isfinite(s).all() and (s > 0).all()
    const = torch.full((3, 5), -2.5)
    torch.testing.assert_close(fake_quantize_activation(const, spec), const)


@pytest.mark.parametrize("spec", WEIGHT_SPECS)
def test_zero_and_constant_weights(spec: WeightQuant) -> None:
    zero = torch.zeros(4, 20)
    q, s = quantize_weight(zero, spec)
    assert torch.equal(q, torch.zeros_like(q)) and torch.isfinite(s).all()
    const = torch.full((4, 20), 0.75)
    q, s = quantize_weight(const, spec)
    assert torch.equal(q, torch.full_like(q, 127))
    torch.testing.assert_close(dequantize_weight(q, s, spec), const)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_are_rejected(bad: float) -> None:
    x = torch.ones(2, 4)
    x[1, 2] = bad
    for spec in [*DYNAMIC_SPECS, ActQuant("tensor", dynamic=False)]:
        with pytest.raises(QuantizationError, match="NaN or inf"):
            quantize_activation(x, spec, torch.tensor([1 / 127]))
    with pytest.raises(QuantizationError, match="NaN or inf"):
        quantize_weight(x, WeightQuant("channel"))


def test_group_wise_handles_a_short_last_group() -> None:
    w = torch.randn(3, 19)
    w[:, 16:] *= 100  # the short last group has its own, larger scale
    spec = WeightQuant("group", group_size=8)
    q, s = quantize_weight(w, spec)
    assert s.shape == (3, 3)
    assert torch.all(s[:, 2] > s[:, 0])
    assert torch.all(
        (dequantize_weight(q, s, spec) - w).abs() <= s.repeat_interleave(8, 1)[:, :19] / 2 * 1.00001
    )


def test_scheme_validation() -> None:
    with pytest.raises(SchemeError):
        ActQuant("token", dynamic=False)
    with pytest.raises(SchemeError):
        WeightQuant("group")
    with pytest.raises(SchemeError):
        ActQuant("tensor", dynamic=True, clip_quantile=0.9)
    with pytest.raises(SchemeError, match="unknown scheme"):
        get_scheme("o4")
    assert get_scheme("LLM_INT8").name == "llm.int8"
    o3 = get_scheme("O3", quantize_bmm_inputs=True)
    assert o3.outputs == ActQuant("tensor", dynamic=False)


# ---- FakeQuantLinear equals the integer GEMM it simulates --------------------------------------
@pytest.mark.parametrize("weights", ["tensor", "channel"])
@pytest.mark.parametrize("acts", [ActQuant("token"), ActQuant("tensor"), ActQuant("tensor", dynamic=False)])
def test_fake_linear_equals_integer_gemm(weights: str, acts: ActQuant) -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 24)
    x = torch.randn(2, 5, 48) * 3
    absmax = float(x.abs().max()) * 0.8  # static range clips a little
    fake = FakeQuantLinear.from_float(lin, WeightQuant(weights), acts, input_absmax=absmax)
    xq, xs = fake.quantize_input(x)
    acc = xq.to(torch.int64) @ fake.qweight.to(torch.int64).t()  # exact integer accumulation
    ws = fake.weight_scale.reshape(1, -1) if weights == "channel" else fake.weight_scale
    expected = acc.double() * xs.double() * ws.double() + lin.bias.double()
    torch.testing.assert_close(fake(x).double(), expected, rtol=1e-5, atol=1e-5)


def test_llm_int8_keeps_outlier_columns_in_float() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 8, bias=False)
    x = torch.randn(4, 16) * 0.5
    x[:, 5] = 40.0  # an outlier column
    fake = FakeQuantLinear.from_float(lin, WeightQuant("channel"), ActQuant("token"), outlier_threshold=6.0)
    w = fake.dequantized_weight()
    regular = x.clone()
    regular[:, 5] = 0
    expected = fake_quantize_activation(regular, ActQuant("token")) @ w.t() + x[:, 5:6] * w[:, 5]
    torch.testing.assert_close(fake(x), expected)
    plain = FakeQuantLinear.from_float(lin, WeightQuant("channel"), ActQuant("token"))
    float_acts = x @ w.t()  # same quantized weights, activations unquantized
    assert (fake(x) - float_acts).norm() < 0.2 * (plain(x) - float_acts).norm()


def test_casting_the_model_keeps_scales_fp32() -> None:
    fake = FakeQuantLinear.from_float(
        torch.nn.Linear(8, 4), WeightQuant("channel"), ActQuant("tensor", False), input_absmax=3.0
    )
    fake.to(torch.bfloat16)
    assert fake.weight_scale.dtype == torch.float32 and fake.input_scale.dtype == torch.float32
    assert fake.bias.dtype == torch.bfloat16 and fake.qweight.dtype == torch.int8
    assert fake(torch.randn(3, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16
