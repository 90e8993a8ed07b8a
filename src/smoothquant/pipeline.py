"""The whole method in one call: calibrate -> (search alpha) -> smooth -> (ranges, GPTQ) -> quantize.

The stages stay usable on their own; this module only strings them together the way a
:class:`~smoothquant.recipe.Recipe` asks (baselines skip smoothing, clipping schemes recalibrate
after it) and records what was done in a :class:`~smoothquant.recipe.QuantizationResult`, so export
can write the recipe. The layer-by-layer driver (:mod:`smoothquant.layerwise`) applies the same
stages to one decoder block at a time.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from smoothquant.calibration import ActStats, calibrate, collect_hessians
from smoothquant.calibration.batches import Batches, sequences
from smoothquant.quantization import Scheme, quantization_targets, quantize, search_input_clip
from smoothquant.recipe import RANGES, QuantizationResult, Recipe, as_recipe, check_data
from smoothquant.search import AlphaSearch, search_alpha
from smoothquant.search.check import ModelCheck, calibration_loss, candidates, choose
from smoothquant.smoothing import smooth
from smoothquant.smoothing.smooth import Alpha

__all__ = ["RANGES", "QuantizationResult", "Recipe", "quantize_model"]

T = TypeVar("T")


def _timed(seconds: dict[str, float], stage: str, run: Callable[[], T]) -> T:
    t = time.perf_counter()
    out = run()
    seconds[stage] = time.perf_counter() - t
    return out


def quantize_model(
    model: nn.Module,
    calibration: Batches | None = None,
    recipe: Recipe | str | Scheme | None = None,
    alpha: Alpha | str | None = None,
    *,
    stats: ActStats | None = None,
    progress: bool = True,
    **settings: Any,
) -> QuantizationResult:
    """Calibrate (unless ``stats`` are given), smooth and quantize ``model`` in place, following
    ``recipe`` (:class:`~smoothquant.recipe.Recipe`; its fields say what each setting does).

    For convenience ``recipe`` may be a scheme (name) and ``alpha`` plus any Recipe field given as
    keywords (``quantize_model(model, data, "O3", "auto", weight_rounding="gptq")``); keywords
    given with a Recipe replace its fields. Dynamic baselines (``naive``, ``zeroquant``,
    ``llm.int8``) need no calibration data. With ``alpha="auto"`` and ``progress`` the search's
    summary is printed; with ``check_alphas`` each candidate is built on a copy of the model
    (:mod:`smoothquant.search.check`), then the winner once more in place.
    """
    recipe = as_recipe(recipe, settings if alpha is None else {**settings, "alpha": alpha})
    scheme = recipe.resolved_scheme()
    check_data(recipe, scheme, calibration, stats)
    seconds: dict[str, float] = {}
    calib = {**recipe.calibration_settings(), "progress": progress}
    if stats is None and scheme.needs_calibration:
        histograms = scheme.needs_token_histograms
        stats = _timed(
            seconds, "calibrate", lambda: calibrate(model, calibration, token_histograms=histograms, **calib)
        )
    search, check, chosen = _alphas(model, calibration, scheme, recipe, stats, progress, seconds)
    smoothed, applied = _smooth(model, calibration, scheme, chosen, stats, calib, seconds)
    targets = quantization_targets(model, quantize_lm_head=recipe.quantize_lm_head)
    input_clip: dict[str, float] = {}
    if recipe.ranges == "search" and not scheme.inputs.dynamic:
        input_clip = _timed(
            seconds, "ranges", lambda: search_input_clip(model, calibration, targets, smoothed, **calib)
        )
    hessians = None
    if recipe.weight_rounding == "gptq":
        hessians = _timed(seconds, "hessians", lambda: collect_hessians(model, calibration, targets, **calib))
    options = {
        "quantize_lm_head": recipe.quantize_lm_head,
        "hessians": hessians,
        "search_weight_scales": recipe.ranges == "search" and hessians is not None,
        "input_clip": input_clip,
    }
    _timed(seconds, "quantize", lambda: quantize(model, scheme, smoothed, **options))
    pairs, rounding = bool(chosen.linear_pairs), recipe.weight_rounding
    done = (applied, seconds, pairs, search, rounding, recipe.ranges, input_clip, check, recipe)
    return QuantizationResult(model, scheme, stats, smoothed, *done)


def _alphas(
    model: nn.Module,
    calibration: Batches | None,
    scheme: Scheme,
    recipe: Recipe,
    stats: ActStats | None,
    progress: bool,
    seconds: dict[str, float],
) -> tuple[AlphaSearch | None, ModelCheck | None, Recipe]:
    """``alpha="auto"``: the search (and the model check) and the recipe with the alphas chosen;
    given alphas: the recipe as it is."""
    if not (recipe.auto and scheme.migration == "smoothquant"):
        return None, None, recipe
    search = _search(model, calibration, scheme, recipe, stats, progress)
    seconds["search"] = search.seconds
    chosen = recipe.replace(alpha=dict(search.alpha), check_alphas=())
    if not recipe.check_alphas:
        return search, None, chosen
    check, chosen = _timed(
        seconds, "check", lambda: _model_check(model, calibration, scheme, chosen, recipe, stats, progress)
    )
    if progress:
        print(check.summary())
    return search, check, chosen


def _search(
    model: nn.Module,
    calibration: Batches,
    scheme: Scheme,
    recipe: Recipe,
    stats: ActStats | None,
    progress: bool,
) -> AlphaSearch:
    """``alpha="auto"``: the per-group alphas of :func:`search_alpha` (its options from the recipe)."""
    pairs = bool(recipe.linear_pairs)
    search = search_alpha(
        model,
        calibration,
        scheme,
        stats=stats,
        linear_pairs=pairs,
        progress=progress,
        **recipe.search_settings(),
    )
    if progress:
        print(search.summary())
    return search


def _smooth(
    model: nn.Module,
    calibration: Batches | None,
    scheme: Scheme,
    recipe: Recipe,
    stats: ActStats | None,
    calib: dict[str, Any],
    seconds: dict[str, float],
) -> tuple[ActStats | None, dict[str, float | None]]:
    """Fold the recipe's alphas into the model; the statistics of the smoothed model and the
    alphas applied per group (none for baselines)."""
    if scheme.migration == "none":
        return stats, {}
    alpha = 0.5 if recipe.auto else recipe.alpha  # gamma migration has no alpha
    method = "gamma" if scheme.migration == "gamma" else "smoothquant"
    smoothed = _timed(
        seconds,
        "smooth",
        lambda: smooth(model, stats, alpha, linear_pairs=recipe.linear_pairs, method=method),
    )
    applied = smoothed.meta["smoothing"]["alpha"]
    if scheme.needs_token_histograms:
        # token histograms of the smoothed model cannot be derived; measure them
        smoothed = _timed(
            seconds, "recalibrate", lambda: calibrate(model, calibration, token_histograms=True, **calib)
        )
    return smoothed, applied


def _model_check(
    model: nn.Module,
    calibration: Batches,
    scheme: Scheme,
    searched: Recipe,
    recipe: Recipe,
    stats: ActStats | None,
    progress: bool,
) -> tuple[ModelCheck, Recipe]:
    """Build each candidate on a copy of the (still floating-point) model, score it on the
    calibration sequences, and return the check with the winner's recipe (given alphas)."""
    start = time.perf_counter()
    rows = sequences(calibration, recipe.seq_len)[: recipe.num_samples]
    losses: dict[str, float] = {}
    tokens = 0
    cands = candidates(scheme, recipe.check_alphas, bool(recipe.linear_pairs))
    chosen: dict[str, Recipe] = {}
    for i, cand in enumerate(cands):
        if progress:
            print(f"model check {i + 1}/{len(cands)}: {cand.label}", flush=True)
        chosen[cand.label] = searched if cand.alpha is None else searched.replace(alpha=cand.alpha)
        chosen[cand.label] = chosen[cand.label].replace(linear_pairs=cand.linear_pairs)
        built = quantize_model(
            copy.deepcopy(model), calibration, chosen[cand.label], stats=stats, progress=False
        )
        losses[cand.label], tokens = calibration_loss(built.model, rows, recipe.batch_size)
        del built
    check = choose(losses, tokens, time.perf_counter() - start)
    return check, chosen[check.chosen]
