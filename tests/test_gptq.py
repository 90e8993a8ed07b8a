"""GPTQ weight rounding: same format, lower output error on the data it was fitted to."""

from __future__ import annotations

import copy

import pytest
import torch

import smoothquant as sq
from smoothquant.calibration import collect_hessians
from smoothquant.errors import CalibrationError, QuantizationError
from smoothquant.quantization import WeightQuant
from smoothquant.quantization.gptq import column_scales, gptq_round, round_weights
from smoothquant.quantization.quantizer import dequantize_weight, quantize_weight
from tiny_models import tiny_batches, tiny_model

SPECS = [WeightQuant("tensor"), WeightQuant("channel"), WeightQuant("group", group_size=16)]


def _correlated_inputs(tokens: int, dim: int, seed: int) -> torch.Tensor:
    """Inputs with correlated channels and one large channel, like a linear's real inputs (GPTQ
    gains nothing on white noise, where H is a multiple of the identity)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(dim, dim, generator=g) / dim**0.5 + torch.eye(dim)
    x = torch.randn(tokens, dim, generator=g) @ mix
    x[:, 5] *= 20
    return x


def _weight(out_f: int, in_f: int, seed: int) -> torch.Tensor:
    w = torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(seed)) * 0.05
    w[3, 7] = 1.5  # one large weight sets a coarse per-tensor step, as in real down_proj
    return w


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.granularity)
@pytest.mark.parametrize("shape", [(24, 40), (33, 50)])
def test_gptq_lowers_output_error_keeps_format(spec: WeightQuant, shape: tuple[int, int]) -> None:
    out_f, in_f = shape
    w = _weight(out_f, in_f, seed=in_f)
    x = _correlated_inputs(512, in_f, seed=1)
    q_near, scale = quantize_weight(w, spec)
    q_gptq = gptq_round(
        w, x.T @ x, column_scales(scale, spec, out_f, in_f), act_order=spec.granularity != "group"
    )
    assert q_gptq.dtype == torch.int8 and q_gptq.shape == w.shape
    assert int(q_gptq.abs().max()) <= 127

    def output_error(q: torch.Tensor) -> float:
        deq = dequantize_weight(q, scale, spec)
        return float(((deq - w) @ x.T).norm() / (w @ x.T).norm())

    near, gptq = output_error(q_near), output_error(q_gptq)
    # measured: 1.6x-2.3x lower on these shapes and granularities; ask for 1.3x
    assert gptq < near / 1.3, (near, gptq)
    # the large weight is kept (no clipping): at most one step from its nearest integer, 127
    assert abs(int(q_gptq[3, 7])) >= 126


def test_gptq_on_white_inputs_stays_close_to_nearest() -> None:
    """With H = c * I there is nothing to compensate: GPTQ is round-to-nearest."""
    w = _weight(16, 32, seed=3)
    spec = WeightQuant("channel")
    q_near, scale = quantize_weight(w, spec)
    q = gptq_round(w, torch.eye(32) * 7.0, column_scales(scale, spec, 16, 32))
    assert torch.equal(q, q_near)


def test_dead_inputs_and_shared_hessians() -> None:
    """Inputs that are always zero get weight 0; linears sharing one input are rounded stacked,
    with the same result as one by one."""
    spec = WeightQuant("tensor")
    x = _correlated_inputs(256, 24, seed=2)
    x[:, 4] = 0
    h = x.T @ x
    ws = {n: _weight(8 + i, 24, seed=i) for i, n in enumerate(("q", "k", "v"))}
    weights = {n: (w, quantize_weight(w, spec)[1]) for n, w in ws.items()}
    stacked = round_weights(weights, spec, {n: h.clone() for n in ws})
    for n, (w, scale) in weights.items():
        alone = gptq_round(w, h, column_scales(scale, spec, *w.shape))
        assert torch.equal(stacked[n][0], alone)
        assert torch.equal(stacked[n][1], scale)  # no search: the absmax scale is kept
        assert (stacked[n][0][:, 4] == 0).all()


def test_collect_hessians_is_xtx_of_the_linear_input() -> None:
    model = tiny_model("llama", dtype=torch.float32)
    ids = tiny_batches(3, 16)
    name = "model.layers.1.mlp.down_proj"
    seen = []
    handle = model.get_submodule(name).register_forward_hook(lambda m, a, o: seen.append(a[0].detach()))
    hs = collect_hessians(model, ids, [name, "model.layers.0.self_attn.q_proj"], progress=False)
    handle.remove()
    x = torch.cat([s.reshape(-1, s.shape[-1]) for s in seen])
    assert torch.allclose(hs[name], x.T @ x, rtol=1e-4, atol=1e-5)
    assert hs["model.layers.0.self_attn.q_proj"].shape == (64, 64)


def _logit_error(model, rounding: str, scheme: str, held_out) -> float:
    with torch.no_grad():
        ref = model(held_out).logits
    q = copy.deepcopy(model)
    result = sq.quantize_model(
        q, tiny_batches(8, 32, seed=1), scheme, 0.5, weight_rounding=rounding, progress=False
    )
    assert result.recipe()["weight_rounding"] == rounding
    with torch.no_grad():
        out = q(held_out).logits
    return float((out - ref).norm() / ref.norm())


@pytest.mark.parametrize("scheme", ["O1", "w8a8"])
def test_gptq_rounding_lowers_the_model_error(scheme: str) -> None:
    model = tiny_model("llama", dtype=torch.float32)
    held_out = tiny_batches(4, 32, seed=2)
    near = _logit_error(model, "nearest", scheme, held_out)
    gptq = _logit_error(model, "gptq", scheme, held_out)
    # measured on this model: O1 0.0108 -> 0.0100, w8a8 0.0088 -> 0.0069 (held-out tokens)
    assert gptq < near, (near, gptq)


def test_gptq_rounding_bad_input() -> None:
    model = tiny_model("llama", dtype=torch.float32)
    with pytest.raises(CalibrationError, match="calibration data"):
        sq.quantize_model(model, None, "w8a8", weight_rounding="gptq", progress=False)
    with pytest.raises(QuantizationError, match=r"LLM\.int8"):
        sq.quantize_model(model, tiny_batches(), "llm.int8", weight_rounding="gptq", progress=False)
    with pytest.raises(QuantizationError, match="weight rounding must be"):
        sq.quantize_model(model, tiny_batches(), "w8a8", weight_rounding="stochastic", progress=False)
    wrong = {"model.layers.0.mlp.down_proj": torch.eye(7)}
    with pytest.raises(QuantizationError, match="another model"):
        sq.quantize(copy.deepcopy(model), "w8a8", hessians=wrong)
    assert not any(isinstance(m, sq.FakeQuantLinear) for m in model.modules())
