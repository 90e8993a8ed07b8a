"""``Recipe``: one validated object for every setting; it survives JSON unchanged, refuses bad
combinations before any work with the library's own errors, and its constants are the library's."""

from __future__ import annotations

import dataclasses

import pytest

import smoothquant as sq
from smoothquant.cli import build_parser
from smoothquant.errors import ArgumentError, QuantizationError, SchemeError
from smoothquant.export import compressed_tensors as ct
from smoothquant.quantization import get_scheme, gptq
from smoothquant.recipe import EXPORTABLE_SCHEMES, ROUNDINGS, Recipe


def test_a_recipe_round_trips_through_json_and_normalises_once() -> None:
    recipe = Recipe(
        "o3",
        {"*.mlp_out": 0.85, "*": 1},
        weight_rounding="gptq",
        ranges="search",
        calibration="wiki-gensim",
        num_samples=8,
        seq_len=128,
        dtype="bfloat16",
    )
    assert recipe.scheme == "O3" and recipe.alpha == {"*.mlp_out": 0.85, "*": 1.0}
    assert recipe.linear_pairs is False  # a given alpha: the paper's groups only
    assert Recipe.from_json(recipe.to_json()) == recipe
    auto = Recipe("w8a8", "AUTO", check_alphas=True, search_options={"grid": [0.3, 0.6]})
    assert (
        auto.alpha == "auto" and auto.linear_pairs is True and auto.check_alphas == (0.4, 0.5, 0.6, 0.7, 0.8)
    )
    back = Recipe.from_json(auto.to_json())
    assert back == auto and back.search_options["grid"] == (0.3, 0.6)
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.alpha = 0.5  # type: ignore[misc]
    # search options mean nothing without a search: not stored
    assert Recipe("w8a8", 0.5, search_options={"grid": (0.5,)}).search_options == {}


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        ({"scheme": "nope"}, SchemeError, "unknown scheme"),
        ({"alpha": "best"}, ArgumentError, "'auto'"),
        ({"alpha": 1.5}, ArgumentError, r"alpha must be a number in \[0, 1\]"),
        ({"alpha": {"*": 2.0}}, ArgumentError, "for \\*"),
        ({"weight_rounding": "adaround"}, QuantizationError, "weight rounding must be one of"),
        ({"scheme": "llm.int8", "weight_rounding": "gptq"}, QuantizationError, "LLM.int8"),
        ({"ranges": "mse"}, ArgumentError, "ranges must be one of"),
        ({"scheme": "outlier-suppression", "ranges": "search"}, ArgumentError, "token quantile"),
        ({"check_alphas": (0.5,)}, ArgumentError, "alpha='auto'"),
        ({"alpha": "auto", "check_alphas": (1.5,)}, ArgumentError, r"\[0, 1\]"),
        ({"alpha": "auto", "search_options": {"gird": (0.5,)}}, ArgumentError, "unknown search option"),
        ({"alpha": "auto", "search_options": {"reference": "x"}}, ArgumentError, "reference must be"),
        ({"num_samples": 0}, ArgumentError, "num_samples must be a whole number"),
        ({"seq_len": 1.5}, ArgumentError, "seq_len must be a whole number"),
        ({"dtype": "float8"}, ArgumentError, "dtype must be one of"),
    ],
)
def test_bad_settings_fail_at_construction(settings, error, message) -> None:
    with pytest.raises(error, match=message):
        Recipe(**settings)


def test_recipe_files_that_are_not_recipes_are_one_line_errors(tmp_path) -> None:
    (tmp_path / "r.json").write_text('{"scheme": "w8a8", "alhpa": 0.5}')
    with pytest.raises(ArgumentError, match=r"unknown recipe setting.*alhpa"):
        Recipe.from_file(tmp_path / "r.json")
    (tmp_path / "r.json").write_text("{")
    with pytest.raises(ArgumentError, match="not"):
        Recipe.from_file(tmp_path / "r.json")
    (tmp_path / "smoothquant_recipe.json").write_text('{"smoothquant_version": "0.1.0", "scheme": "w8a8"}')
    with pytest.raises(ArgumentError, match="before recipes were stored"):
        Recipe.from_file(tmp_path)


def test_the_constants_are_the_librarys() -> None:
    assert ROUNDINGS == gptq.ROUNDINGS
    for name in EXPORTABLE_SCHEMES:
        ct.check_exportable(get_scheme(name))
    assert sq.Recipe is Recipe


def test_eval_and_quantize_name_each_setting_alike() -> None:
    parser = build_parser()
    shared = ["--calib", "x.txt", "--num-samples", "4", "--rounding", "gptq", "--ranges", "search"]
    q = parser.parse_args(["quantize", "m", "-o", "out", *shared, "--alpha", "*=0.5"])
    e = parser.parse_args(["eval", *shared, "--alpha", "*=0.5"])
    for dest in ("calib", "num_samples", "rounding", "ranges", "alpha"):
        assert getattr(q, dest) == getattr(e, dest), dest
    old = parser.parse_args(["eval", "--calib-data", "x.txt", "--calib-samples", "4"])
    assert (old.calib, old.num_samples) == ("x.txt", 4)  # the older eval names, kept as aliases
