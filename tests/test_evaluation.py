"""Evaluation metrics on tiny random models, checked against hand computations."""

from __future__ import annotations

import copy
import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F

import smoothquant as sq
from smoothquant.evaluation import EvaluationError, compare, perplexity, reference_pass
from smoothquant.evaluation import metrics as metrics_module
from smoothquant.evaluation.runner import Config, format_table, parse_configs, run, write_results
from tiny_models import VOCAB, tiny_batches, tiny_model


def _windows(n: int = 3, length: int = 24, seed: int = 0) -> torch.Tensor:
    return tiny_batches(n, length, seed)


def _logprobs(model, windows):
    with torch.no_grad():
        return torch.stack([F.log_softmax(model(w[None]).logits[0, :-1].double(), -1) for w in windows])


def test_identical_models_have_zero_kl_and_full_agreement():
    model = tiny_model("llama", torch.float32)
    windows = _windows()
    ref = reference_pass(model, windows, progress=False)
    same = compare(copy.deepcopy(model), ref, "copy", progress=False)
    assert same.kl == pytest.approx(0.0, abs=1e-6)
    assert same.top1 == 1.0
    assert same.perplexity == pytest.approx(ref.result().perplexity, rel=1e-6)
    assert same.tokens == windows.shape[0] * (windows.shape[1] - 1)


def test_perplexity_is_exp_of_the_mean_next_token_nll():
    model = tiny_model("qwen2", torch.float32)
    windows = _windows(4, 17)
    logp = _logprobs(model, windows)
    nll = -logp.gather(2, windows[:, 1:, None]).mean()
    expected = math.exp(float(nll))
    assert perplexity(model, windows, progress=False) == pytest.approx(expected, rel=1e-5)
    ref = reference_pass(model, windows, progress=False)
    assert ref.result().perplexity == pytest.approx(expected, rel=1e-5)
    assert ref.result().kl == 0.0 and ref.result().top1 == 1.0


def test_kl_and_top1_match_a_hand_computation():
    p_model, q_model = tiny_model("llama", torch.float32, seed=0), tiny_model("llama", torch.float32, seed=0)
    with torch.no_grad():  # a different but related model
        for p in q_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    windows = _windows(2, 30, seed=3)
    logp, logq = _logprobs(p_model, windows), _logprobs(q_model, windows)
    kl = float((logp.exp() * (logp - logq)).sum(-1).mean())
    top1 = float((logp.argmax(-1) == logq.argmax(-1)).double().mean())
    result = compare(q_model, reference_pass(p_model, windows, progress=False), "q", progress=False)
    assert kl > 1e-4  # the models really differ
    assert result.kl == pytest.approx(kl, rel=1e-4)
    assert result.top1 == pytest.approx(top1)
    nll_q = -float(logq.gather(2, windows[:, 1:, None]).mean())
    assert result.perplexity == pytest.approx(math.exp(nll_q), rel=1e-5)


def test_chunked_and_batched_metrics_equal_whole_ones(monkeypatch):
    model = tiny_model("llama", torch.float32)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.lm_head.weight.mul_(1.3)
    windows = _windows(2, 40)
    ref = reference_pass(model, windows, progress=False)
    whole = compare(other, ref, "whole", progress=False)
    monkeypatch.setattr(metrics_module, "CHUNK", 7)
    monkeypatch.setattr(metrics_module, "BATCH_TOKENS", 1)  # one window per forward
    chunked = compare(other, ref, "chunked", progress=False)
    assert chunked.kl == pytest.approx(whole.kl, rel=1e-5) and chunked.top1 == whole.top1
    assert chunked.perplexity == pytest.approx(whole.perplexity, rel=1e-6)


def test_reference_recomputes_softcapped_logits():
    model = tiny_model("gemma2", torch.float32)
    assert model.config.final_logit_softcapping  # Gemma 2 caps logits after the head
    ref = reference_pass(model, _windows(), progress=False)
    assert compare(copy.deepcopy(model), ref, "copy", progress=False).kl == pytest.approx(0.0, abs=1e-6)


def test_reference_is_not_changed_by_later_edits_of_the_model():
    model = tiny_model("llama", torch.float32)
    windows = _windows()
    ref = reference_pass(model, windows, progress=False)
    before = ref.logits(0, slice(None)).clone()
    with torch.no_grad():
        model.lm_head.weight.mul_(2.0)
    assert torch.equal(ref.logits(0, slice(None)), before)


