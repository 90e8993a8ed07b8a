"""``search_alpha``: choose the migration strength of every smoothing group from data.

The paper tunes one alpha per model by hand. Here each group (``model.layers.3.attn_in``, and the
linear -> linear groups ``attn_out``/``mlp_out``...) gets the alpha, or ``None`` (no smoothing),
whose *quantized* output under the actual scheme is closest to floating point on calibration
data. The search walks the decoder blocks in order on cached block inputs, so its cost is a few
forward passes plus the trial quantizations:

1. one forward pass records what every block is called with (:mod:`.blocks`);
2. per block, the floating-point block runs once with hooks that keep its linears' inputs;
3. per group, each candidate alpha folds its scales into copies of the group's linears,
   quantizes them exactly as :func:`smoothquant.quantize` would (static scales from the
   statistics that :func:`smoothquant.smooth` would return) and measures the error of the
   group's output against floating point: a norm group's consumers on their cached inputs
   (``v_proj``/``up_proj`` rows scaled back by the ``s`` of their linear -> linear group); a
   linear -> linear group's consumer with its producer quantized too, by running the block on a
   few sequences (its producer's rows lose precision when divided by a large ``s``);
4. the per-group choice is checked against one alpha for the whole block by the error of the
   block's output, and the better one kept (``uniform_fallback``): groups tuned alone can miss
   how their errors combine;
5. the winners are folded into a copy of the block, which is quantized and (``reference=
   "quantized"``, the default) produces the inputs of the next block, so later blocks are tuned
   for the inputs they will really see.

Errors are per token, relative to the token's own output (:func:`output_error`).

Groups whose producer is a linear are searched before the norm groups of their block, the order
in which :func:`smooth` applies them, so the scales chosen here are exactly those that
``smooth(model, stats, alpha=result.alpha, linear_pairs=...)`` then folds into the model. The model
itself is never modified (fused MoE experts are unfolded, which keeps its function).
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from smoothquant.calibration import ActStats, calibrate
from smoothquant.calibration.batches import Batches, make_batches, sequences
from smoothquant.errors import ArgumentError, SchemeError
from smoothquant.families import ResolvedGroup, ResolvedModel, prepare_model, resolve
from smoothquant.nn_utils import compute_dtype, in_out_features, model_dtype, set_submodule, weight_oi
from smoothquant.quantization import Scheme, get_scheme
from smoothquant.quantization.apply import check_static_coverage, quantized_linear
from smoothquant.quantization.gptq import column_scales, search_scale
from smoothquant.quantization.quantizer import round_clamp
from smoothquant.search.blocks import BlockCall, capture_block_calls, run_capturing, run_until
from smoothquant.smoothing.fold import fold_into_consumers, fold_into_producer
from smoothquant.smoothing.scales import expand_to_consumer
from smoothquant.smoothing.smooth import apply_group, check_stats, group_scales

DEFAULT_GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(21))
REFERENCES = ("quantized", "fp")
ERRORS = ("token", "total")
Candidate = float | None


def _label(alpha: Candidate) -> str:
    return "off" if alpha is None else f"{alpha:g}"


@dataclass
class AlphaSearch:
    """What :func:`search_alpha` chose and why.

    ``alpha``: group id -> chosen alpha (``None``: left unsmoothed), ready for ``smooth(alpha=...)``.
    ``errors``: group id -> {candidate: error of the group's quantized output (:func:`output_error`),
    ``"off"`` for None}; block name -> {candidate: error of the block's output with that alpha for
    all its groups (``per_block``), or ``"per group"`` and the best single alpha compared on all
    searched tokens (``uniform_fallback``)}. Only the candidates evaluated.
    ``block_errors``: block name -> error of the quantized block's output.
    """

    alpha: dict[str, float | None]
    errors: dict[str, dict[str, float]]
    block_errors: dict[str, float]
    scheme: str
    linear_pairs: bool
    per_block: bool
    uniform_fallback: bool
    reference: str
    grid: tuple[float, ...]
    num_tokens: int
    seconds: float
    evaluations: int = 0
    search_weight_scales: bool = False

    def table(self) -> str:
        """One row per decoder block, one column per group kind (``-``: off)."""
        kinds: list[str] = []
        rows: dict[str, dict[str, list[float | None]]] = {}
        for gid, a in self.alpha.items():
            block, kind = _split_group_id(gid)
            if kind not in kinds:
                kinds.append(kind)
            rows.setdefault(block, {}).setdefault(kind, []).append(a)
        width = max([len(k) for k in kinds] + [9])
        head = "block".ljust(6) + "".join(k.rjust(width + 1) for k in kinds) + "  output err"
        lines = [head]
        for block, cells in rows.items():
            err = self.block_errors.get(block)
            lines.append(
                block.rpartition(".")[2].ljust(6)
                + "".join(_cell(cells.get(k, [])).rjust(width + 1) for k in kinds)
                + (f"  {err:10.2e}" if err is not None else "")
            )
        return "\n".join(lines)

    def summary(self) -> str:
        """A few lines: per group kind, how many are off and the range of the chosen alphas."""
        by_kind: dict[str, list[float | None]] = {}
        for gid, a in self.alpha.items():
            by_kind.setdefault(_split_group_id(gid)[1], []).append(a)
        parts = []
        for kind, values in by_kind.items():
            on = [v for v in values if v is not None]
            text = f"{kind}: "
            if on:
                text += f"{min(on):.2f}..{max(on):.2f} (median {statistics.median(on):.2f})"
            off = len(values) - len(on)
            if off:
                text += f"{', ' if on else ''}off x{off}"
            parts.append(text)
        mode = "per block" if self.per_block else "per group"
        checked = [e for b, e in self.errors.items() if b in self.block_errors and "per group" in e]
        if checked:
            kept = sum(e["per group"] > min(e.values()) for e in checked)
            mode += f", one alpha kept in {kept}/{len(checked)} blocks"
        head = (
            f"auto alpha for {self.scheme} ({mode}, {len(self.alpha)} groups, {self.num_tokens} tokens, "
            f"{self.seconds:.0f} s):"
        )
        return head + "\n  " + "\n  ".join(parts)

    def to_recipe(self) -> dict[str, Any]:
        """JSON-serialisable record of the search (the chosen alphas sit in the recipe's ``alpha``)."""
        return {
            "method": "auto",
            "scheme": self.scheme,
            "linear_pairs": self.linear_pairs,
            "per_block": self.per_block,
            "uniform_fallback": self.uniform_fallback,
            "reference": self.reference,
            "search_weight_scales": self.search_weight_scales,
            "grid": list(self.grid),
            "num_tokens": self.num_tokens,
            "seconds": round(self.seconds, 3),
            "error": {gid: self.errors.get(gid, {}).get(_label(a)) for gid, a in self.alpha.items()},
        }


def _split_group_id(gid: str) -> tuple[str, str]:
    """``model.layers.3.attn_in`` -> (``model.layers.3``, ``attn_in``); ``...expert_out.5`` -> kind
    ``expert_out`` (experts of one block share a column)."""
    parts = gid.split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[: i + 1]), ".".join(q for q in parts[i + 1 :] if not q.isdigit())
    return "", gid


