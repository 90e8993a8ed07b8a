"""Error-compensating weight rounding (GPTQ, Frantar et al. 2022) for the INT8 weight formats.

Round-to-nearest treats every weight alone. With per-tensor weight scales (O1/O2/O3) the few
large weights of a matrix (the ones that write the "massive activation" channels, up to ~50x the
weights' standard deviation in smollm2's ``down_proj``) set a coarse step for all the others, and
their rounding errors add up in the layer's output. GPTQ rounds one input column at a time and
moves each column's rounding error onto the columns not yet rounded, weighted by the inverse
Hessian ``H = X^T X`` of the layer's calibration inputs, so the *output* error on that data is
what gets minimised. The format does not change: the same scales (from the weights' absmax, so
no weight is clipped, unless :func:`search_scale` is asked to shrink them first, as
``ranges="search"`` does), the same int8 integers in [-127, 127]; only which integer each weight
rounds to. Any runtime or export that reads our checkpoints runs the result unchanged.

The Hessians come from one extra pass over the calibration data through the *smoothed* model
(:func:`smoothquant.calibration.collect_hessians`); they cost ``in_features^2`` floats per
linear, so in-memory use on 7B-class models needs room for them (about 0.7 GB per Llama-2-7B
block).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch

from smoothquant.errors import QuantizationError
from smoothquant.quantization.quantizer import round_clamp
from smoothquant.quantization.scheme import WeightQuant

ROUNDINGS = ("nearest", "gptq")
BLOCK = 128  # columns rounded together before their error is pushed onto the rest (lazy update)
DAMP = 0.01  # fraction of the mean diagonal added to H: keeps its inverse well conditioned


def column_scales(scale: torch.Tensor, spec: WeightQuant, out_f: int, in_f: int) -> torch.Tensor:
    """``[out, in]``: the scale each weight is rounded with."""
    if spec.granularity == "group":
        return scale.float().repeat_interleave(spec.group_size, dim=1)[:, :in_f]
    return scale.float().reshape(-1, 1).expand(out_f, in_f)


@torch.no_grad()
def gptq_round(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    scales: torch.Tensor,
    *,
    act_order: bool = True,
    block: int = BLOCK,
    damp: float = DAMP,
) -> torch.Tensor:
    """int8 ``[out, in]`` integers for ``weight`` rounded with ``scales`` (``[out, in]``, see
    :func:`column_scales`) by GPTQ against ``hessian`` (``[in, in]``, ``X^T X``).

    ``act_order``: columns go in order of decreasing ``H`` diagonal (the inputs carrying the most
    energy are rounded first, while the most columns remain to absorb their error); group-wise
    scales need the natural order, which keeps each group's columns together.
    """
    in_f = weight.shape[1]
    if hessian.shape != (in_f, in_f) or scales.shape != weight.shape:
        raise QuantizationError(
            f"GPTQ: hessian {tuple(hessian.shape)} / scales {tuple(scales.shape)} do not fit weight "
            f"{tuple(weight.shape)}"
        )
    dev = weight.device
    w = weight.detach().float().clone()
    h = hessian.to(dev, torch.float32).clone()
    s = scales.to(dev, torch.float32)
    dead = torch.diagonal(h) == 0  # inputs never non-zero: their weights cannot matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    order = torch.argsort(torch.diagonal(h), descending=True) if act_order else None
    if order is not None:
        w, s, h = w[:, order], s[:, order], h[order][:, order]
    s = s.contiguous()
    h.diagonal().add_(damp * float(torch.diagonal(h).mean()))
    # upper Cholesky factor of H^-1: row i says how column i's error spreads to later columns
    try:
        hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except RuntimeError as exc:  # pragma: no cover - damping makes this rare
        raise QuantizationError(f"GPTQ: calibration Hessian is not positive definite ({exc})") from None
    q = torch.empty_like(w)
    with _one_thread(dev):
        _round_columns(w, s, hinv, q, block)
    if order is not None:
        q = q[:, torch.argsort(order)]
    return q.to(torch.int8)


@contextlib.contextmanager
def _one_thread(device: torch.device) -> Iterator[None]:
    """The column loop is thousands of tiny ops: on CPU, worker threads only add synchronisation
    (much slower with two threads on a busy two-core machine than with one: docs/cpu-timings.md)."""
    n = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _round_columns(w: torch.Tensor, s: torch.Tensor, hinv: torch.Tensor, q: torch.Tensor, block: int) -> None:
    """GPTQ's loop, in place: round column by column, push each error onto the later columns
    (within a block at once, onto the rest once per block)."""
    in_f = w.shape[1]
    for i1 in range(0, in_f, block):
        i2 = min(i1 + block, in_f)
        w1, hb = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        err = torch.empty_like(w1)
        for i in range(i2 - i1):
            col, sc = w1[:, i], s[:, i1 + i]
            qi = round_clamp(col, sc)
            q[:, i1 + i] = qi
            e = (col - qi * sc) / hb[i, i]
            w1[:, i:] -= e[:, None] * hb[i, i:][None, :]
            err[:, i] = e
        w[:, i2:] -= err @ hinv[i1:i2, i2:]


def shared_inputs(hessians: Mapping[str, torch.Tensor]) -> list[list[str]]:
    """Names grouped by identical Hessians (q/k/v, gate/up read one input): each group is
    rounded as one stacked matrix, one column loop instead of several."""
    groups: dict[tuple, list[list[str]]] = {}
    for name, h in hessians.items():
        candidates = groups.setdefault((tuple(h.shape), float(h.diagonal().sum())), [])
        for g in candidates:
            if torch.equal(hessians[g[0]], h):
                g.append(name)
                break
        else:
            candidates.append([name])
    return [g for gs in groups.values() for g in gs]


SCALE_GRID: tuple[float, ...] = tuple(round(1.0 - 0.05 * i, 2) for i in range(11))  # 1.0 .. 0.5


@torch.no_grad()
def search_scale(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    scale: torch.Tensor,
    spec: WeightQuant,
    grid: tuple[float, ...] = SCALE_GRID,
) -> torch.Tensor:
    """``scale`` (the absmax scale, as :func:`~smoothquant.quantization.quantizer.weight_scale`
    returns it) shrunk by the factor of ``grid`` whose round-to-nearest weights give the smallest
    output error on the calibration inputs, ``tr(E H E^T)`` with ``E = W - Q(W)``: one factor per
    tensor, per output channel for per-channel scales. Group-wise scales are returned unchanged.

    With per-tensor scales one large weight (those writing a massive-activation channel, or a
    smoothed outlier row) sets a coarse step for every other weight; clipping it a little costs
    less than that step. The choice is made with round-to-nearest, not GPTQ: GPTQ's own error on
    the calibration tokens keeps falling as the scale shrinks (it moves the clipping error onto
    other columns) while the error on new text grows (smollm2 O3: +52.6% against +29.1%).
    """
    if spec.granularity == "group":
        return scale
    w = weight.detach().float()
    h = hessian.to(w.device, torch.float32)
    base = scale.to(w.device, torch.float32).reshape(-1, 1)
    errs = []
    for c in grid:
        s = base * c
        e = w - round_clamp(w, s) * s
        per_row = ((e @ h) * e).sum(1)
        errs.append(per_row.sum().reshape(1) if spec.granularity == "tensor" else per_row)
    best = torch.stack(errs).argmin(0)  # [1] or [out]
    factor = torch.tensor(grid, device=w.device, dtype=torch.float32)[best]
    return (base.reshape(-1) * factor).reshape(scale.shape).to(scale.dtype)


def round_weights(
    weights: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    spec: WeightQuant,
    hessians: Mapping[str, torch.Tensor],
    *,
    search_scales: bool = False,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``name -> (GPTQ integers, scale)`` for every ``name -> (weight [out, in], scale)`` that has
    a Hessian; ``search_scales``: each scale first shrunk by :func:`search_scale`, else kept."""
    known = {n: h for n, h in hessians.items() if n in weights}
    for name, h in known.items():
        in_f = weights[name][0].shape[1]
        if h.shape != (in_f, in_f):
            raise QuantizationError(
                f"{name}: its hessian is {tuple(h.shape)} but the linear has {in_f} inputs; it "
                "belongs to another model"
            )
    out = {}
    for names in shared_inputs(known):
        h = known[names[0]]
        ws = [weights[n][0].detach().float() for n in names]
        raw = [weights[n][1] for n in names]
        if search_scales:
            raw = [search_scale(w, h, sc, spec) for w, sc in zip(ws, raw, strict=True)]
        scales = [column_scales(sc, spec, *w.shape) for sc, w in zip(raw, ws, strict=True)]
        q = gptq_round(torch.cat(ws), h, torch.cat(scales), act_order=spec.granularity != "group")
        for n, part, sc in zip(names, q.split([w.shape[0] for w in ws]), raw, strict=True):
            out[n] = (part, sc)
    return out


def check_rounding(rounding: str, outlier_threshold: float | None = None) -> str:
    if rounding not in ROUNDINGS:
        raise QuantizationError(f"weight rounding must be one of {', '.join(ROUNDINGS)}, not {rounding!r}")
    if rounding == "gptq" and outlier_threshold is not None:
        raise QuantizationError(
            "GPTQ rounding assumes every input column is quantized; LLM.int8() keeps outlier columns "
            "in floating point at run time. Use rounding='nearest' with this scheme"
        )
    return rounding