def test_bad_windows_are_refused():
    model = tiny_model("llama", torch.float32)
    with pytest.raises(EvaluationError, match="LongTensor"):
        reference_pass(model, torch.zeros(4, dtype=torch.long), progress=False)
    with pytest.raises(EvaluationError, match="vocabulary"):
        reference_pass(model, torch.full((1, 8), VOCAB, dtype=torch.long), progress=False)


def test_gptq_rounding_rows_smoothquant_only():
    configs = parse_configs(["naive", "zeroquant", "llm.int8", "O1", "w8a8"], 0.5, rounding="gptq")
    assert [c.rounding for c in configs] == ["nearest"] * 3 + ["gptq"] * 2
    assert configs[3].describe()["weight_rounding"] == "gptq"
    assert "weight_rounding" not in configs[0].describe()
    with pytest.raises(sq.SmoothQuantError, match="weight rounding must be"):
        parse_configs(["O1"], rounding="adaround")


def test_searched_ranges_rows_smoothquant_only():
    configs = parse_configs(["naive", "O3", "w8a8"], 0.5, rounding="gptq", ranges="search")
    assert [c.ranges for c in configs] == ["absmax", "search", "search"]
    assert configs[1].describe()["ranges"] == "search" and "ranges" not in configs[0].describe()


def test_check_alphas_go_to_smoothquant_rows_only():
    configs = parse_configs(["naive", "O1", "O3"], "auto", check_alphas=(0.4, 0.6))
    assert [c.check_alphas for c in configs] == [(), (0.4, 0.6), (0.4, 0.6)]
    assert configs[1].describe()["check_alphas"] == [0.4, 0.6] and "check_alphas" not in configs[0].describe()


def test_runner_rows_share_one_reference_and_leave_the_model_alone(tmp_path):
    model = tiny_model("llama", torch.float32)
    windows, calib = _windows(2, 32), _windows(4, 32, seed=9)
    with torch.no_grad():
        before = model(windows).logits
    configs = parse_configs(["fp", "naive", "w8a8", "O3"], alpha=0.5)
    assert [c.name for c in configs] == ["FP", "naive", "w8a8", "O3"]
    assert [c.linear_pairs for c in parse_configs(["O1", "o3"], 0.5, "O3")] == [False, True]
    assert all(c.linear_pairs for c in parse_configs(["O1", "w8a8"], 0.5, "all"))
    results = run(model, configs, windows, calib, progress=False)
    with torch.no_grad():
        assert torch.equal(model(windows).logits, before)
    fp, naive, w8a8, o3 = results
    assert fp.kl == 0.0 and fp.top1 == 1.0 and fp.info == {"scheme": "fp"}
    quantize_seconds = [r.info.pop("quantize_seconds") for r in (naive, w8a8, o3)]
    assert all(t >= 0 for t in quantize_seconds)
    assert w8a8.info == {"scheme": "w8a8", "alpha": 0.5, "linear_pairs": False}
    assert naive.info == {"scheme": "naive"}
    assert all(r.kl > 0 for r in (naive, w8a8, o3)) and all(r.tokens == fp.tokens for r in results)
    table = format_table(results)
    assert table.splitlines()[2].startswith("FP") and "+0.0%" in table and "O3" in table

    js = write_results(results, tmp_path / "r.json", meta={"model": "tiny"})
    data = json.loads(js.read_text())
    assert data["meta"] == {"model": "tiny"} and data["results"][2]["perplexity"] == w8a8.perplexity
    rows = list(csv.DictReader(write_results(results, tmp_path / "r.csv").open()))
    assert [r["name"] for r in rows] == ["FP", "naive", "w8a8", "O3"]
    assert float(rows[1]["kl"]) == pytest.approx(naive.kl)


def test_config_with_group_alphas_and_linear_pairs():
    model = tiny_model("llama", torch.float32)
    windows, calib = _windows(1, 32), _windows(4, 32, seed=9)
    alpha = {"*.mlp_out": 0.8, "*": 0.5}
    config = Config("w8a8 pairs", "w8a8", alpha, linear_pairs=True)
    auto = Config("w8a8 auto", "w8a8", "auto", linear_pairs=True)
    result, searched = run(model, [config, auto], windows, calib, progress=False)
    assert result.info.pop("quantize_seconds") >= 0
    assert result.info == {"scheme": "w8a8", "alpha": alpha, "linear_pairs": True}
    assert 0 < result.kl < 1
    # a searched row says what the search chose for every group and what it took
    search = searched.info["alpha_search"]
    groups = {g.id for g in sq.families.resolve(model).groups}
    assert set(search["alpha"]) == groups and search["seconds"] > 0
    assert searched.info["alpha"] == "auto"
