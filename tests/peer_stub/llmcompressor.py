"""A stand-in for llm-compressor's ``oneshot`` (tests only): reads the recipe's smoothing strength and
rounding, quantizes with our own pipeline and writes a compressed-tensors checkpoint, as the real
``oneshot(output_dir=...)`` does; it also keeps the calibration windows it was given, for the test
to compare with the ones the peer script cut."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from smoothquant.export.save import save_quantized
from smoothquant.pipeline import quantize_model


def oneshot(*, model, tokenizer, dataset, recipe, num_calibration_samples, max_seq_length, output_dir, **_):
    ids = torch.tensor(dataset["input_ids"])
    assert ids.shape == (num_calibration_samples, max_seq_length)
    alpha = float(re.search(r"smoothing_strength: ([0-9.]+)", recipe).group(1))
    rounding = "gptq" if "GPTQModifier" in recipe else "nearest"
    result = quantize_model(model, ids, "w8a8", alpha, weight_rounding=rounding, progress=False)
    save_quantized(result, output_dir, tokenizer=tokenizer)
    torch.save(ids, Path(output_dir) / "stub_calibration.pt")
    return model
