"""Run a model over calibration data and record activation statistics.

Forward hooks on every linear keep fp32 running maxima, O(channels) memory per linear; no
activation is ever stored. The statistics cover the inputs of every linear in the model (lm_head
included), and the outputs of the attention q/k/v projections named by the family table.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from smoothquant.calibration.batches import Batches, make_batches, sequences
from smoothquant.calibration.stats import HIST_BINS, ActStats, hist_bin
from smoothquant.errors import CalibrationError, UnsupportedModelError
from smoothquant.families import prepare_model, resolve
from smoothquant.nn_utils import is_linear_like
from smoothquant.state import smoothing_id


class _Observer:
    """Running per-channel absmax of one module's input (and optionally output)."""

    def __init__(self, track_output: bool, token_hist: bool) -> None:
        self.inp: torch.Tensor | None = None
        self.out: torch.Tensor | None = None
        self.hist: torch.Tensor | None = None
        self.track_output = track_output
        self.token_hist = token_hist

    @staticmethod
    def _merge(old: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
        return new if old is None else torch.maximum(old, new)

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        x = args[0].detach()
        a = x.reshape(-1, x.shape[-1]).abs()
        if a.shape[0] == 0:  # an expert no token was routed to
            return
        self.inp = self._merge(self.inp, a.amax(0).float())
        if self.token_hist:
            counts = torch.bincount(hist_bin(a.amax(1)), minlength=HIST_BINS).float()
            self.hist = counts if self.hist is None else self.hist + counts
        if self.track_output:
            y = output.detach()
            self.out = self._merge(self.out, y.reshape(-1, y.shape[-1]).abs().amax(0).float())


def vocab_size(model: nn.Module) -> int | None:
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    return getattr(emb, "num_embeddings", None)


def calibration_rows(
    batches: Batches, seq_len: int | None, num_samples: int | None, vocab: int | None
) -> list[torch.Tensor]:
    """The sequences calibration runs on (the first ``num_samples``), checked against the vocabulary."""
    rows = sequences(batches, seq_len)
    if num_samples is not None:
        if num_samples < 1:
            raise CalibrationError(f"num_samples must be >= 1, got {num_samples}")
        rows = rows[:num_samples]
    top = max(int(r.max()) for r in rows)
    low = min(int(r.min()) for r in rows)
    if low < 0 or (vocab is not None and top >= vocab):
        raise CalibrationError(
            f"calibration token ids span [{low}, {top}] but the model's vocabulary has {vocab} entries; "
            "was the data tokenized with this model's tokenizer?"
        )
    return rows


@contextlib.contextmanager
def hooked(root: nn.Module, observers: Mapping[str, Callable], prefix: str = "") -> Iterator[Mapping]:
    """Each observer as a forward hook of its module under ``root`` while the block runs (names
    are full model names; ``prefix``: the name of ``root`` itself)."""
    cut = len(prefix) + 1 if prefix else 0
    handles = [root.get_submodule(name[cut:]).register_forward_hook(obs) for name, obs in observers.items()]
    try:
        yield observers
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def observed_pass(
    model: nn.Module,
    batches: Batches,
    observers: Mapping[str, Callable],
    *,
    desc: str,
    seq_len: int | None = None,
    batch_size: int = 1,
    num_samples: int | None = None,
    progress: bool = True,
) -> None:
    """One forward pass over the calibration data (as :func:`calibrate` selects it) with the
    observers hooked on their modules; for the passes after calibration (Hessians, input ranges)."""
    rows = calibration_rows(batches, seq_len, num_samples, vocab_size(model))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with hooked(model, observers):
            todo = make_batches(rows, batch_size)
            for ids in tqdm(todo, desc=desc, unit="batch", disable=not progress, leave=False):
                model(input_ids=ids.to(device), use_cache=False)
    finally:
        model.train(was_training)


def observing(root: nn.Module, bmm_inputs: set[str], *, prefix: str = "", token_histograms: bool = False):
    """Observers on every linear under ``root`` (named ``prefix.<path>``) while the block runs.

    Works on a whole model or on one decoder block, so layer-by-layer calibration
    (:mod:`smoothquant.layerwise`) measures exactly what :func:`calibrate` measures.
    """
    observers = {
        name: _Observer(track_output=name in bmm_inputs, token_hist=token_histograms)
        for name, module in root.named_modules(prefix=prefix)
        if is_linear_like(module)
    }
    return hooked(root, observers, prefix)


def collect(observers: dict[str, _Observer], meta: dict) -> ActStats:
    """The statistics the observers gathered; NaN/inf is an error that says what to do."""
    stats = ActStats(meta=meta)
    for name, obs in observers.items():
        if obs.inp is None:
            continue  # never called (an expert with no routed token, an unused head)
        stats.inputs[name] = obs.inp.cpu()
        if obs.out is not None:
            stats.outputs[name] = obs.out.cpu()
        if obs.hist is not None:
            stats.token_hist[name] = obs.hist.cpu()
    bad = [n for n, t in stats.inputs.items() if not torch.isfinite(t).all()]
    if bad:
        raise CalibrationError(
            f"activations overflowed (NaN/inf) at {', '.join(bad[:3])}: run calibration in float32 "
            "or bfloat16 rather than float16"
        )
    return stats


@torch.no_grad()
def calibrate(
    model: nn.Module,
    batches: Batches,
    *,
    seq_len: int | None = None,
    batch_size: int = 1,
    num_samples: int | None = None,
    token_histograms: bool = False,
    progress: bool = True,
    forward: Callable[[nn.Module, torch.Tensor], object] | None = None,
) -> ActStats:
    """Measure per-channel absmax of every linear's input over ``batches``.

    ``batches``: token-id tensors (1-D streams are cut into ``seq_len`` windows), tokenizer outputs
    with ``attention_mask`` (padding is removed before the forward pass), or lists of these.
    ``num_samples`` caps the number of sequences used; ``batch_size`` sequences of equal length run
    together. ``token_histograms`` also records per-token absmax histograms (needed by clipping
    schemes such as ``outlier-suppression``).

    The model is put in eval mode and fused MoE experts are unfolded into per-expert linears
    (:func:`prepare_model`, in place, function unchanged); nothing else about it is modified.
    """
    rows = calibration_rows(batches, seq_len, num_samples, vocab_size(model))
    prepare_model(model)
    try:
        bmm_inputs = set(resolve(model).bmm_inputs)
    except UnsupportedModelError:
        bmm_inputs = set()  # unmapped families still get input statistics
    was_training = model.training
    model.eval()
    run = forward or (lambda m, ids: m(input_ids=ids, use_cache=False))
    num_tokens = 0
    try:
        with observing(model, bmm_inputs, token_histograms=token_histograms) as observers:
            if not observers:
                raise CalibrationError("the model has no nn.Linear/Conv1D modules to calibrate")
            device = next(model.parameters()).device
            batches_ = make_batches(rows, batch_size)
            bar = tqdm(batches_, desc="calibrating", unit="batch", disable=not progress, leave=False)
            for ids in bar:
                run(model, ids.to(device))
                num_tokens += ids.numel()
                bar.set_postfix(tokens=num_tokens)
    finally:
        model.train(was_training)
    meta = {
        "model_type": getattr(getattr(model, "config", None), "model_type", None),
        "num_tokens": num_tokens,
        "num_sequences": len(rows),
        "smoothing_id": smoothing_id(model),
    }
    return collect(observers, meta)
