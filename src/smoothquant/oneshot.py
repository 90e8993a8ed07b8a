"""``quantize_and_save``: model name in, servable checkpoint out (what ``smoothquant quantize`` runs).

Load -> calibration data -> calibrate, smooth, quantize (``quantize_model``) -> ``save_quantized``,
all as a :class:`~smoothquant.recipe.Recipe` says.
Everything that can be checked without the model (output path, scheme) is checked first, so a
mistake costs seconds rather than a calibration run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from smoothquant.errors import ExportError
from smoothquant.export import compressed_tensors as ct
from smoothquant.export.atomic import check_output
from smoothquant.export.save import WEIGHTS_FILE, save_quantized
from smoothquant.export.summary import QuantizeSummary, peak_rss
from smoothquant.nn_utils import model_dtype
from smoothquant.pipeline import quantize_model
from smoothquant.quantization import FakeQuantLinear
from smoothquant.recipe import (
    DEFAULT_CALIB,
    DEFAULT_NUM_SAMPLES,
    DEFAULT_SEQ_LEN,
    QuantizationResult,
    Recipe,
    as_recipe,
)


def _float_bytes(model: nn.Module) -> int:
    seen, total = set(), 0
    for t in model.state_dict().values():
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def quantize_and_save(
    model: str | nn.Module,
    out_dir: str | os.PathLike,
    recipe: Recipe | None = None,
    *,
    tokenizer: Any = None,
    force: bool = False,
    progress: bool = True,
    **settings: Any,
) -> QuantizeSummary:
    """Quantize ``model`` (a name ``smoothquant.models.load_model`` understands, or a loaded model
    with its ``tokenizer``) following ``recipe`` and write a compressed-tensors checkpoint to
    ``out_dir``, with the recipe in ``smoothquant_recipe.json``: the same recipe gives the same
    checkpoint again.

    The recipe's ``calibration`` names the calibration text (``smoothquant.data.calibration_batches``,
    default wiki-gensim): ``num_samples`` (default 64) sequences of ``seq_len`` tokens; ``dtype``
    is what a named model is loaded in (default float32). Instead of a Recipe its fields may be
    given as keywords (``scheme="O3", alpha="auto"``; also ``calib=`` for ``calibration`` and a
    ``torch.dtype``), or as keywords that replace fields of the Recipe given.
    """
    recipe = complete_recipe(as_recipe(recipe, _keywords(settings)))
    out_dir = Path(out_dir)
    check_output(out_dir.absolute(), force)
    resolved = recipe.resolved_scheme()
    ct.check_exportable(resolved)
    seconds: dict[str, float] = {}
    name = model if isinstance(model, str) else type(model).__name__
    if isinstance(model, str):
        from smoothquant.models import load_model

        t = time.perf_counter()
        model, tokenizer = load_model(model, dtype=getattr(torch, recipe.dtype))
        seconds["load"] = time.perf_counter() - t
    if tokenizer is None:
        raise ExportError("a tokenizer is needed to build calibration data; pass tokenizer=")
    from smoothquant.data import calibration_batches

    bytes_before = _float_bytes(model)  # before quantize replaces the linears in place
    batches = calibration_batches(tokenizer, recipe.calibration, recipe.num_samples, recipe.seq_len)
    result = quantize_model(model, batches, recipe, progress=progress)
    seconds |= result.seconds
    t = time.perf_counter()
    save_quantized(
        result, out_dir, tokenizer=tokenizer, recipe=source_record(name, recipe, result), force=force
    )
    seconds["save"] = time.perf_counter() - t
    quantized = sum(1 for m in model.modules() if isinstance(m, FakeQuantLinear))
    return QuantizeSummary(
        out_dir=out_dir,
        model=name,
        scheme=resolved.name,
        alpha=result.alpha,
        quantized_linears=quantized,
        bytes_before=bytes_before,
        bytes_after=(out_dir / WEIGHTS_FILE).stat().st_size,
        dtype=model_dtype(model),
        seconds=seconds,
        peak_rss=peak_rss(),
    )


def _keywords(settings: dict[str, Any]) -> dict[str, Any]:
    """The keyword names this function took before it took a Recipe."""
    settings = dict(settings)
    if "calib" in settings:
        settings["calibration"] = settings.pop("calib")
    if isinstance(settings.get("dtype"), torch.dtype):
        settings["dtype"] = str(settings["dtype"]).removeprefix("torch.")
    return settings


def complete_recipe(recipe: Recipe) -> Recipe:
    """A recipe that builds its own calibration data says which, so that it builds it again."""
    return recipe.replace(
        calibration=recipe.calibration or DEFAULT_CALIB,
        num_samples=recipe.num_samples or DEFAULT_NUM_SAMPLES,
        seq_len=recipe.seq_len or DEFAULT_SEQ_LEN,
        dtype=recipe.dtype or "float32",
    )


def source_record(name: str, recipe: Recipe, result: QuantizationResult | None = None) -> dict[str, Any]:
    """``smoothquant_recipe.json``'s entries on the source: the model and the calibration data
    (with the measured counts, when a result is given)."""
    measured = (result.recipe().get("calibration") if result is not None else None) or {}
    return {
        "source_model": name,
        "calibration": {
            "dataset": recipe.calibration,
            "num_samples": recipe.num_samples,
            "seq_len": recipe.seq_len,
            **measured,
        },
    }
