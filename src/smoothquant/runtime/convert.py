"""``convert``: turn a fake-quantized model into one that runs on the INT8 kernels."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from smoothquant.errors import QuantizationError, UnsupportedModelError
from smoothquant.families import resolve
from smoothquant.nn_utils import model_dtype, set_submodule
from smoothquant.quantization.fake import FakeQuantLinear
from smoothquant.runtime import ops
from smoothquant.runtime.fused import Int8LinearSlice, Int8SiblingGroup
from smoothquant.runtime.linear import Int8Linear, unsupported_reason
from smoothquant.runtime.mlp import Int8GatedHalf, Int8GatedMLP, activation_kind
from smoothquant.runtime.norm import Int8Norm

log = logging.getLogger(__name__)


@dataclass
class ConversionReport:
    """What ``convert`` did; attached to the model as ``model.smoothquant_conversion``."""

    backend: str
    converted: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # name -> why it stays fake-quant
    folded_norms: list[str] = field(default_factory=list)
    not_folded: dict[str, str] = field(default_factory=dict)  # norm -> why
    fused: dict[str, list[str]] = field(default_factory=dict)  # sibling group -> member linears
    gated_mlps: list[str] = field(default_factory=list)  # gate/up as one GEMM with the activation
    not_gated: dict[str, str] = field(default_factory=dict)  # mlp -> why not

    def summary(self) -> str:
        s = f"INT8 runtime ({self.backend}): {len(self.converted)} linears converted"
        if self.kept:
            reasons = sorted(set(self.kept.values()))
            s += f", {len(self.kept)} kept as fake-quant ({'; '.join(reasons)})"
        if self.folded_norms:
            s += f", {len(self.folded_norms)} norms emit INT8 directly"
        if self.gated_mlps:
            s += f", {len(self.gated_mlps)} gated MLPs with gate/up/activation in one GEMM"
        if self.fused:
            s += f", {sum(map(len, self.fused.values()))} linears in {len(self.fused)} fused sibling GEMMs"
        return s


def _device(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def _fold_norms(model: nn.Module, backend: str, report: ConversionReport, fuse_siblings: bool) -> None:
    """Replace each norm whose consumers are all Int8Linears sharing one activation quantizer;
    with ``fuse_siblings``, its consumers become one GEMM (:mod:`smoothquant.runtime.fused`)."""
    try:
        groups = resolve(model).groups
    except UnsupportedModelError as e:
        report.not_folded["*"] = str(e)
        return
    for group in groups:
        if group.is_linear_pair or not group.consumers:
            continue
        consumers = list(group.consumers.values())
        why = None
        if group.passive:
            why = "a floating-point module (router) reads the norm too"
        elif not all(isinstance(c, (Int8Linear, Int8GatedHalf)) for c in consumers):
            why = "not every consumer runs in INT8"
        elif len({c.input_quant for c in consumers}) != 1:
            why = "consumers quantize their input differently"
        elif consumers[0].input_scale is not None and not all(
            torch.equal(c.input_scale, consumers[0].input_scale) for c in consumers
        ):
            why = "consumers have different static scales"
        if why is None:
            first = consumers[0]
            folded = Int8Norm.from_norm(
                group.producer, group.norm_offset, first.input_quant, first.input_scale, backend
            )
            if isinstance(folded, Int8Norm):
                set_submodule(model, group.producer_name, folded)
                report.folded_norms.append(group.producer_name)
                if fuse_siblings and all(isinstance(c, Int8Linear) for c in consumers) and len(consumers) > 1:
                    _fuse(model, folded, group.producer_name, group.consumers, report)
                continue
            why = folded
        report.not_folded[group.producer_name] = why


def _fuse(
    model: nn.Module,
    norm: Int8Norm,
    norm_name: str,
    consumers: dict[str, nn.Module],
    report: ConversionReport,
) -> None:
    """The folded norm's consumers as slices of one :class:`Int8SiblingGroup`, registered on the
    norm (``<norm>.consumers``) so that the weights move and count with the model, once."""
    members = list(consumers.values())
    if len({(m.in_features, m.out_dtype, m.backend) for m in members}) != 1:
        return
    norm.consumers = Int8SiblingGroup(members)
    group_name = f"{norm_name}.consumers"
    for i, name in enumerate(consumers):
        set_submodule(model, name, Int8LinearSlice(norm.consumers, i, group_name))
    report.fused[group_name] = list(consumers)


def _gate_mlps(model: nn.Module, report: ConversionReport) -> None:
    """Replace each gated MLP of the family table whose projections all run in INT8 by an
    :class:`Int8GatedMLP` (gate and up as one GEMM with the activation in its epilogue)."""
    try:
        resolved = resolve(model)
    except UnsupportedModelError:
        return
    spec = resolved.family.gated_mlp
    if spec is None:
        return
    for block in resolved.blocks:
        name = f"{block}.{spec.path}"
        try:
            mlp = model.get_submodule(name)
        except AttributeError:
            continue
        gate, up, down = (getattr(mlp, n, None) for n in (spec.gate, spec.up, spec.down))
        why = Int8GatedMLP.unsupported_reason(gate, up, down)
        if why is None:
            act = activation_kind(getattr(mlp, spec.act, None), gate.qweight.device)
            if act is None:
                why = "its activation is neither SiLU nor tanh-approximated GELU"
        if why is not None:
            report.not_gated[name] = why
            continue
        set_submodule(model, name, Int8GatedMLP(gate, up, down, act))
        report.gated_mlps.append(name)


@torch.no_grad()
def convert(
    model: nn.Module, backend: str = "auto", *, fold_norms: bool = True, fuse_siblings: bool = True
) -> nn.Module:
    """Replace, in place, every :class:`FakeQuantLinear` the INT8 kernels support by an
    :class:`Int8Linear` and return the model.

    Supported: per-tensor and per-channel weights with per-token dynamic, per-tensor dynamic or
    per-tensor static activations. Group-wise weights, LLM.int8() outlier columns and quantized
    outputs stay fake-quant. ``backend``: ``"auto"`` (Triton on CUDA, ``torch._int_mm`` on CPU,
    chosen per call from the input's device), ``"triton"``, ``"cpu"`` or ``"reference"``.

    ``fold_norms`` (Triton only, where it saves passes): norms whose outputs feed only INT8
    linears sharing one activation quantizer (per-token dynamic, or per-tensor static with one
    scale) emit the INT8 rows themselves (:class:`Int8Norm`).

    ``fuse_siblings``: gated MLPs (family tables' ``gated_mlp``) run gate and up as one GEMM
    whose epilogue applies ``act(gate) * up`` (:class:`Int8GatedMLP`); with folded norms, the
    other linears reading one norm (q/k/v) run as one GEMM over their concatenated weights
    (:mod:`smoothquant.runtime.fused`): fewer launches and passes, and a wider GEMM that fills
    the GPU at small token counts.

    What was converted is logged and kept in ``model.smoothquant_conversion``.
    """
    concrete = ops.resolve_backend(backend, _device(model))
    fakes = [(n, m) for n, m in model.named_modules() if isinstance(m, FakeQuantLinear)]
    if not fakes:
        raise QuantizationError("the model has no FakeQuantLinear to convert: run smoothquant.quantize first")
    dtype = model_dtype(model)
    report = ConversionReport(concrete)
    for name, fake in fakes:  # one at a time: the fake's weights are freed as each twin goes in
        reason = unsupported_reason(fake)
        if reason is not None:
            report.kept[name] = reason
            continue
        set_submodule(model, name, Int8Linear.from_fake(fake, backend, dtype))
        report.converted.append(name)
    if fuse_siblings:
        _gate_mlps(model, report)
    if fold_norms and concrete in ops.GPU_BACKENDS:
        _fold_norms(model, backend, report, fuse_siblings)
    model.smoothquant_conversion = report
    log.info(report.summary())
    return model