def _cell(values: list[float | None]) -> str:
    """One table cell: an alpha, ``-`` (off), or the range over a block's experts."""
    if not values:
        return ""
    on = [v for v in values if v is not None]
    if len(values) == 1:
        return "-" if not on else f"{on[0]:.2f}"
    text = f"{min(on):.2f}..{max(on):.2f}" if on else ""
    off = len(values) - len(on)
    return text + (f"/-x{off}" if off else "")


def alphas_from_recipe(recipe: Mapping[str, Any]) -> dict[str, float | None]:
    """The per-group alphas stored in a recipe (``QuantizationResult.recipe()``, or its JSON), as
    a mapping ``smooth``/``quantize_model`` accept. Replay with the recipe's ``linear_pairs``."""
    alpha = recipe.get("alpha") if isinstance(recipe, Mapping) else None
    if not isinstance(alpha, Mapping) or not alpha:
        raise ArgumentError(
            "this recipe holds no per-group alphas (key 'alpha' missing or empty); it was not written "
            "by a smoothing scheme"
        )
    out: dict[str, float | None] = {}
    for gid, value in alpha.items():
        ok = value is None or (
            isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0
        )
        if not isinstance(gid, str) or not ok:
            raise ArgumentError(
                f"recipe alpha for {gid!r} is {value!r}; expected a number in [0, 1] or null (off)"
            )
        out[gid] = None if value is None else float(value)
    return out


def _check_scheme(scheme: Scheme) -> None:
    if scheme.migration != "smoothquant":
        raise SchemeError(
            f"alpha search tunes SmoothQuant migration; scheme {scheme.name} uses migration "
            f"{scheme.migration!r}. Use O1, O2, O3, w8a8 or a Scheme with migration='smoothquant'"
        )
    if any(q is not None and q.clip_quantile is not None for q in (scheme.inputs, scheme.outputs)):
        raise SchemeError(
            f"scheme {scheme.name} clips static ranges at token quantiles, which the search cannot "
            "predict for smoothed inputs; search with the unclipped scheme, or pass a fixed alpha"
        )


