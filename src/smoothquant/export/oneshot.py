"""``quantize_and_save``: model name in, servable checkpoint out (what ``smoothquant quantize`` runs).

Load -> calibration data -> calibrate, smooth, quantize (``quantize_model``) -> ``save_quantized``.
Everything that can be checked without the model (output path, scheme) is checked first, so a
mistake costs seconds rather than a calibration run.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from smoothquant.errors import ExportError
from smoothquant.export import compressed_tensors as ct
from smoothquant.export.atomic import check_output
from smoothquant.export.save import WEIGHTS_FILE, save_quantized
from smoothquant.nn_utils import model_dtype
from smoothquant.pipeline import quantize_model
from smoothquant.quantization import FakeQuantLinear, get_scheme
from smoothquant.smoothing.smooth import Alpha

DEFAULT_CALIB = "wiki-gensim"  # calibration_batches' default corpus


@dataclass
class ExportSummary:
    out_dir: Path
    model: str
    scheme: str
    alpha: dict[str, float | None]
    quantized_linears: int
    bytes_before: int  # floating-point weights of the source model, at the dtype it was loaded in
    bytes_after: int  # the checkpoint's tensors on disk
    dtype: torch.dtype
    seconds: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[str]:
        alphas = sorted({a for a in self.alpha.values() if a is not None})
        alpha = (
            "none"
            if not alphas
            else f"{alphas[0]:g}"
            if len(alphas) == 1
            else f"{alphas[0]:g}..{alphas[-1]:g} over {len(self.alpha)} groups"
        )
        mb = 2**20
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        return [
            f"quantized {self.quantized_linears} linears of {self.model} with {self.scheme} (alpha {alpha})",
            f"size: {self.bytes_before / mb:.1f} MiB ({str(self.dtype).removeprefix('torch.')}) -> "
            f"{self.bytes_after / mb:.1f} MiB ({self.bytes_before / max(self.bytes_after, 1):.2f}x smaller)",
            f"time: {steps} (total {sum(self.seconds.values()):.1f} s)",
            f"wrote {self.out_dir} (compressed-tensors int-quantized: vLLM, transformers, smoothquant.load)",
        ]


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
    *,
    tokenizer: Any = None,
    scheme: str = "w8a8",
    alpha: Alpha = 0.5,
    calib: str = DEFAULT_CALIB,
    num_samples: int = 64,
    seq_len: int = 512,
    dtype: torch.dtype = torch.float32,
    force: bool = False,
    weight_rounding: str = "nearest",
    ranges: str = "absmax",
    check_alphas: tuple[float, ...] = (),
    progress: bool = True,
) -> ExportSummary:
    """Quantize ``model`` (a name ``smoothquant.models.load_model`` understands, or a loaded model
    with its ``tokenizer``) with SmoothQuant and write a compressed-tensors checkpoint to ``out_dir``.

    ``calib`` names the calibration text (``smoothquant.data.calibration_batches``): ``num_samples``
    sequences of ``seq_len`` tokens. ``weight_rounding="gptq"`` rounds weights against the
    calibration inputs (:mod:`smoothquant.quantization.gptq`); ``ranges="search"`` clips scales
    where that lowers the calibration error, and ``check_alphas`` checks ``alpha="auto"`` against
    single alphas (see ``quantize_model``). The checkpoint format is the same either way.
    """
    out_dir = Path(out_dir)
    check_output(out_dir.absolute(), force)
    resolved = get_scheme(scheme)
    ct.check_exportable(resolved)
    seconds: dict[str, float] = {}
    name = model if isinstance(model, str) else type(model).__name__
    if isinstance(model, str):
        from smoothquant.models import load_model

        t = time.perf_counter()
        model, tokenizer = load_model(model, dtype=dtype)
        seconds["load"] = time.perf_counter() - t
    if tokenizer is None:
        raise ExportError("a tokenizer is needed to build calibration data; pass tokenizer=")
    from smoothquant.data import calibration_batches

    bytes_before = _float_bytes(model)  # before quantize replaces the linears in place
    batches = calibration_batches(tokenizer, calib, num_samples=num_samples, seq_len=seq_len)
    result = quantize_model(
        model,
        batches,
        resolved,
        alpha,
        seq_len=seq_len,
        num_samples=num_samples,
        weight_rounding=weight_rounding,
        ranges=ranges,
        check_alphas=check_alphas,
        progress=progress,
    )
    seconds |= result.seconds
    recipe = result.recipe()
    recipe = {
        "source_model": name,
        "calibration": {
            "dataset": calib,
            "num_samples": num_samples,
            "seq_len": seq_len,
            **(recipe.get("calibration") or {}),
        },
    }
    t = time.perf_counter()
    save_quantized(result, out_dir, tokenizer=tokenizer, recipe=recipe, force=force)
    seconds["save"] = time.perf_counter() - t
    quantized = sum(1 for m in model.modules() if isinstance(m, FakeQuantLinear))
    return ExportSummary(
        out_dir=out_dir,
        model=name,
        scheme=resolved.name,
        alpha=result.alpha,
        quantized_linears=quantized,
        bytes_before=bytes_before,
        bytes_after=(out_dir / WEIGHTS_FILE).stat().st_size,
        dtype=model_dtype(model),
        seconds=seconds,
    )
