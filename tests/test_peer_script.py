"""``scripts/peer_llmcompressor.py`` end to end on a tiny Llama, with llm-compressor stubbed
(``tests/peer_stub``: our own quantizer behind its ``oneshot``); the real peer runs only in the bench."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from smoothquant.data import calibration_batches
from tiny_models import VOCAB, tiny_model

ROOT = Path(__file__).resolve().parents[1]
WORDS = [f"w{i}" for i in range(VOCAB - 1)]


def _script():
    spec = importlib.util.spec_from_file_location(
        "peer_llmcompressor", ROOT / "scripts" / "peer_llmcompressor.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """A tiny Llama folder with a word-level tokenizer, and a WikiText-style text folder."""
    model = tiny_model("llama", dtype=torch.float32)
    model.save_pretrained(tmp_path / "model")
    vocab = {"[UNK]": 0} | {w: i + 1 for i, w in enumerate(WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    tokenizer.save_pretrained(tmp_path / "model")
    g = torch.Generator().manual_seed(0)
    data = tmp_path / "wikitext"
    data.mkdir()
    for split in ("valid", "test"):
        words = torch.randint(0, len(WORDS), (40, 50), generator=g)
        (data / f"{split}.txt").write_text("\n\n".join(" ".join(WORDS[int(i)] for i in row) for row in words))
    # the subprocesses (our CLI, the stubbed peer) import this checkout and the stub first
    monkeypatch.setenv("PYTHONPATH", f"{ROOT / 'tests' / 'peer_stub'}:{ROOT / 'src'}")
    return tmp_path, tokenizer


def test_peer_script_measures_every_checkpoint_on_the_same_windows(setup, capsys):
    tmp, tokenizer = setup
    script = _script()
    argv = [
        "--peer-python", sys.executable, "--model", str(tmp / "model"), "--data", str(tmp / "wikitext"),
        "--work", str(tmp / "work"), "--calib", "4", "--windows", "2", "--seq-len", "32",
        "--peer", "0.8/rtn", "--ours", "w8a8/0.5/nearest", "--json", str(tmp / "table.json"),
    ]  # fmt: skip
    table = script.main(argv)
    names = [r["name"] for r in table]
    assert names == ["FP", "llm-compressor SQ 0.8 + rtn", "ours w8a8 0.5 nearest"]
    fp, peer, ours = table
    assert fp["kl"] == 0 and fp["top1"] == 1
    for row in (peer, ours):
        assert math.isfinite(row["perplexity"]) and row["tokens"] == 2 * 31
        assert 0 < row["kl"] < 1 and 0 < row["top1"] <= 1  # quantized: close to FP, not equal
        assert row["seconds"] > 0 and row["peak_rss"] > 50 * 2**20  # a Python process with torch loaded
        assert 0 < row["disk"] < fp["disk"]  # int8 linears
    # the peer got exactly the calibration windows our side cuts, and its recipe's strength
    seen = torch.load(Path(peer["dir"]) / "stub_calibration.pt")
    assert torch.equal(seen, calibration_batches(tokenizer, str(tmp / "wikitext"), 4, 32))
    recipe = json.loads((Path(peer["dir"]) / "smoothquant_recipe.json").read_text())
    assert set(recipe["alpha"].values()) == {0.8}
    recipe = json.loads((Path(ours["dir"]) / "smoothquant_recipe.json").read_text())
    assert set(recipe["alpha"].values()) == {0.5} and recipe["calibration"]["num_sequences"] == 4
    out = capsys.readouterr().out
    assert "| llm-compressor SQ 0.8 + rtn |" in out and "| ours w8a8 0.5 nearest |" in out
    assert json.loads((tmp / "table.json").read_text())[2]["name"] == "ours w8a8 0.5 nearest"
    # a rerun keeps the finished rows (no requantization) and measures them again identically
    logs = {p: p.stat().st_mtime_ns for p in (tmp / "work" / "rows").glob("*.log")}
    again = script.main(argv)
    assert {p: p.stat().st_mtime_ns for p in logs} == logs
    assert [r["perplexity"] for r in again] == [r["perplexity"] for r in table]


def test_peer_recipes_are_llm_compressors_w8a8_recipes():
    script = _script()
    rtn, gptq = script.peer_recipe("0.8/rtn"), script.peer_recipe("0.5/gptq")
    assert "smoothing_strength: 0.8" in rtn and "QuantizationModifier" in rtn and "scheme: W8A8" in rtn
    assert "smoothing_strength: 0.5" in gptq and "GPTQModifier" in gptq and "ignore: [lm_head]" in gptq
    cmd = script.ours_command(Path("m"), Path("o"), Path("d"), 8, 64, "o3/auto/gptq/search")
    flags = dict(zip(cmd[5:-1:2], cmd[6::2], strict=True))
    assert flags["--scheme"] == "o3" and flags["--ranges"] == "search" and flags["--num-samples"] == "8"
