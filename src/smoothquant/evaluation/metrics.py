"""Perplexity, and fidelity to the floating-point model, on fixed token windows.

Protocol (the reference one): non-overlapping windows of one concatenated split; every position
but the last predicts the next token of its window. Perplexity is ``exp`` of the mean negative
log-likelihood over all those predictions. Fidelity compares, at the same positions, the next-
token distribution of a model ``Q`` with that of the floating-point model ``P``: the mean
``KL(P || Q)`` (nats) and the fraction of positions whose most likely token agrees.

Several models are compared against one floating-point pass. Storing its log-probabilities is
out of the question (a 2048-token window of a 49k vocabulary is 400 MB), so the pass keeps the
hidden states entering the output head (``hidden_size`` floats per token, ~85x smaller) and
recomputes the reference logits from them with the model's own head, window by window. That is
exact: the first window is checked against the logits the model returned.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from smoothquant.errors import SmoothQuantError

# positions whose logits are turned into probabilities at once (bounds memory to ~chunk x vocab)
CHUNK = 512
# windows run together up to this many tokens: on CPU a 2048-row GEMM is faster per token than a
# 512-row one (docs/cpu-timings.md); but the batch's logits (tokens x vocab floats) stay under
# BATCH_LOGITS floats (512 MB), so large vocabularies (Gemma's 262k) run one window at a time
BATCH_TOKENS = 2048
BATCH_LOGITS = 2**27


class EvaluationError(SmoothQuantError):
    """The model or windows cannot be evaluated as asked."""


@dataclass
class EvalResult:
    """One row of a comparison. ``kl`` and ``top1`` are against the floating-point reference."""

    name: str
    perplexity: float
    kl: float
    top1: float
    nll: float
    tokens: int
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "info"} | self.info


@dataclass
class Reference:
    """The floating-point pass: what every other model is compared with."""

    windows: torch.Tensor  # [N, L] token ids
    hidden: torch.Tensor  # [N, L-1, H] fp32 inputs of the output head at predicting positions
    nll: torch.Tensor  # [N, L-1] fp32 per-token negative log-likelihood of the reference
    head: nn.Module  # the reference's output head (its own copy: later edits of the model don't reach it)
    softcap: float | None
    seconds: float

    def logits(self, window: int, rows: slice) -> torch.Tensor:
        return _apply_head(self.head, self.softcap, self.hidden[window, rows])

    def first(self, n: int) -> Reference:
        """The reference restricted to its first ``n`` windows (no new forward pass)."""
        return Reference(
            self.windows[:n],
            self.hidden[:n],
            self.nll[:n],
            self.head,
            self.softcap,
            self.seconds * n / len(self.windows),
        )

    def result(self, name: str = "FP") -> EvalResult:
        nll = float(self.nll.double().mean())
        return EvalResult(name, math.exp(nll), 0.0, 1.0, nll, self.nll.numel(), self.seconds)


def _softcap(model: nn.Module) -> float | None:
    """Gemma 2 caps logits with ``tanh`` after the head; the recomputation must too."""
    return getattr(getattr(model, "config", None), "final_logit_softcapping", None) or None


def _apply_head(head: nn.Module, softcap: float | None, hidden: torch.Tensor) -> torch.Tensor:
    w = next(head.parameters())  # hidden states are kept on the CPU; the head may be on a GPU
    logits = head(hidden.to(device=w.device, dtype=w.dtype)).float()
    return logits if softcap is None else torch.tanh(logits / softcap) * softcap


def _check_windows(model: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    if windows.dim() != 2 or windows.shape[1] < 2 or windows.dtype != torch.long:
        raise EvaluationError(
            f"windows must be a [N, L >= 2] LongTensor of token ids, got {tuple(windows.shape)}"
        )
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and int(windows.max()) >= vocab:
        raise EvaluationError(f"token id {int(windows.max())} is outside the model's vocabulary ({vocab})")
    return windows


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """``[B, L-1, V]`` fp32 next-token logits of a ``[B, L]`` batch of windows."""
    device = next(model.parameters()).device
    return model(input_ids=ids.to(device), use_cache=False).logits[:, :-1].float()


def _batches(model: nn.Module, windows: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """``(index of the first window, windows)`` batches of about :data:`BATCH_TOKENS` tokens."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", None) or 1
    size = max(1, min(BATCH_TOKENS, BATCH_LOGITS // vocab) // windows.shape[1])
    return [(i, windows[i : i + size]) for i in range(0, windows.shape[0], size)]


@torch.no_grad()
def reference_pass(model: nn.Module, windows: torch.Tensor, *, progress: bool = True) -> Reference:
    """Run the floating-point model once over ``windows`` and keep what comparisons need."""
    windows = _check_windows(model, windows)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise EvaluationError("the model has no output embedding (lm_head): cannot compare distributions")
    captured: list[torch.Tensor] = []
    handle = head.register_forward_hook(
        lambda m, inp, out: captured.append(inp[0][:, :-1].detach().float().cpu())
    )
    model.eval()
    softcap = _softcap(model)
    head_copy = copy.deepcopy(head)
    hidden, nll = [], []
    start = time.perf_counter()
    try:
        for first, ids in tqdm(
            _batches(model, windows), desc="FP reference", unit="batch", disable=not progress, leave=False
        ):
            captured.clear()
            logits = _logits(model, ids)
            if len(captured) != 1:
                raise EvaluationError(
                    "the output head ran more than once per forward pass; cannot capture its input"
                )
            if first == 0:
                again = _apply_head(head_copy, softcap, captured[0].to(logits.device))
                if not torch.allclose(again, logits, rtol=1e-4, atol=1e-4 * float(logits.abs().max())):
                    raise EvaluationError(
                        "the logits cannot be recomputed from the output head's input for this model "
                        "(a post-processing step the evaluator does not know)"
                    )
            hidden.append(captured[0])
            targets = ids[:, 1:].to(logits.device)
            nll.append(F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").cpu())
    finally:
        handle.remove()
    return Reference(
        windows, torch.cat(hidden), torch.cat(nll), head_copy, softcap, time.perf_counter() - start
    )


@torch.no_grad()
def compare(model: nn.Module, reference: Reference, name: str, *, progress: bool = True) -> EvalResult:
    """Perplexity of ``model`` on the reference's windows, and its KL / top-1 agreement with it."""
    model.eval()
    nll_sum = kl_sum = 0.0
    agree = 0
    start = time.perf_counter()
    for first, ids in tqdm(
        _batches(model, reference.windows), desc=name, unit="batch", disable=not progress, leave=False
    ):
        for b, logits in enumerate(_logits(model, ids)):
            targets = ids[b, 1:].to(logits.device)
            for lo in range(0, logits.shape[0], CHUNK):
                rows = slice(lo, lo + CHUNK)
                logq = F.log_softmax(logits[rows], dim=-1)
                logp = F.log_softmax(reference.logits(first + b, rows).to(logq.device), dim=-1)
                nll_sum -= float(logq.gather(1, targets[rows, None]).sum())
                kl_sum += float((logp.exp() * (logp - logq)).sum())
                agree += int((logp.argmax(-1) == logq.argmax(-1)).sum())
    n = reference.nll.numel()
    nll = nll_sum / n
    return EvalResult(name, math.exp(nll), kl_sum / n, agree / n, nll, n, time.perf_counter() - start)


@torch.no_grad()
def perplexity(model: nn.Module, windows: torch.Tensor, *, progress: bool = True) -> float:
    """Perplexity alone (no reference)."""
    windows = _check_windows(model, windows)
    model.eval()
    total = 0.0
    for _, ids in tqdm(
        _batches(model, windows), desc="perplexity", unit="batch", disable=not progress, leave=False
    ):
        logits = _logits(model, ids)
        total += float(F.cross_entropy(logits.transpose(1, 2), ids[:, 1:].to(logits.device), reduction="sum"))
    return math.exp(total / (windows.shape[0] * (windows.shape[1] - 1)))
