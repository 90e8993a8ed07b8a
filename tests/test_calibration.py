"""Calibration statistics: correct maxima, padding excluded, files round-trip."""

from __future__ import annotations

import pytest
import torch

import smoothquant as sq
from smoothquant.calibration.batches import make_batches, sequences
from smoothquant.calibration.stats import ActStats
from tiny_models import TINY_CONFIGS, tiny_batches, tiny_model


def test_input_absmax_matches_a_direct_measurement() -> None:
    model = tiny_model("llama")
    ids = tiny_batches(3, 10)
    seen = {}
    q = model.model.layers[1].self_attn.q_proj
    handle = q.register_forward_hook(lambda m, a, o: seen.setdefault("x", a[0].detach().clone()))
    with torch.no_grad():
        model(ids)
    handle.remove()
    stats = sq.calibrate(model, ids, progress=False)
    x = seen["x"].reshape(-1, 64)
    torch.testing.assert_close(stats.inputs["model.layers.1.self_attn.q_proj"], x.abs().amax(0).float())
    assert stats.input_absmax("model.layers.1.self_attn.q_proj") == x.abs().max().float()
    assert stats.outputs["model.layers.1.self_attn.v_proj"].shape == (32,)  # GQA: 2 kv heads x 16
    assert "lm_head" in stats.inputs and stats.meta["num_tokens"] == 30


def test_padding_is_excluded() -> None:
    model = tiny_model("llama")
    a, b = torch.randint(0, 128, (12,)), torch.randint(0, 128, (7,))
    padded = {
        "input_ids": torch.stack([a, torch.cat([torch.zeros(5, dtype=torch.long), b])]),
        "attention_mask": torch.stack([torch.ones(12), torch.cat([torch.zeros(5), torch.ones(7)])]),
    }
    with_padding = sq.calibrate(model, padded, batch_size=2, progress=False)
    alone = sq.calibrate(model, [a, b], progress=False)
    for k in alone.inputs:
        torch.testing.assert_close(with_padding.inputs[k], alone.inputs[k])
    assert with_padding.meta["num_tokens"] == 19


def test_streams_are_cut_into_windows_and_batched_by_length() -> None:
    rows = sequences(torch.arange(100), seq_len=32)
    assert [r.numel() for r in rows] == [32, 32, 32, 4]
    batches = make_batches(rows, batch_size=2)
    assert [tuple(b.shape) for b in batches] == [(2, 32), (1, 32), (1, 4)]
    assert len(sequences([torch.arange(10), torch.arange(5).reshape(1, 5)], seq_len=None)) == 2


def test_num_samples_caps_the_data() -> None:
    stats = sq.calibrate(tiny_model("llama"), tiny_batches(8, 16), num_samples=3, progress=False)
    assert stats.meta["num_sequences"] == 3 and stats.meta["num_tokens"] == 48


def test_safetensors_round_trip(tmp_path) -> None:
    stats = sq.calibrate(tiny_model("llama"), tiny_batches(), token_histograms=True, progress=False)
    path = stats.save(tmp_path / "stats.safetensors")
    loaded = ActStats.load(path)
    for kind in ("inputs", "outputs", "token_hist"):
        a, b = getattr(stats, kind), getattr(loaded, kind)
        assert a.keys() == b.keys() and a
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.meta == stats.meta


def test_reference_pt_format_round_trip(tmp_path) -> None:
    """The reference code's act_scales files: {module name: tensor[in_features]}."""
    model = tiny_model("llama")
    stats = sq.calibrate(model, tiny_batches(), progress=False)
    path = stats.save(tmp_path / "act_scales.pt")
    raw = torch.load(path, weights_only=True)
    assert set(raw) == set(stats.inputs) and raw["model.layers.0.self_attn.q_proj"].shape == (64,)
    loaded = sq.load_stats(path)
    sq.smooth(model, loaded, alpha=0.5)  # usable for smoothing


def test_token_quantile_from_histogram() -> None:
    stats = sq.calibrate(tiny_model("llama"), tiny_batches(8, 16), token_histograms=True, progress=False)
    name = "model.layers.0.mlp.down_proj"
    q50, q100 = stats.token_quantile(name, 0.5), stats.token_quantile(name, 1.0)
    absmax = stats.input_absmax(name).item()
    assert q50 < q100 and absmax <= q100 <= absmax * 2 ** (1 / 16) * 1.0001


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_skipping_the_logits_gives_bit_identical_statistics(family, monkeypatch) -> None:
    """Calibration feeds the head's statistics from the base model's output and skips the logits
    (a fifth of smollm2's FLOPs); every statistic must equal the full pass's exactly."""
    import importlib

    calibrate_module = importlib.import_module("smoothquant.calibration.calibrate")
    model = tiny_model(family, dtype=torch.float32)
    ids = tiny_batches(4, 12)
    full_calls, head = [], model.get_output_embeddings()
    handle = head.register_forward_hook(lambda m, args, out: full_calls.append(args[0].shape[1]))
    fast = sq.calibrate(model, ids, token_histograms=True, progress=False)
    handle.remove()
    full = sq.calibrate(
        model, ids, token_histograms=True, progress=False, forward=calibrate_module._full_forward
    )
    for kind in ("inputs", "outputs", "token_hist"):
        a, b = getattr(fast, kind), getattr(full, kind)
        assert list(a) == list(b)
        for name in a:
            assert torch.equal(a[name], b[name]), (kind, name)
    # OPT's causal LM calls its decoder, not its base model: the check keeps it on the full pass
    assert full_calls == ([12] * 4 if family.startswith("opt") else [12, 1, 1, 1])
    assert not model._forward_hooks and not any(m._forward_hooks for m in model.modules())
