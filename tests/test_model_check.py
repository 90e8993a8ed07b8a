"""The model-level check of ``alpha="auto"`` (``check_alphas``): the final model is the candidate
(searched alphas or one single alpha) with the lowest calibration loss, built exactly as a
single-alpha run would build it."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

import smoothquant as sq
from smoothquant.calibration.batches import sequences
from smoothquant.errors import ArgumentError
from smoothquant.evaluation.runner import Config, run
from smoothquant.quantization import get_scheme
from smoothquant.search.check import (
    CHECK_GRID,
    MARGIN,
    SEARCHED,
    ModelCheck,
    calibration_loss,
    candidates,
    check_grid,
    choose,
)
from tiny_models import plant_outliers, tiny_batches, tiny_model

DATA = tiny_batches(4, 24)
ROWS = sequences(DATA, None)
FAST = {"grid": (0.3, 0.6, 0.9)}  # a coarse search: these tests are about the check after it


def _model():
    model = tiny_model("llama", torch.float64)
    plant_outliers(model)
    return model


@pytest.mark.parametrize("scheme", ["O1", "O3"])
def test_check_keeps_the_lowest_loss_and_builds_candidates_as_single_alpha_runs_do(scheme: str) -> None:
    source = _model()
    model = copy.deepcopy(source)
    grid = (0.3, 0.9)
    result = sq.quantize_model(
        model, DATA, scheme, "auto", check_alphas=grid, search_options=FAST, seq_len=None, progress=False
    )
    check = result.check
    assert check is not None
    pairs = get_scheme(scheme).inputs.granularity == "tensor"
    assert list(check.losses) == [SEARCHED] + [f"{a:g}{' pairs' if pairs else ''}" for a in grid]
    best = min(check.losses, key=check.losses.get)
    gain = check.losses[SEARCHED] - check.losses[best]
    assert check.chosen == (best if gain > math.log1p(MARGIN) else SEARCHED)
    # the model that comes out is the chosen candidate
    final, tokens = calibration_loss(model, ROWS)
    assert tokens == check.num_tokens == sum(r.numel() - 1 for r in ROWS)
    assert final == pytest.approx(check.losses[check.chosen], rel=1e-12)
    # each single-alpha candidate scores what an ordinary run at that alpha scores
    for alpha in grid:
        alone = sq.quantize_model(
            copy.deepcopy(source), DATA, scheme, alpha, linear_pairs=pairs, seq_len=None, progress=False
        )
        label = f"{alpha:g}{' pairs' if pairs else ''}"
        assert calibration_loss(alone.model, ROWS)[0] == pytest.approx(check.losses[label], rel=1e-12)
    assert final <= min(check.losses.values()) + math.log1p(MARGIN) + 1e-12


@pytest.mark.parametrize("forced", [None, "0.9 pairs"])
def test_check_winner_round_trips_through_the_recipe(forced: str | None, monkeypatch) -> None:
    """``forced``: the check is made to keep this single alpha, so that branch is exercised too."""
    if forced is not None:
        import smoothquant.pipeline as pipeline

        monkeypatch.setattr(
            pipeline, "choose", lambda losses, n, secs: ModelCheck(dict(losses), forced, n, secs)
        )
    source = _model()
    model = copy.deepcopy(source)
    result = sq.quantize_model(
        model, DATA, "O3", "auto", check_alphas=[0.2, 0.9], search_options=FAST, seq_len=None, progress=False
    )
    recipe = json.loads(json.dumps(result.recipe()))
    assert recipe["model_check"]["chosen"] == result.check.chosen
    assert set(recipe["model_check"]["losses"]) == {SEARCHED, "0.2 pairs", "0.9 pairs"}
    assert recipe["alpha_search"]["scheme"] == "O3"  # the per-group search is still recorded
    if forced is not None:
        assert result.check.chosen == forced
        assert set(recipe["alpha"].values()) == {0.9} and recipe["linear_pairs"] is True
    loss = calibration_loss(model, ROWS)[0]
    assert loss == pytest.approx(result.check.losses[result.check.chosen], rel=1e-12)
    replay = sq.quantize_model(
        copy.deepcopy(source),
        DATA,
        "O3",
        sq.alphas_from_recipe(recipe),
        linear_pairs=recipe["linear_pairs"],
        seq_len=None,
        progress=False,
    )
    assert calibration_loss(replay.model, ROWS)[0] == pytest.approx(loss, rel=1e-12)


def test_choose_keeps_the_searched_alphas_unless_a_single_alpha_gains_more_than_the_margin() -> None:
    within = math.log1p(MARGIN) * 0.9
    beyond = math.log1p(MARGIN) * 1.1
    assert choose({SEARCHED: 1.0, "0.5": 1.0}, 10, 0.0).chosen == SEARCHED
    assert choose({SEARCHED: 1.0, "0.5": 1.0 - within}, 10, 0.0).chosen == SEARCHED
    assert choose({SEARCHED: 1.0, "0.5": 1.0 - beyond}, 10, 0.0).chosen == "0.5"
    assert choose({SEARCHED: 1.0, "0.5": 0.9, "0.6": 0.95}, 10, 0.0).chosen == "0.5"
    assert choose({SEARCHED: 1.0, "0.5": 1.0 - within}, 10, 0.0, margin=0.0).chosen == "0.5"
    summary = choose({SEARCHED: 1.0, "0.5": 0.9}, 10, 2.0).summary()
    assert "kept 0.5" in summary and "10 calibration tokens" in summary


def test_single_alphas_smooth_linear_pairs_only_for_per_tensor_activations() -> None:
    o1 = candidates(get_scheme("O1"), (0.5,), linear_pairs=True)
    o3 = candidates(get_scheme("O3"), (0.5,), linear_pairs=True)
    o3_off = candidates(get_scheme("O3"), (0.5,), linear_pairs=False)
    assert [(c.label, c.linear_pairs) for c in o1] == [(SEARCHED, True), ("0.5", False)]
    assert [(c.label, c.linear_pairs) for c in o3] == [(SEARCHED, True), ("0.5 pairs", True)]
    assert [(c.label, c.linear_pairs) for c in o3_off] == [(SEARCHED, False), ("0.5", False)]


def test_check_grid_values() -> None:
    assert check_grid(None) == check_grid(False) == check_grid([]) == ()
    assert check_grid(True) == CHECK_GRID
    assert check_grid([0.7, 0.3, 0.7]) == (0.3, 0.7)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 0.5, "check_alphas": True}, "alpha='auto'"),
        ({"alpha": "auto", "check_alphas": [0.5, 1.5]}, r"\[0, 1\]"),
        ({"alpha": "auto", "check_alphas": ["x"]}, "alphas in"),
    ],
)
def test_bad_check_arguments_fail_before_any_work(kwargs: dict, message: str) -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ArgumentError, match=message):
        sq.quantize_model(model, DATA, "O1", seq_len=None, progress=False, **kwargs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_runner_rows_record_the_check() -> None:
    model = tiny_model("llama", torch.float32)
    rows = [Config("auto checked", "w8a8", "auto", True, check_alphas=(0.5,))]
    (result,) = run(model, rows, tiny_batches(2, 16, seed=1), tiny_batches(2, 12), progress=False)
    assert result.info["check_alphas"] == [0.5]
    assert set(result.info["model_check"]["losses"]) == {SEARCHED, "0.5"}
