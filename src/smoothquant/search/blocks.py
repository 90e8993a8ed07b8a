"""Run a model one decoder block at a time on cached inputs.

The model's own forward computes what each block is called with (rotary position embeddings,
attention masks, per-layer sliding-window masks, ALiBi...). Rather than reimplementing that per
family, one forward pass records, with a pre-hook on every block, the arguments each block
receives; hidden states are kept for the first block only. Blocks are then called directly with
those arguments and whatever hidden states the search feeds them.

With ``skip_blocks`` the blocks do not run at all (their weights may still be on the meta device,
as in :mod:`smoothquant.layerwise`): each is replaced, for that one pass, by a stand-in that
records its call and hands its hidden states on unchanged. None of the recorded arguments depends
on the hidden states, so they are the same as with the real blocks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


class _StopForward(Exception):
    """Raised by the last block's pre-hook: nothing after it is needed."""


@dataclass
class BlockCall:
    """The arguments of one block call, without the hidden states (shared tensors by reference)."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    hidden_as_kwarg: bool

    def __call__(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        if self.hidden_as_kwarg:
            out = block(*self.args, hidden_states=hidden, **self.kwargs)
        else:
            out = block(hidden, *self.args, **self.kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out


class _Passed(tuple):
    """A stand-in's output: ``(hidden,)``, so that loops reading ``outputs[0]`` (BLOOM, Falcon) get
    the hidden states, and loops that pass the output on whole (Llama...) hand it to the next
    stand-in, which unwraps it. A loop computing with it between blocks fails loudly."""


class _StandIn(nn.Module):
    """Takes a block's place for one pass: records the call, computes nothing. Attributes the
    model's loop reads from its blocks (Gemma's ``attention_type``) come from the real block."""

    def __init__(self, block: nn.Module, record) -> None:
        super().__init__()
        self.block = block
        self._record = record

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["block"], name)

    def forward(self, *args: Any, **kwargs: Any) -> _Passed:
        self._record(self, args, kwargs)
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        return hidden if isinstance(hidden, _Passed) else _Passed((hidden,))


def capture_block_calls(
    model: nn.Module,
    layers: nn.ModuleList,
    batches: Iterable[torch.Tensor],
    *,
    skip_blocks: bool = False,
) -> tuple[list[torch.Tensor], list[list[BlockCall]]]:
    """Hidden states entering the first block (one tensor per batch) and, for every block, its
    call arguments per batch. The forward stops at the last block, skipping it and the LM head;
    ``skip_blocks`` skips every block (see the module docstring)."""
    first: list[torch.Tensor] = []
    calls: list[list[BlockCall]] = [[] for _ in layers]
    last = len(layers) - 1

    def hook(index: int):
        def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
            as_kwarg = "hidden_states" in kwargs
            kwargs = dict(kwargs)
            hidden = kwargs.pop("hidden_states") if as_kwarg else args[0]
            calls[index].append(BlockCall(args if as_kwarg else args[1:], kwargs, as_kwarg))
            if index == 0:
                first.append(hidden.detach())
            if index == last:
                raise _StopForward

        return record

    originals = list(layers)
    handles = []
    if skip_blocks:
        for i, block in enumerate(originals):
            layers[i] = _StandIn(block, hook(i))
    else:
        handles = [
            layer.register_forward_pre_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)
        ]
    try:
        for ids in batches:
            with contextlib.suppress(_StopForward):
                model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
        for i, block in enumerate(originals):
            layers[i] = block
    return first, calls


def run_capturing(
    block: nn.Module,
    hidden: list[torch.Tensor],
    calls: list[BlockCall],
    watch: dict[str, nn.Module],
) -> tuple[list[torch.Tensor], dict[str, list[torch.Tensor]]]:
    """Run ``block`` on every batch; returns its outputs and the inputs each watched module saw.

    Inputs are kept as the tensors the block produced (no copy): q/k/v share one norm output.
    """
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in watch}

    def hook(name: str):
        def record(module: nn.Module, args: tuple, output: Any) -> None:
            x = args[0].detach()
            if x.numel():
                seen[name].append(x)

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in watch.items()]
    try:
        outputs = [call(block, h) for h, call in zip(hidden, calls, strict=True)]
    finally:
        for h in handles:
            h.remove()
    return outputs, seen


def run_until(
    block: nn.Module,
    hidden: list[torch.Tensor],
    calls: list[BlockCall],
    watch: nn.Module,
) -> list[torch.Tensor]:
    """The outputs of ``watch`` (a module inside ``block``) per batch, stopping each forward there:
    what comes after it is not needed. Batches in which it is never called (an expert that got
    no token) give nothing."""
    outputs: list[torch.Tensor] = []

    def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        outputs.append(output.detach())
        raise _StopForward

    handle = watch.register_forward_hook(record)
    try:
        for h, call in zip(hidden, calls, strict=True):
            with contextlib.suppress(_StopForward):
                call(block, h)
    finally:
        handle.remove()
    return outputs
