"""``quantize``: swap every mapped linear of a model for its simulated-INT8 counterpart."""

from __future__ import annotations

import copy
from collections.abc import Collection, Iterable, Mapping

import torch
from torch import nn

from smoothquant.calibration.stats import ActStats
from smoothquant.errors import QuantizationError, StatsMismatchError
from smoothquant.families import ResolvedModel, prepare_model, resolve
from smoothquant.nn_utils import in_out_features, set_submodule, weight_oi
from smoothquant.quantization.fake import FakeQuantLinear
from smoothquant.quantization.gptq import check_rounding, round_weights
from smoothquant.quantization.outliers import range_outliers
from smoothquant.quantization.scheme import ActQuant, Scheme, get_scheme
from smoothquant.state import smoothing_id


def _lm_head_name(model: nn.Module) -> str:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    for name, module in model.named_modules():
        if module is head:
            return name
    raise QuantizationError("quantize_lm_head=True but the model has no output embedding (lm_head)")


def _static_absmax(stats: ActStats, kind: str, name: str, spec: ActQuant) -> float:
    table = getattr(stats, kind)
    absmax = float(table[name].max())
    if spec.clip_quantile is not None and kind == "inputs":
        if name not in stats.token_hist:
            raise StatsMismatchError(
                f"{name}: clipping needs per-token histograms; calibrate with token_histograms=True"
            )
        absmax = min(absmax, stats.token_quantile(name, spec.clip_quantile))
    return absmax


def quantization_targets(
    model: nn.Module, *, quantize_lm_head: bool = False, resolved: ResolvedModel | None = None
) -> dict[str, nn.Module]:
    """The linears ``quantize`` replaces: every linear inside the decoder blocks (routers and
    MoE gates excepted), plus ``lm_head`` when asked."""
    if resolved is None:
        prepare_model(model)
        resolved = resolve(model)
    targets = dict(resolved.quantizable)
    if quantize_lm_head:
        name = _lm_head_name(model)
        targets[name] = model.get_submodule(name)
    return targets


def quantized_linear(
    module: nn.Module,
    scheme: Scheme,
    *,
    quantize_out: bool = False,
    input_absmax: float | None = None,
    output_absmax: float | None = None,
) -> FakeQuantLinear:
    """One linear as ``scheme`` quantizes it (``quantize_out``: it feeds an attention BMM);
    static schemes pass the calibrated absmax of its input (and output)."""
    return FakeQuantLinear.from_float(
        module,
        scheme.weights,
        scheme.inputs,
        scheme.outputs if quantize_out else None,
        outlier_threshold=scheme.outlier_threshold,
        input_absmax=input_absmax,
        output_absmax=output_absmax,
    )


def check_static_coverage(names: Iterable[str], stats: ActStats) -> None:
    """Static activation scales need the input range of every linear in ``names``."""
    unseen = [n for n in names if n not in stats.inputs]
    if unseen:
        raise StatsMismatchError(
            f"no calibration statistics for {len(unseen)} linears (e.g. {', '.join(unseen[:3])}): "
            "experts that received no calibration token need more calibration data, or use a "
            "dynamic scheme; otherwise these statistics come from another model"
        )


def quantized_replacements(
    targets: dict[str, nn.Module],
    scheme: Scheme,
    stats: ActStats | None,
    bmm: set[str],
    *,
    smoothing: str | None = None,
    hessians: Mapping[str, torch.Tensor] | None = None,
    search_weight_scales: bool = False,
    input_clip: Mapping[str, float] | None = None,
) -> dict[str, FakeQuantLinear]:
    """The ``FakeQuantLinear`` of every target (``bmm``: the targets that feed attention BMMs), all
    built and checked before any is used. Static schemes read the absmax of each target's input
    (and output) from ``stats``, which must have been measured at smoothing state ``smoothing``
    (the model's :func:`smoothing_id`, when known). ``hessians`` (``X^T X`` of targets' inputs, from
    :func:`~smoothquant.calibration.collect_hessians`): those targets' weights are rounded by GPTQ
    instead of to nearest; ``search_weight_scales``: their scales shrunk first where that lowers
    the output error (:func:`~smoothquant.quantization.gptq.search_scale`). ``input_clip``:
    name -> factor (<= 1) applied to the calibrated static input range (from
    :func:`~smoothquant.quantization.search_input_clip`). Works on a whole model or on one decoder
    block."""
    static_in = not scheme.inputs.dynamic
    static_out = scheme.outputs is not None and not scheme.outputs.dynamic
    if static_in or static_out:
        if stats is None:
            raise StatsMismatchError(
                f"scheme {scheme.name} uses static activation scales: pass stats=calibrate(model, data)"
            )
        stats_id = stats.meta.get("smoothing_id")
        if smoothing is not None and stats_id is not None and stats_id != smoothing:
            raise StatsMismatchError(
                "these statistics describe the model before its last smoothing; pass the statistics "
                "returned by smooth(), or recalibrate the smoothed model"
            )
        if static_in:
            check_static_coverage(targets, stats)
            stats.validate(
                {n: in_out_features(m)[0] for n, m in targets.items()}, what=f"scheme {scheme.name}"
            )
        if static_out:
            stats.validate(
                {n: in_out_features(m)[1] for n, m in targets.items() if n in bmm},
                what="q/k/v output scales",
                kind="outputs",
            )
    if search_weight_scales and not hessians:
        raise QuantizationError("searching weight scales needs the calibration Hessians (GPTQ rounding)")
    clip = dict(input_clip or {})
    bad = {n: c for n, c in clip.items() if not (isinstance(c, (int, float)) and 0.0 < c <= 1.0)}
    if bad or (clip and not static_in):
        raise QuantizationError(
            f"input_clip needs a static input scheme and factors in (0, 1]; got {scheme.name}, {bad or clip}"
        )
    stray = sorted(set(clip) - set(targets))
    if stray:
        raise QuantizationError(
            f"input_clip names {len(stray)} linears this model does not quantize (e.g. {stray[0]}); it "
            "belongs to another model"
        )
    replacements = {}
    for name, module in targets.items():
        quantize_out = name in bmm
        replacements[name] = quantized_linear(
            module,
            scheme,
            quantize_out=quantize_out,
            input_absmax=_static_absmax(stats, "inputs", name, scheme.inputs) * clip.get(name, 1.0)
            if static_in
            else None,
            output_absmax=_static_absmax(stats, "outputs", name, scheme.outputs)
            if static_out and quantize_out
            else None,
        )
    if hessians:
        check_rounding("gptq", scheme.outlier_threshold)
        weights = {n: (weight_oi(targets[n]), replacements[n].weight_scale) for n in targets}
        rounded = round_weights(weights, scheme.weights, hessians, search_scales=search_weight_scales)
        for name, (q, scale) in rounded.items():
            replacements[name].qweight.copy_(q)
            replacements[name].weight_scale.copy_(scale.reshape(replacements[name].weight_scale.shape))
    return replacements


