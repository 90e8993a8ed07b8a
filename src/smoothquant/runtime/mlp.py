"""``Int8GatedMLP``: a gated MLP whose gate and up projections are one INT8 GEMM with the
activation fused into its epilogue.

transformers computes ``down(act(gate(x)) * up(x))`` as two GEMMs writing ``[tokens, I]`` each,
an activation kernel and a multiplication kernel, each reading and writing ``[tokens, I]`` again,
then the down projection's activation quantization reads the product once more. Here the gate
and up weights are stored interleaved (``kernels/layout.py``) so that every output tile of one
GEMM holds matching gate and up columns, and its epilogue writes ``act(gate) * up`` directly:
one ``[tokens, I]`` write instead of five passes, and one launch instead of four (with a static
per-tensor down projection, O3, that write is already its INT8 input). Each value is
rounded to the model's dtype where the floating-point MLP rounds it (gate and up outputs, the
activation), so the result is the unfused module's to within the activation's last-bit
differences.

The module keeps ``gate_proj``/``up_proj`` children (views of its weights, no tensors of their
own) and ``down_proj``, so the family tables still resolve against a converted model.
"""

from __future__ import annotations

import torch
from torch import nn

from smoothquant.kernels.layout import PAIR, interleave_gate_up, split_gate_up
from smoothquant.runtime import ops
from smoothquant.runtime.linear import Int8Linear, Int8Weights


def activation_kind(act: nn.Module | None, device: torch.device) -> str | None:
    """Which of the kernel's activations ``act`` computes (checked on random fp32 values, tightly
    enough that exact GELU, ~5e-4 away from its tanh approximation, is not taken for it)."""
    if act is None or not callable(act):
        return None
    g = torch.Generator(device=device).manual_seed(0)
    x = 4 * torch.randn(256, generator=g, device=device)
    with torch.no_grad():
        got = act(x).float()
        for name, fn in ops.ACTIVATIONS.items():
            if torch.allclose(got, fn(x), rtol=1e-5, atol=1e-6):
                return name
    return None


# fewest rows for which the gated GEMM hands O3's down projection INT8 rows (see forward). Below
# it the scale-column fill and the epilogue's per-row NaN check cost more than the pass they save
# (measured: docs/kernels-notes.md, v11)
INT8_OUT_MIN_ROWS = 4096


class Int8GatedHalf(nn.Module):
    """The gate or up rows of an :class:`Int8GatedMLP`'s weights, for code that inspects them
    (family resolution, ``in_features``); it holds no tensors. Called alone it computes its own
    linear (de-interleaving a copy of the weights): correct, not fast."""

    def __init__(self, mlp: Int8GatedMLP, index: int) -> None:
        super().__init__()
        object.__setattr__(self, "mlp", mlp)  # not a submodule: no cycle in the module tree
        self.index = index
        self.in_features, self.out_features = mlp.in_features, mlp.intermediate

    @property
    def qweight(self) -> torch.Tensor:
        return split_gate_up(self.mlp.qweight)[self.index]

    @property
    def weight_scale(self) -> torch.Tensor:
        return split_gate_up(self.mlp.weight_scale)[self.index]

    @property
    def input_quant(self):
        return self.mlp.input_quant

    @property
    def input_scale(self) -> torch.Tensor | None:
        return self.mlp.input_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.mlp.bias is None else split_gate_up(self.mlp.bias)[self.index]
        return self.mlp.gemm(x, self.qweight[:, : self.in_features], self.weight_scale, bias, act=None)

    def extra_repr(self) -> str:
        return f"{'gate' if self.index == 0 else 'up'} rows of the fused gate/up GEMM"


class Int8GatedMLP(Int8Weights):
    """``down_proj(act(x @ gate.T) * (x @ up.T))``, gate and up as one INT8 GEMM (see module)."""

    def __init__(self, gate: Int8Linear, up: Int8Linear, down: Int8Linear, act: str) -> None:
        super().__init__()
        self.in_features, self.intermediate, self.act = gate.in_features, gate.out_features, act
        self.input_quant, self.backend, self.out_dtype = gate.input_quant, gate.backend, gate.out_dtype
        self.register_buffer("qweight", interleave_gate_up(gate.qweight, up.qweight))
        self.register_buffer("weight_scale", interleave_gate_up(gate.weight_scale, up.weight_scale))
        bias = None
        if gate.bias is not None or up.bias is not None:
            zeros = torch.zeros(self.intermediate, dtype=gate.out_dtype, device=gate.qweight.device)
            bias = interleave_gate_up(
                zeros if gate.bias is None else gate.bias, zeros if up.bias is None else up.bias
            )
        self.register_buffer("bias", bias)
        self.register_buffer("input_scale", gate.input_scale)
        self.gate_proj, self.up_proj = Int8GatedHalf(self, 0), Int8GatedHalf(self, 1)
        self.down_proj = down

    @staticmethod
    def unsupported_reason(gate: nn.Module, up: nn.Module, down: nn.Module) -> str | None:
        """Why three modules cannot become one :class:`Int8GatedMLP` (None: they can)."""
        if not all(isinstance(m, Int8Linear) for m in (gate, up, down)):
            return "not every projection runs in INT8"
        if gate.out_features % PAIR or gate.out_features != up.out_features:
            return f"gate/up widths {gate.out_features}/{up.out_features} are not one multiple of {PAIR}"
        if gate.input_quant != up.input_quant or gate.backend != up.backend or gate.out_dtype != up.out_dtype:
            return "gate and up quantize their input differently"
        if gate.input_scale is not None and not torch.equal(gate.input_scale, up.input_scale):
            return "gate and up have different static input scales"
        return None

    def gemm(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor | None,
        act: str | None,
        out_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` (packed INT8 rows from a folded norm, or floats) times ``weight``, epilogue ``act``
        (and, with ``out_scale``, quantization of the result to packed INT8 rows)."""
        backend = ops.resolve_backend(self.backend, x.device)
        return ops.w8a8_linear(
            x, weight, weight_scale, bias, self.input_quant, self.input_scale, backend, self.out_dtype, act,
            out_scale,
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.qweight[:, : self.in_features]
        down = self.down_proj
        # a static per-tensor down projection (O3) takes its input as INT8 rows straight from this
        # GEMM's epilogue: no [tokens, I] floats written, no quantization pass over them
        rows = x.numel() // x.shape[-1]
        static = isinstance(down, Int8Linear) and down.input_scale is not None and rows >= INT8_OUT_MIN_ROWS
        h = self.gemm(x, weight, self.weight_scale, self.bias, self.act, down.input_scale if static else None)
        return down(h)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, intermediate={self.intermediate}, act={self.act}"
