"""Sibling linears in one GEMM: q/k/v after one folded norm (gated MLPs' gate/up have their own
module, :mod:`smoothquant.runtime.mlp`; other siblings of one norm go through here too).

A folded norm (:class:`~smoothquant.runtime.norm.Int8Norm`) writes one packed INT8 tensor that
several linears read. Run separately, each is its own GEMM launch; at decode (one row per
sequence) a GEMM launch has a fixed cost (launch, pipeline fill, tail) comparable to the weight
reads of a small projection, so three launches where one would do are a visible share of the
attention block's GEMM time (docs/kernels-notes.md, v7). :class:`Int8SiblingGroup` holds the members' weights concatenated along the output
dimension (stored once, the members keep no copy) and computes every member's output in one
launch the first time one of them sees a given input; the others then return their slice.

The transformers modules still call ``q_proj(x)``, ``k_proj(x)``, ``v_proj(x)`` one after the
other (nothing of theirs is patched): each member is an :class:`Int8LinearSlice` that asks its
group. The group recognises the shared input by identity, so a member called with a different
tensor (a model that feeds siblings different inputs) gets a correct, if unfused, result. Under
a CUDA graph the capture records the single GEMM; replays run it as captured.
"""

from __future__ import annotations

import torch
from torch import nn

from smoothquant.runtime import ops
from smoothquant.runtime.linear import Int8Linear, Int8Weights

# Above this many rows (prefill of long prompts) the GEMMs are compute-bound and the launches
# few, and one GEMM over the concatenated weights measured slower than separate ones
# (docs/kernels-notes.md, v7). Gated MLPs run in runtime/mlp.py at every row count.
FUSE_MAX_ROWS = 2048


class Int8SiblingGroup(Int8Weights):
    """The concatenated weights of Int8Linears that read the same input, and their one GEMM."""

    def __init__(self, members: list[Int8Linear]) -> None:
        super().__init__()
        first = members[0]
        self.in_features = first.in_features
        self.input_quant, self.backend, self.out_dtype = first.input_quant, first.backend, first.out_dtype
        self.splits = [m.out_features for m in members]
        self.register_buffer("qweight", torch.cat([m.qweight for m in members]))
        self.register_buffer("weight_scale", torch.cat([m.weight_scale for m in members]))
        has_bias = any(m.bias is not None for m in members)
        zeros = [
            torch.zeros(m.out_features, dtype=first.out_dtype, device=first.qweight.device) for m in members
        ]
        bias = [m.bias if m.bias is not None else z for m, z in zip(members, zeros, strict=True)]
        self.register_buffer("bias", torch.cat(bias) if has_bias else None)  # + 0.0: exact
        self.register_buffer("input_scale", first.input_scale)
        self._pending: tuple[torch.Tensor, list[torch.Tensor], set[int]] | None = None

    def _gemm(self, x: torch.Tensor, rows: slice) -> torch.Tensor:
        """Output columns ``rows`` (weight rows) for input ``x``: packed INT8 rows or floats."""
        bias = None if self.bias is None else self.bias[rows]
        return ops.w8a8_linear(
            x, self.qweight[rows, : self.in_features], self.weight_scale[rows], bias, self.input_quant,
            self.input_scale, ops.resolve_backend(self.backend, x.device), self.out_dtype,
        )  # fmt: skip

    def output(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Member ``index``'s output for input ``x``: computed with its siblings' on the first ask
        (at most ``FUSE_MAX_ROWS`` rows; above, each member runs its own GEMM on its weight rows)."""
        if x.numel() > FUSE_MAX_ROWS * x.shape[-1]:
            start = sum(self.splits[:index])
            return self._gemm(x, slice(start, start + self.splits[index]))
        if self._pending is None or self._pending[0] is not x or index in self._pending[2]:
            self._pending = (x, list(torch.split(self._gemm(x, slice(None)), self.splits, dim=-1)), set())
        _, outs, served = self._pending
        served.add(index)
        if len(served) == len(outs):  # every member has its slice: drop the references
            self._pending = None
        return outs[index]

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={'+'.join(map(str, self.splits))}"


class Int8LinearSlice(nn.Module):
    """One member of an :class:`Int8SiblingGroup`: rows ``[start, start + out_features)`` of its
    weights. It holds no tensors (the group, registered elsewhere in the model, does)."""

    def __init__(self, group: Int8SiblingGroup, index: int, group_name: str) -> None:
        super().__init__()
        object.__setattr__(self, "group", group)  # not a submodule: the weights are counted once
        self.index, self.group_name = index, group_name
        self.in_features, self.out_features = group.in_features, group.splits[index]
        self.start = sum(group.splits[:index])

    @property
    def qweight(self) -> torch.Tensor:
        """The member's rows of the group's padded int8 weights (a view)."""
        return self.group.qweight[self.start : self.start + self.out_features]

    @property
    def weight_int8(self) -> torch.Tensor:
        return self.qweight[:, : self.in_features]

    @property
    def weight_scale(self) -> torch.Tensor:
        return self.group.weight_scale[self.start : self.start + self.out_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.output(self.index, x)

    def extra_repr(self) -> str:
        return f"rows {self.start}:{self.start + self.out_features} of {self.group_name}"