def _check_grid(grid: Sequence[float]) -> tuple[float, ...]:
    values = sorted({float(a) for a in grid})
    if not values or any(not 0.0 <= a <= 1.0 or math.isnan(a) for a in values):
        raise ArgumentError(f"grid must hold alphas in [0, 1], got {list(grid)!r}")
    return tuple(values)


def _refine(evaluate: Callable[[Candidate], float], grid: tuple[float, ...], exhaustive: bool) -> dict:
    """Errors of ``None`` and of grid points: all of them, or coarse to fine (stride 4, 2, 1 around
    the best so far), which needs about half the evaluations when the error is unimodal in alpha."""
    results: dict[Candidate, float] = {None: evaluate(None)}
    n = len(grid)
    stride = 1 if exhaustive else max(1, 2 ** int(math.log2(max(1, (n - 1) // 4))))
    todo = sorted(set(range(0, n, stride)) | {n - 1})
    while True:
        for i in todo:
            if grid[i] not in results:
                results[grid[i]] = evaluate(grid[i])
        if stride == 1:
            return results
        best = min(range(n), key=lambda i: results.get(grid[i], math.inf))
        stride //= 2
        todo = [i for i in (best - stride, best + stride) if 0 <= i < n]


def _rebind(g: ResolvedGroup, block_name: str, block: nn.Module) -> ResolvedGroup:
    """The same group bound to the modules of a copy of its block (names kept)."""

    def module(name: str) -> nn.Module:
        return block.get_submodule(name[len(block_name) + 1 :])

    return replace(
        g,
        producer=module(g.producer_name),
        consumers={n: module(n) for n in g.consumers},
        passive={n: module(n) for n in g.passive},
    )


class _Search:
    """State shared by the per-block steps (kept out of the public signature)."""

    def __init__(
        self,
        scheme: Scheme,
        resolved: ResolvedModel,
        dt: torch.dtype,
        trial_tokens: int | None,
        error: str,
        search_weight_scales: bool = False,
    ) -> None:
        self.scheme, self.resolved, self.dt = scheme, resolved, dt
        self.trial_tokens, self.error = trial_tokens, error
        self.search_weight_scales = search_weight_scales
        self.bmm = set(resolved.bmm_inputs) if scheme.outputs is not None else set()
        self.static_in = not scheme.inputs.dynamic
        self.static_out = scheme.outputs is not None and not scheme.outputs.dynamic
        self.evaluations = 0

    def fake_quant(
        self,
        name: str,
        module: nn.Module,
        stats: ActStats,
        s_in: torch.Tensor | None = None,
        s_out: torch.Tensor | None = None,
        x: list[torch.Tensor] | None = None,
    ) -> nn.Module:
        """``module`` quantized as ``quantize`` would, given the statistics of the smoothed model
        (``stats`` with its input divided by ``s_in``, its outputs by ``s_out``, for a trial scale
        not folded into ``stats``). ``x``: the module's inputs as the trial sees them; with
        ``search_weight_scales`` the weight scale is shrunk as ``ranges="search"`` will (by the
        Hessian of these tokens; rounded to nearest)."""
        absmax_in = absmax_out = None
        if self.static_in:
            absmax_in = stats.inputs[name] if s_in is None else stats.inputs[name] / s_in.cpu().float()
            absmax_in = float(absmax_in.max())
        if self.static_out and name in self.bmm:
            absmax_out = stats.outputs[name] if s_out is None else stats.outputs[name] / s_out.cpu().float()
            absmax_out = float(absmax_out.max())
        q = quantized_linear(
            module,
            self.scheme,
            quantize_out=name in self.bmm,
            input_absmax=absmax_in,
            output_absmax=absmax_out,
        )
        if self.search_weight_scales and x:
            xs = torch.cat([t.reshape(-1, t.shape[-1]) for t in x]).float()
            w = weight_oi(module).detach().float()
            scale = search_scale(w, xs.T @ xs, q.weight_scale, q.weight_quant)
            q.weight_scale.copy_(scale)
            q.qweight.copy_(round_clamp(w, column_scales(scale, q.weight_quant, *w.shape)).to(torch.int8))
        return q

    def group_error(
        self,
        g: ResolvedGroup,
        alpha: Candidate,
        stats: ActStats,
        inputs: dict[str, list[torch.Tensor]],
        refs: dict[str, list[torch.Tensor]],
        row_scale: dict[str, torch.Tensor],
    ) -> float:
        """Error of the group's quantized consumer outputs with ``alpha``, on the given inputs.

        Outputs of consumers whose rows a linear -> linear group divided by ``s`` (``v_proj``,
        ``up_proj``) are multiplied back by ``s`` (``row_scale``): their errors reach the model
        amplified by it, in the consumer of that group.
        """
        self.evaluations += 1
        s = None if alpha is None else group_scales(g, stats, alpha, self.dt)
        err = 0.0
        for name, module in g.consumers.items():
            if not inputs[name]:
                continue  # an expert that received no token
            trial = copy.deepcopy(module)
            s_in = None
            if s is not None:
                s_dev = s.to(next(module.parameters()).device)
                fold_into_consumers(replace(g, consumers={name: trial}, passive={}), s_dev)
                s_in = expand_to_consumer(s_dev, g.channel_index())
            xs = _divided(inputs[name], s_in)
            q = self.fake_quant(name, trial, stats, s_in, x=xs)
            ys = [q(x) for x in xs]
            if name in row_scale:
                ys = [y * row_scale[name] for y in ys]
            err += output_error(ys, refs[name], self.error)
        return err

    def pair_error(
        self,
        g: ResolvedGroup,
        alpha: Candidate,
        stats: ActStats,
        block: nn.Module,
        block_name: str,
        hidden: list[torch.Tensor],
        calls: list[BlockCall],
        refs: list[torch.Tensor],
        inputs: dict[str, list[torch.Tensor]] | None = None,
    ) -> float:
        """Error of a linear -> linear group's consumer output with producer *and* consumer
        quantized, through the model's own code between them (attention, ``act(gate) * up``).

        The producer matters: with per-tensor weight scales, the rows divided by a large ``s``
        lose precision, and the consumer multiplies their errors back by ``s``.
        """
        self.evaluations += 1
        ((name, consumer),) = g.consumers.items()
        trial = replace(
            g, producer=copy.deepcopy(g.producer), consumers={name: copy.deepcopy(consumer)}, passive={}
        )
        s_in = s_out = None
        if alpha is not None:
            s = group_scales(g, stats, alpha, self.dt)
            s = s.to(next(consumer.parameters()).device)
            fold_into_producer(trial, s)
            fold_into_consumers(trial, s)
            s_in = expand_to_consumer(s, g.channel_index())
            s_out = _rows(g, s)
        inputs = inputs or {}
        x_in = _divided(inputs.get(name), s_in)
        swaps = {
            g.producer_name: self.fake_quant(
                g.producer_name, trial.producer, stats, s_out=s_out, x=inputs.get(g.producer_name)
            ),
            name: self.fake_quant(name, trial.consumers[name], stats, s_in, x=x_in),
        }
        prefix = len(block_name) + 1
        originals = {n: block.get_submodule(n[prefix:]) for n in swaps}
        try:
            for n, m in swaps.items():
                set_submodule(block, n[prefix:], m)
            outputs = run_until(block, hidden, calls, swaps[name])
        finally:
            for n, m in originals.items():
                set_submodule(block, n[prefix:], m)
        return output_error(outputs, refs, self.error) if outputs else 0.0

    def block_targets(self, block_name: str) -> list[str]:
        """The quantizable linears of one decoder block."""
        return [n for n in self.resolved.quantizable if n.startswith(block_name + ".")]

    def quantize_block(
        self,
        block: nn.Module,
        block_name: str,
        stats: ActStats,
        inputs: dict[str, list[torch.Tensor]] | None = None,
        in_scale: dict[str, torch.Tensor] | None = None,
    ) -> nn.Module:
        """Swap every quantizable linear of a (smoothed) block copy for its FakeQuantLinear
        (``inputs``: the unsmoothed inputs of its linears, ``in_scale``: what smoothing divided
        them by, for the weight-scale search)."""
        prefix = block_name + "."
        inputs, in_scale = inputs or {}, in_scale or {}
        new = {
            n: self.fake_quant(
                n, block.get_submodule(n[len(prefix) :]), stats, x=_divided(inputs.get(n), in_scale.get(n))
            )
            for n in self.block_targets(block_name)
        }
        for n, m in new.items():
            set_submodule(block, n[len(prefix) :], m)
        return block


def _divided(xs: list[torch.Tensor] | None, s: torch.Tensor | None) -> list[torch.Tensor] | None:
    """Inputs as a consumer sees them after smoothing divided them by ``s`` (computed in ``s``'s
    dtype, returned in theirs, as the folded norm or linear produces them)."""
    if xs is None or s is None:
        return xs
    return [(x.to(s.dtype) / s).to(x.dtype) for x in xs]


def _rows(g: ResolvedGroup, s: torch.Tensor) -> torch.Tensor:
    """A linear producer's ``s`` as a factor per output row (1 outside its smoothed chunk)."""
    full = torch.ones(in_out_features(g.producer)[1], dtype=s.dtype, device=s.device)
    full[g.rows or slice(None)] = s
    return full


def _first_batches(hidden: list[torch.Tensor], tokens: int | None) -> int:
    """How many leading batches hold ``tokens`` tokens (all if None; at least one)."""
    if tokens is None:
        return len(hidden)
    seen = 0
    for i, h in enumerate(hidden):
        seen += h.numel() // h.shape[-1]
        if seen >= tokens:
            return i + 1
    return len(hidden)


def _subsample(xs: list[torch.Tensor], k: int | None) -> list[torch.Tensor]:
    """At most ``k`` of a module's input tokens, a fixed random subset (all of them if fewer).

    A linear's squared error is a sum over tokens (per-token and static scales treat tokens
    independently), so a subset estimates it at a fraction of the cost; per-tensor dynamic scales
    are then taken over the subset.
    """
    total = sum(x.numel() // x.shape[-1] for x in xs)
    if k is None or total <= k:
        return xs
    flat = torch.cat([x.reshape(-1, x.shape[-1]) for x in xs])
    idx = torch.randperm(total, generator=torch.Generator().manual_seed(0))[:k].sort().values
    return [flat[idx.to(flat.device)]]


def output_error(outputs: list[torch.Tensor], refs: list[torch.Tensor], kind: str = "token") -> float:
    """Squared error of ``outputs`` against ``refs``: ``"token"``, each token's error relative to
    its own reference norm, averaged over tokens; ``"total"``, relative to the total norm.

    Per token is the default because a few tokens carry huge activations (attention sinks): a
    total weighs the choice by them alone, while the next norm rescales every token to the same
    size and the loss counts every token once.
    """
    num = torch.cat(
        [(y.float() - r.float()).pow(2).sum(-1).reshape(-1) for y, r in zip(outputs, refs, strict=True)]
    )
    den = torch.cat([r.float().pow(2).sum(-1).reshape(-1) for r in refs])
    if kind == "total":
        return float(num.sum() / den.sum().clamp_min(1e-30))
    # tokens with (near) zero output count as if of 1/1000 of the typical size, not infinitely
    return float((num / den.clamp_min(1e-3 * float(den.median()) + 1e-30)).mean())


def check_options(
    scheme: Scheme,
    grid: Sequence[float],
    reference: str,
    num_samples: int | None,
    trial_tokens: int | None,
    error: str = "token",
) -> tuple[float, ...]:
    """Everything about a search that can be checked before any work; returns the sorted grid."""
    _check_scheme(scheme)
    grid = _check_grid(grid)
    if reference not in REFERENCES:
        raise ArgumentError(f"reference must be one of {', '.join(REFERENCES)}, not {reference!r}")
    if error not in ERRORS:
        raise ArgumentError(f"error must be one of {', '.join(ERRORS)}, not {error!r}")
    for what, n in (("num_samples", num_samples), ("trial_tokens", trial_tokens)):
        if n is not None and n < 1:
            raise ArgumentError(f"{what} must be >= 1, got {n}")
    return grid


class BlockSearch:
    """The search of :func:`search_alpha`, one decoder block at a time.

    :meth:`step` chooses the alphas of one block's groups from the block's statistics and inputs
    and returns the inputs of the next block (of the quantized block, or of the floating-point one
    with ``reference="fp"``), so a caller holding one block in memory at a time
    (:mod:`smoothquant.layerwise`) gets exactly what :func:`search_alpha` chooses. Options are
    those of :func:`search_alpha`, already checked by :func:`check_options`.
    """

    def __init__(
        self,
        scheme: Scheme,
        resolved: ResolvedModel,
        dt: torch.dtype,
        *,
        linear_pairs: bool,
        per_block: bool,
        grid: tuple[float, ...],
        exhaustive: bool,
        reference: str,
        trial_tokens: int | None,
        error: str = "token",
        uniform_fallback: bool = True,
        search_weight_scales: bool = False,
    ) -> None:
        self.groups = [g for g in resolved.groups if linear_pairs or not g.is_linear_pair]
        self.linear_pairs, self.per_block, self.grid = linear_pairs, per_block, grid
        self.exhaustive, self.reference = exhaustive, reference
        self.uniform_fallback = uniform_fallback and not per_block
        self._search = _Search(scheme, resolved, dt, trial_tokens, error, search_weight_scales)
        self.alpha: dict[str, float | None] = {}
        self.errors: dict[str, dict[str, float]] = {}
        self.block_errors: dict[str, float] = {}
        self.evaluations = 0

    def step(
        self,
        block_name: str,
        layer: nn.Module,
        stats: ActStats,
        hidden: list[torch.Tensor],
        calls: list[BlockCall],
    ) -> tuple[list[torch.Tensor], dict[str, Any]]:
        """Search one block (``stats``: its unsmoothed statistics, which are not modified); returns
        the next block's inputs and what was chosen, as a JSON-able record for :meth:`restore`."""
        mine = sorted(
            (g for g in self.groups if g.id.startswith(block_name + ".")), key=lambda g: not g.is_linear_pair
        )
        before = self._search.evaluations
        if self.per_block:
            q_out, fp_out, picked, errs = _search_block_wise(
                self._search, block_name, layer, mine, stats, hidden, calls, self.grid, self.exhaustive
            )
        else:
            q_out, fp_out, picked, errs = _search_group_wise(
                self._search,
                block_name,
                layer,
                mine,
                stats,
                hidden,
                calls,
                self.grid,
                self.exhaustive,
                self.uniform_fallback,
            )
        record = {
            "alpha": picked,
            "errors": errs,
            "block_error": output_error(q_out, fp_out, self._search.error),
            "evaluations": self._search.evaluations - before,
        }
        self.restore(block_name, record)
        return (q_out if self.reference == "quantized" else fp_out), record

    def restore(self, block_name: str, record: dict[str, Any]) -> None:
        """Take a block's record (from :meth:`step`, possibly of an earlier run) into the result."""
        self.alpha.update(record["alpha"])
        self.errors.update(record["errors"])
        self.block_errors[block_name] = record["block_error"]
        self.evaluations += record["evaluations"]

    def result(self, scheme: str, num_tokens: int, seconds: float) -> AlphaSearch:
        order = {g.id: i for i, g in enumerate(self.groups)}  # report in the model's group order
        return AlphaSearch(
            alpha=dict(sorted(self.alpha.items(), key=lambda kv: order[kv[0]])),
            errors=self.errors,
            block_errors=self.block_errors,
            scheme=scheme,
            linear_pairs=self.linear_pairs,
            per_block=self.per_block,
            uniform_fallback=self.uniform_fallback,
            reference=self.reference,
            grid=self.grid,
            num_tokens=num_tokens,
            seconds=seconds,
            evaluations=self.evaluations,
            search_weight_scales=self._search.search_weight_scales,
        )


@torch.no_grad()
def search_alpha(
    model: nn.Module,
    batches: Batches,
    scheme: str | Scheme = "w8a8",
    *,
    stats: ActStats | None = None,
    linear_pairs: bool = True,
    per_block: bool = False,
    grid: Sequence[float] = DEFAULT_GRID,
    exhaustive: bool = False,
    reference: str = "quantized",
    seq_len: int | None = 512,
    batch_size: int = 1,
    num_samples: int | None = 8,
    trial_tokens: int | None = 512,
    error: str = "token",
    uniform_fallback: bool = True,
    search_weight_scales: bool = False,
    quantize_bmm_inputs: bool = False,
    progress: bool = True,
) -> AlphaSearch:
    """Choose alpha (or off) per smoothing group by the error of its quantized output.

    ``batches``: calibration data as :func:`calibrate` takes it; the first ``num_samples`` sequences
    of ``seq_len`` tokens are searched on. ``stats``: statistics of this (unsmoothed) model, as
    :func:`calibrate` returns them; measured on the searched sequences when omitted.
    ``linear_pairs``: also search linear -> linear groups (``v_proj -> o_proj``, ``up_proj ->
    down_proj``...), each possibly off. ``per_block``: one alpha for all groups of a decoder block,
    chosen by the error of the whole quantized block's output (coarser). ``uniform_fallback``: per
    group, but keep the best single alpha of a block where its output error is lower. ``grid``: candidate
    alphas (``None`` is always a candidate); ``exhaustive=False`` searches it coarse to fine.
    ``reference``: what the next block is tuned on, the outputs of the already quantized blocks
    (``"quantized"``) or of the floating-point model (``"fp"``). ``trial_tokens``: candidates are
    compared on this many randomly chosen tokens of each linear's input (None: all of them), and
    block-level comparisons on the first sequences holding that many tokens; the reported block
    errors and the next block's inputs use every searched token. ``error``: how output errors are
    compared (see :func:`output_error`). ``search_weight_scales``: candidates are scored with
    weight scales shrunk as ``ranges="search"`` shrinks them (by the Hessian of the searched
    tokens), so the choice fits a model quantized that way.

    The model is left unmodified; apply the result with ``smooth(model, stats, alpha=result.alpha,
    linear_pairs=linear_pairs)`` then ``quantize``, or use ``quantize_model(..., alpha="auto")``.
    """
    start = time.perf_counter()
    scheme = get_scheme(scheme, quantize_bmm_inputs=quantize_bmm_inputs)
    grid = check_options(scheme, grid, reference, num_samples, trial_tokens, error)
    rows = sequences(batches, seq_len)[:num_samples]
    prepare_model(model)
    resolved = resolve(model)
    search = BlockSearch(
        scheme,
        resolved,
        compute_dtype(model_dtype(model)),
        linear_pairs=linear_pairs,
        per_block=per_block,
        grid=grid,
        exhaustive=exhaustive,
        reference=reference,
        trial_tokens=trial_tokens,
        error=error,
        uniform_fallback=uniform_fallback,
        search_weight_scales=search_weight_scales,
    )
    was_training = model.training
    model.eval()
    try:
        if stats is None:
            stats = calibrate(model, rows, batch_size=batch_size, progress=progress)
        check_stats(resolved, search.groups, stats, model)
        if not scheme.inputs.dynamic:
            check_static_coverage(resolved.quantizable, stats)
        device = next(model.parameters()).device
        ids = [b.to(device) for b in make_batches(rows, batch_size)]
        layers = model.get_submodule(resolved.layers_path)
        hidden, calls = capture_block_calls(model, layers, ids)
        bar = tqdm(
            list(zip(resolved.blocks, layers, calls, strict=True)),
            desc="alpha search",
            unit="block",
            disable=not progress,
        )
        for block_name, layer, block_calls in bar:
            hidden, _ = search.step(block_name, layer, stats, hidden, block_calls)
    finally:
        model.train(was_training)
    return search.result(scheme.name, sum(r.numel() for r in rows), time.perf_counter() - start)


def _search_group_wise(
    search: _Search,
    block_name: str,
    layer: nn.Module,
    groups: list[ResolvedGroup],
    block_stats: ActStats,
    hidden: list[torch.Tensor],
    calls: list[BlockCall],
    grid: tuple[float, ...],
    exhaustive: bool,
    uniform_fallback: bool,
):
    watch = {n: m for g in groups for n, m in g.consumers.items()}
    if search.search_weight_scales:  # every linear's inputs, for its weight-scale search
        cut = len(block_name) + 1
        watch |= {n: layer.get_submodule(n[cut:]) for n in search.block_targets(block_name)}
    fp_out, inputs = run_capturing(layer, hidden, calls, watch)
    inputs = {n: _subsample(xs, search.trial_tokens) for n, xs in inputs.items()}
    # block-level comparisons run whole sequences, the first ones that hold trial_tokens tokens
    k = _first_batches(hidden, search.trial_tokens)
    work = copy.deepcopy(layer)
    stats = block_stats.copy()
    picked: dict[str, float | None] = {}
    errs: dict[str, dict[str, float]] = {}
    row_scale: dict[str, torch.Tensor] = {}
    in_scale: dict[str, torch.Tensor] = {}
    for g in (_rebind(g, block_name, work) for g in groups):
        pair = g.is_linear_pair and len(g.consumers) == 1
        refs = run_until(work, hidden[:k], calls[:k], next(iter(g.consumers.values()))) if pair else []
        if refs:

            def error(a: Candidate, g=g, refs=refs) -> float:
                return search.pair_error(g, a, stats, work, block_name, hidden[:k], calls[:k], refs, inputs)

        else:  # a norm group, or an expert that got no token in those sequences
            # consumer outputs in floating point, v/up rows scaled back to the original model's
            refs = {n: [m(x) for x in inputs[n]] for n, m in g.consumers.items()}
            refs = {n: [r * row_scale[n] for r in rs] if n in row_scale else rs for n, rs in refs.items()}

            def error(a: Candidate, g=g, refs=refs) -> float:
                return search.group_error(g, a, stats, inputs, refs, row_scale)

        results = _refine(error, grid, exhaustive)
        best = min(results, key=results.__getitem__)
        picked[g.id] = best
        errs[g.id] = _sorted(results)
        s = None if best is None else group_scales(g, stats, best, search.dt)
        if s is not None:
            apply_group(g, s, stats)
            in_scale |= _consumer_scales(g, s)
            if g.is_linear_pair:
                row_scale[g.producer_name] = _rows(g, s.to(next(g.producer.parameters()).device))
    q_out = _run(search.quantize_block(work, block_name, stats, inputs, in_scale), hidden, calls)
    if uniform_fallback and groups:
        # Each group was tuned alone, which can miss how their errors combine: the best single
        # alpha for the whole block (found on the first sequences) replaces the per-group choice
        # where the block's output error over all searched tokens is smaller with it.
        best, _ = _uniform_search(
            search,
            block_name,
            layer,
            groups,
            block_stats,
            hidden[:k],
            calls[:k],
            fp_out[:k],
            grid,
            exhaustive,
            inputs,
        )
        uniform = dict.fromkeys(picked, best)
        u_block = _quantized_block(search, block_name, layer, groups, block_stats, uniform, inputs)
        u_out = _run(u_block, hidden, calls)
        own, other = output_error(q_out, fp_out, search.error), output_error(u_out, fp_out, search.error)
        errs[block_name] = {"per group": own, _label(best): other}
        if other < own:
            picked, q_out = uniform, u_out
    return q_out, fp_out, picked, errs


def _run(block: nn.Module, hidden: list[torch.Tensor], calls: list[BlockCall]) -> list[torch.Tensor]:
    return [c(block, h) for h, c in zip(hidden, calls, strict=True)]


def _sorted(results: dict[Candidate, float]) -> dict[str, float]:
    return {_label(a): results[a] for a in sorted(results, key=lambda a: -1.0 if a is None else a)}


def _quantized_block(
    search: _Search,
    block_name: str,
    layer: nn.Module,
    groups: list[ResolvedGroup],
    block_stats: ActStats,
    alpha: dict[str, Candidate],
    inputs: dict[str, list[torch.Tensor]] | None = None,
) -> nn.Module:
    """A quantized copy of ``layer`` smoothed with ``alpha`` per group, as smooth + quantize would."""
    work = copy.deepcopy(layer)
    stats = block_stats.copy()
    in_scale: dict[str, torch.Tensor] = {}
    for g in (_rebind(g, block_name, work) for g in groups):
        s = None if alpha[g.id] is None else group_scales(g, stats, alpha[g.id], search.dt)
        if s is not None:
            apply_group(g, s, stats)
            in_scale |= _consumer_scales(g, s)
    return search.quantize_block(work, block_name, stats, inputs, in_scale)


def _consumer_scales(g: ResolvedGroup, s: torch.Tensor) -> dict[str, torch.Tensor]:
    """What smoothing ``g`` by ``s`` divides each consumer's input by."""
    return {
        n: expand_to_consumer(s.to(next(m.parameters()).device), g.channel_index())
        for n, m in g.consumers.items()
    }


def _uniform_search(
    search: _Search,
    block_name: str,
    layer: nn.Module,
    groups: list[ResolvedGroup],
    block_stats: ActStats,
    hidden: list[torch.Tensor],
    calls: list[BlockCall],
    fp_out: list[torch.Tensor],
    grid: tuple[float, ...],
    exhaustive: bool,
    inputs: dict[str, list[torch.Tensor]] | None = None,
) -> tuple[Candidate, dict[Candidate, float]]:
    """One alpha for every group of the block, by the error of the quantized block's output."""

    def error(alpha: Candidate) -> float:
        search.evaluations += 1
        uniform = dict.fromkeys((g.id for g in groups), alpha)
        q = _quantized_block(search, block_name, layer, groups, block_stats, uniform, inputs)
        return output_error(_run(q, hidden, calls), fp_out, search.error)

    results = _refine(error, grid, exhaustive)
    return min(results, key=results.__getitem__), results


def _search_block_wise(
    search: _Search,
    block_name: str,
    layer: nn.Module,
    groups: list[ResolvedGroup],
    block_stats: ActStats,
    hidden: list[torch.Tensor],
    calls: list[BlockCall],
    grid: tuple[float, ...],
    exhaustive: bool,
):
    fp_out = _run(layer, hidden, calls)
    best, results = _uniform_search(
        search, block_name, layer, groups, block_stats, hidden, calls, fp_out, grid, exhaustive
    )
    picked = dict.fromkeys((g.id for g in groups), best)
    q_out = _run(_quantized_block(search, block_name, layer, groups, block_stats, picked), hidden, calls)
    return q_out, fp_out, picked, {block_name: _sorted(results)}