def quantize(
    model: nn.Module,
    scheme: str | Scheme = "w8a8",
    stats: ActStats | None = None,
    *,
    quantize_bmm_inputs: bool = False,
    quantize_lm_head: bool = False,
    inplace: bool = True,
    hessians: Mapping[str, torch.Tensor] | None = None,
    search_weight_scales: bool = False,
    input_clip: Mapping[str, float] | None = None,
    keep_float: Collection[str] = (),
) -> nn.Module:
    """Replace every mapped linear by a :class:`FakeQuantLinear` following ``scheme``.

    Static schemes need ``stats`` of the model *as it is now*: after ``smooth``, pass the
    statistics ``smooth`` returned (or recalibrate). Embeddings, norms and ``lm_head`` (unless
    ``quantize_lm_head``) stay in floating point.

    ``inplace=True`` (default) edits ``model`` and returns it; ``inplace=False`` works on a deep
    copy. Every replacement is built before the first swap, so a failing call leaves the model
    untouched. ``hessians``: round the weights of those linears by GPTQ (see
    :mod:`smoothquant.quantization.gptq`), measured on the model as it is now;
    ``search_weight_scales`` and ``input_clip``: searched ranges, see :func:`quantized_replacements`.
    ``keep_float``: names of targets left in floating point. For per-tensor schemes, where a few
    linears (smollm2's ``down_proj`` of some layers) carry most of the loss, this is mixed
    precision without a new format: the export lists them in the checkpoint's ``ignore``, which
    vLLM and transformers honour. ``scheme.float_outliers`` adds the linears no per-tensor pair of
    scales can cover (:func:`~smoothquant.quantization.outliers.range_outliers`, from ``stats``).
    """
    scheme = get_scheme(scheme, quantize_bmm_inputs=quantize_bmm_inputs)
    if any(isinstance(m, FakeQuantLinear) for m in model.modules()):
        raise QuantizationError("the model is already quantized; start again from the floating-point model")
    if not inplace:
        model = copy.deepcopy(model)
    prepare_model(model)
    resolved = resolve(model)
    targets = quantization_targets(model, quantize_lm_head=quantize_lm_head, resolved=resolved)
    unknown = sorted(set(keep_float) - set(targets))
    if unknown:
        raise QuantizationError(
            f"keep_float names {len(unknown)} modules this model does not quantize (e.g. {unknown[0]})"
        )
    keep = set(keep_float)
    if scheme.float_outliers is not None:
        if stats is None:
            raise StatsMismatchError(
                "float_outliers chooses linears by their calibrated input ranges: pass stats"
            )
        keep.update(range_outliers(targets, stats, scheme.float_outliers))
    targets = {n: m for n, m in targets.items() if n not in keep}
    if hessians:
        hessians = {n: h for n, h in hessians.items() if n not in keep}
    input_clip = {n: c for n, c in (input_clip or {}).items() if n not in keep}
    bmm = set(resolved.bmm_inputs) if scheme.outputs is not None else set()

    replacements = quantized_replacements(
        targets,
        scheme,
        stats,
        bmm,
        smoothing=smoothing_id(model),
        hessians=hessians,
        search_weight_scales=search_weight_scales,
        input_clip=input_clip,
    )
    for name, new in replacements.items():
        set_submodule(model, name, new)
    return model
