"""``smooth``: migrate activation outliers into weights, group by group, in place."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Mapping

import torch
from torch import nn

from smoothquant.calibration.stats import ActStats
from smoothquant.errors import ArgumentError, StatsMismatchError
from smoothquant.families import ResolvedGroup, ResolvedModel, prepare_model, resolve
from smoothquant.nn_utils import compute_dtype, in_out_features, is_linear_like, model_dtype, weight_oi
from smoothquant.smoothing.fold import fold_into_consumers, fold_into_producer
from smoothquant.smoothing.scales import (
    expand_to_consumer,
    gamma_scales,
    reduce_to_producer,
    smoothing_scales,
)
from smoothquant.state import UNSMOOTHED, record_smoothing, smoothing_id

log = logging.getLogger("smoothquant")

Alpha = float | Mapping[str, float | None]
METHODS = ("smoothquant", "gamma")


def _check_alpha(value: float | None, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ArgumentError(
            f"alpha must be a number in [0, 1] (or None to skip a group); got {value!r} for {where}"
        )
    return float(value)


def check_alpha(alpha: object) -> None:
    """Refuse a bad alpha (a number in [0, 1], ``"auto"``, or a mapping of group patterns to
    numbers or None) before any model work, with the message :func:`smooth` would give later."""
    if alpha == "auto":
        return
    if isinstance(alpha, Mapping):
        for key, value in alpha.items():
            _check_alpha(value, f"group {key!r}")
    else:
        _check_alpha(alpha, "every group")  # type: ignore[arg-type]


def resolve_alphas(group_ids: list[str], alpha: Alpha) -> dict[str, float | None]:
    """Alpha per group id. A mapping's keys are exact ids or fnmatch patterns (first match wins,
    exact ids before patterns); ``None`` leaves a group unsmoothed. Unmatched groups are an error,
    so a typo cannot silently leave layers unsmoothed: add ``"*"`` as a default."""
    if not isinstance(alpha, Mapping):
        value = _check_alpha(alpha, "all groups")
        return dict.fromkeys(group_ids, value)
    out: dict[str, float | None] = {}
    for gid in group_ids:
        if gid in alpha:
            out[gid] = _check_alpha(alpha[gid], gid)
            continue
        for pattern, value in alpha.items():
            if fnmatch.fnmatchcase(gid, pattern):
                out[gid] = _check_alpha(value, pattern)
                break
        else:
            raise ArgumentError(f"no alpha given for smoothing group {gid!r}; add a '*' key as the default")
    return out


def _expert_prefixes(resolved: ResolvedModel) -> tuple[str, ...]:
    experts = resolved.family.experts
    return tuple(f"{b}.{experts.path}." for b in resolved.blocks) if experts else ()


def check_stats(
    resolved: ResolvedModel, groups: list[ResolvedGroup], stats: ActStats, model: nn.Module
) -> None:
    stats_id = stats.meta.get("smoothing_id")
    if stats_id is not None and stats_id != smoothing_id(model):
        state = "before" if smoothing_id(model) != UNSMOOTHED else "after"
        raise StatsMismatchError(
            f"these statistics were measured {state} the model's last smoothing, so they no longer "
            "describe its activations; use the statistics returned by smooth(), or recalibrate"
        )
    experts = _expert_prefixes(resolved)
    expected = {}
    for g in groups:
        for name, module in g.consumers.items():
            # calibration observes linears only; experts that received no calibration token have
            # no statistics, which is allowed
            if not is_linear_like(module):
                continue
            if name in stats.inputs or not (experts and name.startswith(experts)):
                expected[name] = in_out_features(module)[0]
    stats.validate(expected, what="smoothing")


def group_scales(
    g: ResolvedGroup, stats: ActStats, alpha: float, dt: torch.dtype, method: str = "smoothquant"
) -> torch.Tensor | None:
    """The factors ``s`` of one group from ``stats`` and its consumers' current weights (None when
    no consumer saw a calibration token, so there is nothing to balance)."""
    index = g.channel_index()
    present = [n for n in g.consumers if n in stats.inputs]
    if not present:
        return None
    if method == "gamma":
        return gamma_scales(g.producer.weight.to(dt) + g.norm_offset, dt)
    act = torch.stack([reduce_to_producer(stats.inputs[n].to(dt), index, g.width) for n in present])
    w = torch.stack(
        [
            reduce_to_producer(weight_oi(m).detach().abs().amax(0).to(dt).cpu(), index, g.width)
            for m in g.consumers.values()
        ]
    )
    return smoothing_scales(act.amax(0), w.amax(0), alpha, dt)


def apply_group(g: ResolvedGroup, s: torch.Tensor, stats: ActStats) -> None:
    """Fold ``s`` into the group's modules and update ``stats`` (in place) to match: inputs of its
    consumers divided by ``s``, and the smoothed rows of a linear producer's recorded outputs."""
    device = weight_oi(next(iter(g.consumers.values()))).device
    fold_into_producer(g, s.to(device))
    fold_into_consumers(g, s.to(device))
    s_in = expand_to_consumer(s, g.channel_index()).float()
    for n in (*g.consumers, *g.passive):  # passive readers that are linears were observed too
        if n in stats.inputs:
            stats.inputs[n] = stats.inputs[n] / s_in
            stats.token_hist.pop(n, None)
    if g.is_linear_pair and g.producer_name in stats.outputs:
        rows = g.rows or slice(None)
        stats.outputs[g.producer_name][rows] = stats.outputs[g.producer_name][rows] / s.float()


