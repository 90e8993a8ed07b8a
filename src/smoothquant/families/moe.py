"""Per-expert linears for fused MoE experts.

transformers 5 stores the experts of Mixtral, Qwen2-MoE and Qwen3-MoE as two 3-D parameters and
loops over them with ``F.linear``. Nothing can observe or replace those matmuls one expert at a
time, so :func:`prepare_model` swaps the fused module for :class:`UnfusedExperts`: a ``ModuleList``
of experts with ordinary ``nn.Linear`` projections (named as in the family's original checkpoints)
and the same routed forward. The function is unchanged; from then on calibration, smoothing,
quantization and export handle experts like any other linear.
"""

from __future__ import annotations

import torch
from torch import nn

from smoothquant.errors import UnsupportedModelError
from smoothquant.families.resolve import find_family, find_layers
from smoothquant.families.spec import Experts
from smoothquant.nn_utils import set_submodule


class Expert(nn.Module):
    """One gated-MLP expert: ``down(act(gate(x)) * up(x))``."""

    def __init__(self, names: Experts, hidden: int, intermediate: int, act_fn: nn.Module, **factory) -> None:
        super().__init__()
        self._names = (names.gate, names.up, names.down)
        for name, (fan_in, fan_out) in zip(
            self._names, ((hidden, intermediate), (hidden, intermediate), (intermediate, hidden)), strict=True
        ):
            self.add_module(name, nn.Linear(fan_in, fan_out, bias=False, **factory))
        self.act_fn = act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up, down = (getattr(self, n) for n in self._names)
        return down(self.act_fn(gate(x)) * up(x))


class UnfusedExperts(nn.ModuleList):
    """Drop-in replacement for transformers' fused ``*Experts`` modules (same call signature)."""

    @classmethod
    def from_fused(cls, fused: nn.Module, names: Experts) -> UnfusedExperts:
        gate_up, down = fused.gate_up_proj, fused.down_proj
        num_experts, two_inter, hidden = gate_up.shape
        inter = two_inter // 2
        experts = cls()
        factory = {"dtype": gate_up.dtype, "device": gate_up.device}
        with torch.no_grad():
            for e in range(num_experts):
                expert = Expert(names, hidden, inter, fused.act_fn, **factory)
                getattr(expert, names.gate).weight.copy_(gate_up[e, :inter])
                getattr(expert, names.up).weight.copy_(gate_up[e, inter:])
                getattr(expert, names.down).weight.copy_(down[e])
                experts.append(expert)
        return experts

    def forward(  # type: ignore[override]
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        out = torch.zeros_like(hidden_states)
        for e, expert in enumerate(self):
            token_idx, k_pos = torch.where(top_k_index == e)
            if token_idx.numel() == 0:
                continue
            y = expert(hidden_states[token_idx]) * top_k_weights[token_idx, k_pos, None]
            out.index_add_(0, token_idx, y.to(out.dtype))
        return out


def prepare_model(model: nn.Module) -> nn.Module:
    """Make every linear of the model observable: unfold fused MoE experts (idempotent).

    Modifies ``model`` in place (fused expert modules are replaced; the computed function is the
    same) and returns it. Models without fused experts are returned untouched, as are models of
    families without a table (calibration still works on them).
    """
    try:
        family = find_family(model)
    except UnsupportedModelError:
        return model
    if family.experts is None:
        return model
    path, layers = find_layers(model, family)
    for index, block in enumerate(layers):
        try:
            fused = block.get_submodule(family.experts.path)
        except AttributeError:
            continue  # a dense layer of a partly-MoE model
        if isinstance(getattr(fused, "gate_up_proj", None), torch.Tensor):
            unfused = UnfusedExperts.from_fused(fused, family.experts)
            set_submodule(model, f"{path}.{index}.{family.experts.path}", unfused)
    return model
