"""Run a model over calibration data and record activation statistics.

Forward hooks on every linear keep fp32 running maxima, O(channels) memory per linear; no
activation is ever stored. The statistics cover the inputs of every linear in the model (lm_head
included), and the outputs of the attention q/k/v projections named by the family table.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from tqdm.auto import tqdm

from smoothquant.calibration.batches import Batches, make_batches, sequences
from smoothquant.calibration.stats import HIST_BINS, ActStats, hist_bin
from smoothquant.errors import CalibrationError, UnsupportedModelError
from smoothquant.families import prepare_model, resolve
from smoothquant.nn_utils import is_linear_like, model_dtype, nonfinite_parameters
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


def check_positions(model: nn.Module, length: int) -> None:
    """Refuse sequences longer than the model's positions: beyond them it computes garbage (or
    fails deep inside attention) and the statistics would describe nothing real."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if isinstance(limit, int) and length > limit:
        raise CalibrationError(
            f"calibration sequences of {length} tokens are longer than the model's {limit} positions "
            f"(max_position_embeddings): use --seq-len {limit} or less (seq_len={limit})"
        )


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
    head = _head_name(model)
    keep = {"logits_to_keep": 1} if head is not None and head not in observers else {}
    try:
        with hooked(model, observers):
            todo = make_batches(rows, batch_size)
            for ids in tqdm(todo, desc=desc, unit="batch", disable=not progress, leave=False):
                model(input_ids=ids.to(device), use_cache=False, **keep)
    finally:
        model.train(was_training)


def _head_name(model: nn.Module) -> str | None:
    """The output head's module name if ``model.forward`` can skip computing its logits
    (``logits_to_keep``): they are a large share of a small model's FLOPs (smollm2-135m's
    49k-token head: a fifth) and calibration never looks at them."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None or "logits_to_keep" not in inspect.signature(model.forward).parameters:
        return None
    return next((n for n, m in model.named_modules() if m is head), None)


class _HeadFromBase:
    """One calibration batch at a time, feeding the head's observer from the base model's output
    instead of the head's own call, so the logits need not be computed.

    The head's input is the base model's last hidden state in every causal LM we know, but that
    is checked, not assumed: the first batch runs in full and the switch happens only if the
    head saw exactly (``torch.equal``) the base model's output. The remaining batches then run
    with ``logits_to_keep=1`` and the head's statistics are those of the full pass, bit for bit.
    """

    def __init__(self, model: nn.Module, head: str, observer: Callable, head_hook: RemovableHandle) -> None:
        self.head, self.base = model.get_submodule(head), getattr(model, "base_model", None)
        self.observer, self.head_hook = observer, head_hook
        self.feed_hook: RemovableHandle | None = None
        self.checked = False
        self.seen: dict[str, torch.Tensor] = {}

    def __call__(self, model: nn.Module, ids: torch.Tensor) -> None:
        if self.feed_hook is not None:
            model(input_ids=ids, use_cache=False, logits_to_keep=1)
            return
        if self.checked or self.base is None or self.base is model:
            model(input_ids=ids, use_cache=False)
            return
        self.checked = True
        probes = [
            self.head.register_forward_hook(lambda m, args, out: self.seen.update(head=args[0])),
            self.base.register_forward_hook(lambda m, args, out: self.seen.update(base=out[0])),
        ]
        try:
            model(input_ids=ids, use_cache=False)
        finally:
            for probe in probes:
                probe.remove()
        head_in, base_out = self.seen.pop("head", None), self.seen.pop("base", None)
        if (
            isinstance(head_in, torch.Tensor)
            and isinstance(base_out, torch.Tensor)
            and head_in.shape == base_out.shape
            and torch.equal(head_in, base_out)
        ):
            self.head_hook.remove()
            self.feed_hook = self.base.register_forward_hook(self._feed)

    def _feed(self, module: nn.Module, args: tuple, output: object) -> None:
        self.observer(self.head, (output[0],), None)

    def close(self) -> None:
        self.head_hook.remove()
        if self.feed_hook is not None:
            self.feed_hook.remove()


def _full_forward(model: nn.Module, ids: torch.Tensor) -> None:
    model(input_ids=ids, use_cache=False)


def _observers(root: nn.Module, bmm_inputs: set[str], prefix: str, token_histograms: bool) -> dict:
    return {
        name: _Observer(track_output=name in bmm_inputs, token_hist=token_histograms)
        for name, module in root.named_modules(prefix=prefix)
        if is_linear_like(module)
    }


def observing(root: nn.Module, bmm_inputs: set[str], *, prefix: str = "", token_histograms: bool = False):
    """Observers on every linear under ``root`` (named ``prefix.<path>``) while the block runs.

    Works on a whole model or on one decoder block, so layer-by-layer calibration
    (:mod:`smoothquant.layerwise`) measures exactly what :func:`calibrate` measures.
    """
    return hooked(root, _observers(root, bmm_inputs, prefix, token_histograms), prefix)


def collect(observers: dict[str, _Observer], meta: dict, dtype: torch.dtype | None = None) -> ActStats:
    """The statistics the observers gathered; NaN/inf is an error that says what to do (which
    depends on the ``dtype`` the model ran in: only float16 overflows on ordinary text)."""
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
    if bad and dtype in (None, torch.float16):
        raise CalibrationError(
            f"activations overflowed (NaN/inf) at {', '.join(bad[:3])}: run calibration in float32 "
            "or bfloat16 rather than float16"
        )
    if bad:
        raise CalibrationError(
            f"activations became NaN/inf at {', '.join(bad[:3])} in a {str(dtype).removeprefix('torch.')} "
            "model with finite weights: check the model's numerics (a custom forward, extreme weights)"
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
    check_positions(model, max(r.numel() for r in rows))
    bad = nonfinite_parameters(model)
    if bad:
        raise CalibrationError(
            f"the model's weights hold NaN/inf ({', '.join(bad[:3])}): the checkpoint is damaged, "
            "calibration cannot fix it; re-download or re-convert the model"
        )
    prepare_model(model)
    try:
        bmm_inputs = set(resolve(model).bmm_inputs)
    except UnsupportedModelError:
        bmm_inputs = set()  # unmapped families still get input statistics
    was_training = model.training
    model.eval()
    num_tokens = 0
    observers = _observers(model, bmm_inputs, "", token_histograms)
    if not observers:
        raise CalibrationError("the model has no nn.Linear/Conv1D modules to calibrate")
    handles = {n: model.get_submodule(n).register_forward_hook(o) for n, o in observers.items()}
    head = _head_name(model) if forward is None else None
    run = forward or _full_forward
    if head in observers:
        run = _HeadFromBase(model, head, observers[head], handles.pop(head))
    try:
        device = next(model.parameters()).device
        batches_ = make_batches(rows, batch_size)
        bar = tqdm(batches_, desc="calibrating", unit="batch", disable=not progress, leave=False)
        for ids in bar:
            run(model, ids.to(device))
            num_tokens += ids.numel()
            bar.set_postfix(tokens=num_tokens)
    finally:
        for h in handles.values():
            h.remove()
        if isinstance(run, _HeadFromBase):
            run.close()
        model.train(was_training)
    meta = {
        "model_type": getattr(getattr(model, "config", None), "model_type", None),
        "num_tokens": num_tokens,
        "num_sequences": len(rows),
        "smoothing_id": smoothing_id(model),
    }
    return collect(observers, meta, model_dtype(model))
