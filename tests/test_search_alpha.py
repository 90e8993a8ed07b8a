"""alpha="auto": the per-group search picks planted optima, simulates the real pipeline exactly,
leaves the model alone, round-trips through recipes and rejects bad input clearly."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import smoothquant as sq
from smoothquant.errors import ArgumentError, CalibrationError, SchemeError
from smoothquant.search import DEFAULT_GRID
from smoothquant.search.alpha import _refine, output_error
from tiny_models import tiny_batches, tiny_model

DATA = tiny_batches(4, 16)


def _planted_opt(case: str):
    """A tiny OPT whose first attention group sees a planted constant input.

    The first LayerNorm gets weight 0 and bias ``b``, so every token's q/k/v input is exactly
    ``b``. Channel j has ``|b_j| = a_j`` and weight column maximum ``w_j`` (exact in fp32, so the
    statistics are exact too). Smoothing with alpha leaves activation channel maxima
    ``r_j^(1-alpha)`` and weight column maxima ``r_j^alpha``, where ``r_j = a_j * w_j``. INT8 with
    one scale represents a set of values exactly when they are integer multiples of max / 127:

    - ``"half"``: dense W, ``r_j`` in {1, 127^2}: only at alpha = 0.5 do both sides hold just 1
      and 127 (times a scale), so the quantized group is exact there and nowhere else.
    - ``"one"``: W with one entry per row (per-channel weight scales are then exact at any
      alpha), ``r_j`` in {1, 3}: activations are exact only at alpha = 1 (every channel +-1).
    - ``"off"``: dense W, ``a_j`` and ``w_j`` in {1, 127}: exact unsmoothed; every alpha mixes
      ``r_j`` in {1, 127, 127^2} into a side that cannot hold them.
    """
    model = tiny_model("opt", torch.float64)
    layer = model.model.decoder.layers[0]
    h = layer.self_attn_layer_norm.weight.numel()
    g = torch.Generator().manual_seed(3)
    j = torch.arange(h).double()
    if case == "half":
        small = j % 4 != 0
        a = torch.where(small, 2.0 ** (j % 3 - 2), 2.0 ** (j % 3 + 5))
        w = torch.where(small, 1.0, 127.0**2) / a
    elif case == "one":
        a = 2.0 ** (j % 5 - 2)
        w = torch.where(j % 2 == 0, 1.0, 3.0) / a
    else:
        a = torch.where(j % 2 == 0, 1.0, 127.0)
        w = torch.where(j % 4 < 2, 1.0, 127.0)
    sign = torch.where(torch.rand(h, generator=g) < 0.5, -1.0, 1.0).double()
    with torch.no_grad():
        layer.self_attn_layer_norm.weight.zero_()
        layer.self_attn_layer_norm.bias.copy_(a * sign)
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
            signs = torch.where(torch.rand(proj.weight.shape, generator=g) < 0.5, -1.0, 1.0).double()
            if case == "one":
                proj.weight.copy_(torch.diag(w)[torch.randperm(h, generator=g)] * signs)
            else:
                proj.weight.copy_(w[None, :] * signs)
    return model


@pytest.mark.parametrize(
    ("scheme", "case", "best", "exhaustive"),
    [
        # alpha = 0.5 is an isolated spike on a flat curve: only a full grid finds it
        *[(scheme, "half", 0.5, True) for scheme in ("O1", "O3", "w8a8")],
        ("w8a8", "one", 1.0, True),
        ("w8a8", "one", 1.0, False),
        *[
            (scheme, "off", None, exhaustive)
            for scheme in ("O1", "O3", "w8a8")
            for exhaustive in (True, False)
        ],
    ],
)
def test_search_finds_planted_optimum(scheme, case, best, exhaustive):
    model = _planted_opt(case)
    result = sq.search_alpha(
        model,
        DATA,
        scheme,
        linear_pairs=False,
        seq_len=None,
        exhaustive=exhaustive,
        uniform_fallback=False,  # the block check weighs in the other groups: test the group alone
        progress=False,
    )
    gid = "model.decoder.layers.0.attn_in"
    assert result.alpha[gid] == best
    errors = result.errors[gid]
    label = "off" if best is None else f"{best:g}"
    # exact up to float64 rounding at the planted alpha only
    assert errors[label] < 1e-6 * min(v for k, v in errors.items() if k != label)
    assert (len(errors) == 22) if exhaustive else (len(errors) < 22)


def test_refine_finds_minimum_of_unimodal_curve_with_fewer_evaluations():
    grid = DEFAULT_GRID
    for target in grid:
        calls = []

        def f(a, target=target, calls=calls):
            calls.append(a)
            return 5.0 if a is None else (a - target) ** 2

        results = _refine(f, grid, exhaustive=False)
        assert min(results, key=results.__getitem__) == target
        assert len(calls) <= 11
    assert len(_refine(lambda a: 0.0, grid, exhaustive=True)) == 22


@pytest.mark.parametrize("name", ["llama", "opt", "qwen2_moe", "gemma3"])
@pytest.mark.parametrize("scheme", ["O3", "w8a8"])
def test_search_simulates_the_pipeline_exactly(name, scheme):
    """The block the search quantized is the block smooth + quantize produce: same output error."""
    model = tiny_model(name, torch.float64)
    fp = copy.deepcopy(model)
    before = model(DATA).logits
    stats = sq.calibrate(model, DATA, progress=False)
    result = sq.search_alpha(model, DATA, scheme, stats=stats, seq_len=None, progress=False)
    # the search leaves the model as it was (fused experts unfolded: same function)
    assert torch.equal(model(DATA).logits, before)
    assert set(result.alpha) == {g.id for g in sq.resolve(model).groups}

    first = sq.resolve(model).blocks[0]
    sq.quantize_model(model, DATA, scheme, alpha=result.alpha, linear_pairs=True, stats=stats, progress=False)
    q_out, fp_out = [], []
    model.get_submodule(first).register_forward_hook(
        lambda m, a, o: q_out.append(o[0] if isinstance(o, tuple) else o)
    )
    fp.get_submodule(first).register_forward_hook(
        lambda m, a, o: fp_out.append(o[0] if isinstance(o, tuple) else o)
    )
    with torch.no_grad():
        for row in DATA:
            model(row[None])
            fp(row[None])
    assert output_error(q_out, fp_out) == pytest.approx(result.block_errors[first], rel=1e-6)


def test_search_does_not_modify_the_model():
    model = tiny_model("llama", torch.float32)
    params = {k: v.clone() for k, v in model.state_dict().items()}
    before = model(DATA).logits
    sq.search_alpha(model, DATA, "O1", seq_len=None, progress=False, per_block=True)
    assert all(torch.equal(params[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(DATA).logits, before)
    assert not any(isinstance(m, sq.FakeQuantLinear) for m in model.modules())


def test_per_block_shares_one_alpha_per_block():
    model = tiny_model("llama", torch.float32)
    result = sq.search_alpha(model, DATA, "w8a8", seq_len=None, progress=False, per_block=True)
    for block in sq.resolve(model).blocks:
        values = {a for gid, a in result.alpha.items() if gid.startswith(block + ".")}
        assert len(values) == 1
        assert block in result.errors


def test_uniform_fallback_keeps_the_better_of_per_group_and_one_alpha():
    model = tiny_model("llama", torch.float32)
    result = sq.search_alpha(model, DATA, "O3", seq_len=None, progress=False)
    for block in sq.resolve(model).blocks:
        checked = result.errors[block]
        alphas = {a for gid, a in result.alpha.items() if gid.startswith(block + ".")}
        best = min(checked, key=checked.__getitem__)
        if best == "per group":
            assert all(f"{a:g}" in result.errors[gid] or a is None for gid, a in result.alpha.items())
        else:
            assert alphas == {None if best == "off" else float(best)}
    assert "blocks" in result.summary()
    plain = sq.search_alpha(model, DATA, "O3", seq_len=None, progress=False, uniform_fallback=False)
    assert not any(b in plain.errors for b in sq.resolve(model).blocks)


def test_linear_pairs_off_searches_norm_groups_only():
    model = tiny_model("llama", torch.float32)
    result = sq.search_alpha(model, DATA, "w8a8", seq_len=None, progress=False, linear_pairs=False)
    assert result.alpha
    assert all(gid.endswith(("attn_in", "mlp_in")) for gid in result.alpha)


def test_quantize_model_auto_round_trips_through_recipe():
    model = tiny_model("llama", torch.float32)
    fresh = copy.deepcopy(model)
    result = sq.quantize_model(model, DATA, "O3", alpha="auto", seq_len=None, progress=False)
    recipe = json.loads(json.dumps(result.recipe()))
    assert recipe["linear_pairs"] is True
    assert recipe["alpha_search"]["scheme"] == "O3"
    assert recipe["alpha"] == result.search.alpha == result.alpha
    alphas = sq.alphas_from_recipe(recipe)
    assert alphas == result.alpha
    replay = sq.quantize_model(
        fresh, DATA, "O3", alpha=alphas, linear_pairs=recipe["linear_pairs"], seq_len=None, progress=False
    )
    assert replay.alpha == result.alpha
    for (name, a), (_, b) in zip(model.named_buffers(), fresh.named_buffers(), strict=True):
        assert torch.equal(a, b), name


def test_auto_prints_a_summary(capsys):
    model = tiny_model("llama", torch.float32)
    sq.quantize_model(model, DATA, "w8a8", alpha="auto", seq_len=None, progress=True)
    out = capsys.readouterr().out
    assert "auto alpha for w8a8" in out
    assert "attn_in" in out and "mlp_out" in out


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ({}, "no per-group alphas"),
        ({"alpha": {}}, "no per-group alphas"),
        ({"alpha": {"model.layers.0.attn_in": 1.5}}, "expected a number in"),
        ({"alpha": {"model.layers.0.attn_in": "0.5"}}, "expected a number in"),
        ({"alpha": {"model.layers.0.attn_in": True}}, "expected a number in"),
    ],
)
def test_bad_recipe_is_rejected(recipe, message):
    with pytest.raises(ArgumentError, match=message):
        sq.alphas_from_recipe(recipe)


def test_bad_input_gives_clear_errors():
    model = tiny_model("llama", torch.float32)
    with pytest.raises(CalibrationError, match="empty"):
        sq.search_alpha(model, [], "w8a8", progress=False)
    with pytest.raises(CalibrationError, match="empty"):
        sq.search_alpha(model, torch.zeros(0, dtype=torch.long), "w8a8", progress=False)
    for scheme in ("naive", "outlier-suppression", "llm.int8"):
        with pytest.raises(SchemeError, match="migration"):
            sq.search_alpha(model, DATA, scheme, progress=False)
    with pytest.raises(SchemeError, match="unknown scheme"):
        sq.search_alpha(model, DATA, "w4a4", progress=False)
    with pytest.raises(ArgumentError, match="grid"):
        sq.search_alpha(model, DATA, "w8a8", grid=[0.5, 1.5], progress=False)
    with pytest.raises(ArgumentError, match="grid"):
        sq.search_alpha(model, DATA, "w8a8", grid=[], progress=False)
    with pytest.raises(ArgumentError, match="reference"):
        sq.search_alpha(model, DATA, "w8a8", reference="teacher", progress=False)
    with pytest.raises(ArgumentError, match="num_samples"):
        sq.search_alpha(model, DATA, "w8a8", num_samples=0, progress=False)
    with pytest.raises(ArgumentError, match="'auto'"):
        sq.quantize_model(model, DATA, "w8a8", alpha="best", progress=False)
    stats = sq.calibrate(model, DATA, progress=False)
    with pytest.raises(CalibrationError, match="auto"):
        sq.quantize_model(model, None, "w8a8", alpha="auto", stats=stats, progress=False)
    assert not any(isinstance(m, sq.FakeQuantLinear) for m in model.modules())


def test_token_error_is_not_dominated_by_a_huge_token():
    """One attention-sink token 1000x larger than the others: the total error only sees it."""
    ref = torch.ones(1, 4, 8, dtype=torch.float64)
    ref[0, 0] *= 1000.0
    good_on_sink = ref * torch.tensor([1.001, 1.1, 1.1, 1.1], dtype=torch.float64)[None, :, None]
    good_elsewhere = ref * torch.tensor([1.01, 1.001, 1.001, 1.001], dtype=torch.float64)[None, :, None]
    assert output_error([good_on_sink], [ref], "total") < output_error([good_elsewhere], [ref], "total")
    assert output_error([good_elsewhere], [ref], "token") < output_error([good_on_sink], [ref], "token")
    assert output_error([good_elsewhere], [ref], "token") == pytest.approx(
        (0.01**2 + 3 * 0.001**2) / 4, rel=1e-5
    )
