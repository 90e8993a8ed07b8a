"""Small helpers for the two linear layouts found in Hugging Face models.

``nn.Linear`` stores its weight as ``[out, in]``; transformers' ``Conv1D`` (GPT-2) stores
``[in, out]``. Everything in the library reads weights through :func:`weight_oi`, a view in the
``[out, in]`` orientation, so in-place edits reach the real parameter either way.
"""

from __future__ import annotations

import torch
from torch import nn

try:  # transformers is a hard dependency, but keep the import local to this one place
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers always provides it
    Conv1D = None  # type: ignore[assignment,misc]


def is_conv1d(module: nn.Module) -> bool:
    return Conv1D is not None and isinstance(module, Conv1D)


def is_linear_like(module: nn.Module) -> bool:
    """True for modules computing ``x @ W.T + b`` with a 2-D weight: nn.Linear and Conv1D."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def is_quantized_linear(module: nn.Module) -> bool:
    """FakeQuantLinear / Int8Linear: int8 ``qweight`` instead of a float weight."""
    return isinstance(getattr(module, "qweight", None), torch.Tensor)


def weight_oi(module: nn.Module) -> torch.Tensor:
    """The weight as an ``[out, in]`` view (a transpose view for Conv1D)."""
    weight = module.weight
    return weight.t() if is_conv1d(module) else weight


def in_out_features(module: nn.Module) -> tuple[int, int]:
    if is_quantized_linear(module):
        return module.in_features, module.out_features
    out_f, in_f = weight_oi(module).shape
    return in_f, out_f


def set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replace ``root.<name>`` (dotted path) by ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Arithmetic for scales and folds: float64 for float64 models, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def nonfinite_parameters(model: nn.Module) -> list[str]:
    """Names of floating-point parameters holding NaN or inf (a damaged checkpoint: calibration
    would report overflowing activations without saying why). Buffers are left out: masks may
    hold -inf by design."""
    return [n for n, t in model.named_parameters() if t.is_floating_point() and not torch.isfinite(t).all()]
