"""The whole method in one call: calibrate -> smooth -> quantize.

The three steps stay usable on their own; this module only strings them together the way a
scheme asks (baselines skip smoothing, clipping schemes recalibrate after it) and records what
was done, so export can write a recipe.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from smoothquant.calibration import ActStats, calibrate, collect_hessians, search_input_clip
from smoothquant.calibration.batches import Batches, sequences
from smoothquant.errors import ArgumentError, CalibrationError
from smoothquant.quantization import Scheme, get_scheme, quantization_targets, quantize
from smoothquant.quantization.gptq import check_rounding
from smoothquant.search import AlphaSearch, search_alpha
from smoothquant.search.check import ModelCheck, calibration_loss, candidates, check_grid, choose
from smoothquant.smoothing import smooth
from smoothquant.smoothing.smooth import Alpha

RANGES = ("absmax", "search")


@dataclass
class QuantizationResult:
    model: nn.Module
    scheme: Scheme
    stats: ActStats | None
    smoothed_stats: ActStats | None
    alpha: dict[str, float | None] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    linear_pairs: bool = False
    search: AlphaSearch | None = None
    weight_rounding: str = "nearest"
    ranges: str = "absmax"
    input_clip: dict[str, float] = field(default_factory=dict)
    check: ModelCheck | None = None

    def recipe(self) -> dict[str, Any]:
        """What was applied, JSON-serialisable (scheme, alpha per group, calibration size).

        ``alpha`` and ``linear_pairs`` replay the smoothing:
        ``quantize_model(..., alpha=alphas_from_recipe(r), linear_pairs=r["linear_pairs"])``;
        ``alpha_search`` says how automatic alphas were chosen (None for given alphas).
        """
        s = self.scheme
        return {
            "scheme": s.name,
            "weights": vars(s.weights),
            "inputs": vars(s.inputs),
            "outputs": vars(s.outputs) if s.outputs else None,
            "outlier_threshold": s.outlier_threshold,
            "migration": s.migration,
            "alpha": self.alpha,
            "linear_pairs": self.linear_pairs,
            "alpha_search": self.search.to_recipe() if self.search else None,
            "model_check": self.check.to_recipe() if self.check else None,
            "weight_rounding": self.weight_rounding,
            "ranges": self.ranges,
            "input_clip": self.input_clip,
            "calibration": {k: self.stats.meta.get(k) for k in ("num_tokens", "num_sequences")}
            if self.stats
            else None,
        }


def quantize_model(
    model: nn.Module,
    calibration: Batches | None = None,
    scheme: str | Scheme = "w8a8",
    alpha: Alpha | Literal["auto"] = 0.5,
    *,
    linear_pairs: bool | None = None,
    search_options: Mapping[str, Any] | None = None,
    stats: ActStats | None = None,
    seq_len: int | None = 512,
    batch_size: int = 1,
    num_samples: int | None = None,
    quantize_bmm_inputs: bool = False,
    quantize_lm_head: bool = False,
    weight_rounding: Literal["nearest", "gptq"] = "nearest",
    ranges: Literal["absmax", "search"] = "absmax",
    check_alphas: Sequence[float] | bool | None = None,
    progress: bool = True,
) -> QuantizationResult:
    """Calibrate (unless ``stats`` are given), smooth as the scheme says, and quantize in place.

    Dynamic baselines (``naive``, ``zeroquant``, ``llm.int8``) need no calibration data.
    ``alpha="auto"`` chooses alpha (or off) per smoothing group with :func:`search_alpha` on the
    calibration data (``search_options`` are passed to it: ``per_block``, ``grid``, ``num_samples``,
    ``reference``...) and prints a summary when ``progress``. ``linear_pairs`` (also smooth
    ``v_proj -> o_proj``, ``up_proj -> down_proj``...) defaults to True with ``"auto"``, which can
    switch each of them off, and to False with a given alpha, as in the paper.
    ``weight_rounding="gptq"``: round weights to minimise each linear's output error on the
    calibration data (:mod:`smoothquant.quantization.gptq`; one more pass over it) instead of to
    nearest; same format. ``ranges="search"``: scales below the absmax where they lower the error
    on the calibration data, per linear: static input ranges (one more pass,
    :func:`~smoothquant.calibration.clip.search_input_clip`) and, with GPTQ rounding, weight scales
    (:func:`~smoothquant.quantization.gptq.search_scale`); ``"absmax"`` (default) keeps the paper's
    ranges. Same format either way. ``check_alphas`` (with ``"auto"``; True: 0.4..0.8): also
    build the model with each of these single alphas, exactly as it is about to be quantized, and
    keep the best of them instead of the searched alphas where its calibration perplexity is lower
    by more than 0.25% (:mod:`smoothquant.search.check`; one full quantization per candidate, on a
    copy, then the winner once more in place).
    """
    check_rounding(weight_rounding, get_scheme(scheme).outlier_threshold)
    if ranges not in RANGES:
        raise ArgumentError(f"ranges must be one of {', '.join(RANGES)}, not {ranges!r}")
    if ranges == "search" and calibration is None:
        raise CalibrationError("ranges='search' measures the calibration data: pass it")
    if ranges == "search" and get_scheme(scheme).needs_token_histograms:
        raise ArgumentError(
            f"scheme {get_scheme(scheme).name} already clips its static ranges at a token quantile; "
            "use ranges='absmax' with it"
        )
    if weight_rounding == "gptq" and calibration is None:
        raise CalibrationError(
            "weight_rounding='gptq' measures the calibration inputs: pass calibration data"
        )
    auto = isinstance(alpha, str)
    if auto and alpha != "auto":
        raise ArgumentError(f"alpha must be a number, a mapping of group ids, or 'auto'; got {alpha!r}")
    grid = check_grid(check_alphas)
    if grid and not auto:
        raise ArgumentError("check_alphas checks the result of alpha='auto'; with a given alpha, drop it")
    if linear_pairs is None:
        linear_pairs = auto
    scheme = get_scheme(scheme, quantize_bmm_inputs=quantize_bmm_inputs)
    seconds: dict[str, float] = {}
    calib_kwargs = dict(seq_len=seq_len, batch_size=batch_size, num_samples=num_samples, progress=progress)
    if stats is None and scheme.needs_calibration:
        if calibration is None:
            raise CalibrationError(f"scheme {scheme.name} needs calibration data (or precomputed stats)")
        t = time.perf_counter()
        stats = calibrate(model, calibration, token_histograms=scheme.needs_token_histograms, **calib_kwargs)
        seconds["calibrate"] = time.perf_counter() - t
    smoothed = stats
    applied: dict[str, float | None] = {}
    search = None
    check: ModelCheck | None = None
    if auto and scheme.migration == "smoothquant":
        if calibration is None:
            raise CalibrationError(
                "alpha='auto' searches on calibration data: pass it (stats alone are not enough)"
            )
        options = {
            "seq_len": seq_len,
            "batch_size": batch_size,
            "progress": progress,
            **(search_options or {}),
        }
        search = search_alpha(model, calibration, scheme, stats=stats, linear_pairs=linear_pairs, **options)
        alpha = search.alpha
        seconds["search"] = search.seconds
        if progress:
            print(search.summary())
        if grid:
            t = time.perf_counter()
            build = dict(
                seq_len=seq_len,
                batch_size=batch_size,
                num_samples=num_samples,
                quantize_lm_head=quantize_lm_head,
                weight_rounding=weight_rounding,
                ranges=ranges,
            )
            check, alpha, linear_pairs = _model_check(
                model, calibration, scheme, search.alpha, linear_pairs, grid, stats, build, progress
            )
            seconds["check"] = time.perf_counter() - t
            if progress:
                print(check.summary())
    elif auto:
        alpha = 0.5  # gamma migration has no alpha
    if scheme.migration != "none":
        t = time.perf_counter()
        method = "gamma" if scheme.migration == "gamma" else "smoothquant"
        smoothed = smooth(model, stats, alpha, linear_pairs=linear_pairs, method=method)
        applied = smoothed.meta["smoothing"]["alpha"]
        seconds["smooth"] = time.perf_counter() - t
        if scheme.needs_token_histograms:
            # token histograms of the smoothed model cannot be derived; measure them
            t = time.perf_counter()
            smoothed = calibrate(model, calibration, token_histograms=True, **calib_kwargs)
            seconds["recalibrate"] = time.perf_counter() - t
    input_clip: dict[str, float] = {}
    if ranges == "search" and not scheme.inputs.dynamic:
        t = time.perf_counter()
        targets = quantization_targets(model, quantize_lm_head=quantize_lm_head)
        input_clip = search_input_clip(model, calibration, targets, smoothed, **calib_kwargs)
        seconds["ranges"] = time.perf_counter() - t
    hessians = None
    if weight_rounding == "gptq":
        t = time.perf_counter()
        targets = quantization_targets(model, quantize_lm_head=quantize_lm_head)
        hessians = collect_hessians(model, calibration, targets, **calib_kwargs)
        seconds["hessians"] = time.perf_counter() - t
    t = time.perf_counter()
    quantize(
        model,
        scheme,
        smoothed,
        quantize_lm_head=quantize_lm_head,
        hessians=hessians,
        search_weight_scales=ranges == "search" and hessians is not None,
        input_clip=input_clip,
    )
    seconds["quantize"] = time.perf_counter() - t
    return QuantizationResult(
        model,
        scheme,
        stats,
        smoothed,
        applied,
        seconds,
        linear_pairs,
        search,
        weight_rounding,
        ranges,
        input_clip,
        check,
    )


def _model_check(
    model: nn.Module,
    calibration: Batches,
    scheme: Scheme,
    searched: dict[str, float | None],
    linear_pairs: bool,
    grid: tuple[float, ...],
    stats: ActStats | None,
    options: dict[str, Any],
    progress: bool,
) -> tuple[ModelCheck, Alpha, bool]:
    """Build each candidate on a copy of the (still floating-point) model, score it on the
    calibration sequences, and return the check with the winner's alpha and linear pairs."""
    start = time.perf_counter()
    rows = sequences(calibration, options["seq_len"])[: options["num_samples"]]
    losses: dict[str, float] = {}
    tokens = 0
    cands = candidates(scheme, grid, linear_pairs)
    for i, cand in enumerate(cands):
        if progress:
            print(f"model check {i + 1}/{len(cands)}: {cand.label}", flush=True)
        built = quantize_model(
            copy.deepcopy(model),
            calibration,
            scheme,
            dict(searched) if cand.alpha is None else cand.alpha,
            linear_pairs=cand.linear_pairs,
            stats=stats,
            progress=False,
            **options,
        )
        losses[cand.label], tokens = calibration_loss(built.model, rows, options["batch_size"])
        del built
    check = choose(losses, tokens, time.perf_counter() - start)
    winner = next(c for c in cands if c.label == check.chosen)
    return check, searched if winner.alpha is None else winner.alpha, winner.linear_pairs