def smoothing_groups(resolved: ResolvedModel, linear_pairs: bool, method: str) -> list[ResolvedGroup]:
    """The groups a call smooths: norm groups, and linear -> linear ones with ``linear_pairs``."""
    if method not in METHODS:
        raise ArgumentError(f"unknown smoothing method {method!r}; choose one of {', '.join(METHODS)}")
    pairs = linear_pairs and method == "smoothquant"
    return [g for g in resolved.groups if pairs or not g.is_linear_pair]


@torch.no_grad()
def smooth_groups(
    groups: list[ResolvedGroup],
    stats: ActStats,
    alphas: Mapping[str, float | None],
    dt: torch.dtype,
    method: str = "smoothquant",
) -> tuple[ActStats, dict[str, float | None]]:
    """Fold the scales of ``groups`` into their modules; returns the smoothed statistics (a copy)
    and the alpha applied per group (None: skipped).

    Linear producers go first: their output rows change, and the norm groups then balance
    against the weights that will actually be quantized. Groups of different blocks never share
    a module, so smoothing one block at a time (:mod:`smoothquant.layerwise`) gives the same result.
    """
    out = stats.copy()
    applied: dict[str, float | None] = {}
    for g in sorted(groups, key=lambda g: not g.is_linear_pair):
        a = alphas[g.id]
        applied[g.id] = a
        if a is None:
            continue
        s = group_scales(g, stats, a, dt, method)
        if s is None:
            log.warning("smoothing group %s skipped: its consumers saw no calibration tokens", g.id)
            applied[g.id] = None
            continue
        apply_group(g, s, out)
    return out, applied


@torch.no_grad()
def smooth(
    model: nn.Module,
    stats: ActStats,
    alpha: Alpha = 0.5,
    *,
    linear_pairs: bool = False,
    method: str = "smoothquant",
) -> ActStats:
    """Smooth ``model`` in place and return the statistics of the smoothed model.

    For every group of the family table (norm -> linears; with ``linear_pairs`` also
    linear -> linear) computes ``s = max|X|^alpha / max|W|^(1-alpha)`` from ``stats`` (``max|W|``
    over all consumers of the group) and folds ``1/s`` into the producer and ``s`` into the
    consumers. ``alpha``: one float, or a mapping from group ids / patterns (``"*.mlp_in"``,
    ``"model.layers.3.attn_in"``) to floats or None (skip). ``method="gamma"`` applies Outlier
    Suppression's Gamma Migration (``s = |gamma|`` of each norm) instead.

    Modified in place: producer norms' weights and biases, producer linears' output rows, consumer
    linears' weights (and routers'). Fused MoE experts are unfolded first. Everything is validated
    before the first edit, so a failing call leaves the model untouched.

    Returns the statistics of the smoothed model, derived exactly from ``stats`` (input channel
    absmax divided by ``s``; q/k/v output absmax for smoothed ``v_proj`` rows too). Token
    histograms of smoothed inputs cannot be derived and are dropped: schemes that need them
    (``outlier-suppression``) recalibrate.
    """
    if method not in METHODS:
        raise ArgumentError(f"unknown smoothing method {method!r}; choose one of {', '.join(METHODS)}")
    prepare_model(model)
    resolved = resolve(model)
    groups = smoothing_groups(resolved, linear_pairs, method)
    alphas = resolve_alphas([g.id for g in groups], alpha)
    check_stats(resolved, groups, stats, model)
    out, applied = smooth_groups(groups, stats, alphas, compute_dtype(model_dtype(model)), method)
    record = {"method": method, "linear_pairs": linear_pairs, "alpha": applied}
    out.meta["smoothing_id"] = record_smoothing(model, record)
    out.meta["smoothing"] = record
    return out
