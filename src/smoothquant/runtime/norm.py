"""``Int8Norm``: a LayerNorm/RMSNorm that emits INT8 for the linears it feeds (the O3 fold).

SmoothQuant-O3 quantizes the input of q/k/v (and of the MLP's first linears) with one static
scale. That input is a norm's output, so the norm can write the integers directly: one pass over
the hidden states instead of a norm pass (several kernels in eager PyTorch), a write of the
floating-point result, and one quantization pass per consumer. Per-token dynamic scales (O1,
w8a8) fold the same way, the row's absmax being at hand in the norm. The output is a packed INT8
tensor (``kernels/packing.py``) that each :class:`Int8Linear` consumer reads as is.
"""

from __future__ import annotations

import torch
from torch import nn

from smoothquant.quantization.scheme import ActQuant
from smoothquant.runtime import ops
from smoothquant.runtime.linear import keep_fp32


def norm_kind(norm: nn.Module, offset: float) -> tuple[bool, float] | str:
    """``(rms, eps)`` if ``norm`` computes ``norm_reference`` (checked on random rows), else why not."""
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1:
        return "no 1-D weight"
    bias = getattr(norm, "bias", None)
    if isinstance(norm, nn.LayerNorm):
        rms, eps = False, norm.eps
    else:
        eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
        rms = True
        if not isinstance(eps, float) or bias is not None:
            return f"{type(norm).__name__} is neither LayerNorm nor an RMSNorm with an eps"
    g = torch.Generator(device=weight.device).manual_seed(0)
    x = (3 * torch.randn(4, weight.numel(), generator=g, device=weight.device)).to(weight.dtype)
    with torch.no_grad():
        got, want = norm(x).float(), ops.norm_reference(x, weight, bias, eps, rms, offset).float()
    if not torch.allclose(got, want, rtol=1e-2, atol=1e-2):
        return f"{type(norm).__name__} does not compute a standard {'RMSNorm' if rms else 'LayerNorm'}"
    return rms, eps


class Int8Norm(nn.Module):
    """``norm(x)`` quantized to packed INT8 rows per ``input_quant`` (token-dynamic or tensor-static)."""

    def __init__(
        self,
        weight: nn.Parameter,
        bias: nn.Parameter | None,
        eps: float,
        rms: bool,
        offset: float,
        input_quant: ActQuant,
        input_scale: torch.Tensor | None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.weight, self.bias = weight, bias
        self.eps, self.rms, self.offset = eps, rms, offset
        self.input_quant, self.backend = input_quant, backend
        self.register_buffer(
            "input_scale", None if input_scale is None else input_scale.detach().float().clone()
        )

    @classmethod
    def from_norm(
        cls,
        norm: nn.Module,
        offset: float,
        input_quant: ActQuant,
        input_scale: torch.Tensor | None,
        backend: str = "auto",
    ) -> Int8Norm | str:
        """The folded norm, or the reason it cannot be folded."""
        if input_quant.dynamic and input_quant.granularity == "tensor":
            return "per-tensor dynamic scales need the whole tensor's absmax first"
        kind = norm_kind(norm, offset)
        if isinstance(kind, str):
            return kind
        return cls(
            norm.weight,
            getattr(norm, "bias", None),
            kind[1],
            kind[0],
            offset,
            input_quant,
            input_scale,
            backend,
        )

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        keep_fp32(self, lambda f: super(Int8Norm, self)._apply(f, recurse), fn, ("input_scale",))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backend = ops.resolve_backend(self.backend, x.device)
        return ops.norm_quantize(
            x,
            self.weight,
            self.bias,
            self.eps,
            self.rms,
            self.offset,
            self.input_quant,
            self.input_scale,
            backend,
        )

    def extra_repr(self) -> str:
        a = self.input_quant
        kind = "RMSNorm" if self.rms else "LayerNorm"
        return f"{kind}({self.weight.numel()}) -> INT8 {a.granularity}-{'dynamic' if a.dynamic else 'static'}"
