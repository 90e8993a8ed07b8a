"""A model built from a config alone, with the module tree our checkpoints describe."""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig

from smoothquant.families import prepare_model

try:  # skips random initialisation of weights that the checkpoint overwrites anyway
    from transformers.initialization import no_init_weights
except ImportError:  # pragma: no cover - older transformers 5 releases
    no_init_weights = contextlib.nullcontext  # type: ignore[assignment]


def skeleton(
    config: PretrainedConfig, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """``AutoModelForCausalLM.from_config`` with fused MoE experts unfolded (``prepare_model``),
    as ``quantize`` left them. On ``device="meta"`` it costs no memory (used to check names)."""
    with torch.device(device), no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()  # skipped by no_init_weights; a checkpoint stores tied weights once
    return prepare_model(model).eval()
