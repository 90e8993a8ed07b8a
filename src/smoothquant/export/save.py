"""``save_quantized``: a quantized model -> a compressed-tensors checkpoint directory.

The directory is what ``save_pretrained`` + llm-compressor would produce: ``config.json`` with a
``quantization_config``, ``model.safetensors``, ``generation_config.json``, the tokenizer files,
plus ``smoothquant_recipe.json`` (what was applied). Nothing is written unless all of it can be:
the model is validated and the tensors collected first, then written atomically.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Container, Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from smoothquant.errors import ExportError
from smoothquant.export import compressed_tensors as ct
from smoothquant.export import names
from smoothquant.export.atomic import atomic_directory
from smoothquant.export.skeleton import skeleton
from smoothquant.nn_utils import model_dtype
from smoothquant.quantization import FakeQuantLinear, Scheme
from smoothquant.recipe import QuantizationResult
from smoothquant.version import __version__

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
RECIPE_FILE = "smoothquant_recipe.json"


def _quantized(model: nn.Module) -> dict[str, FakeQuantLinear]:
    found = {n: m for n, m in model.named_modules() if isinstance(m, FakeQuantLinear)}
    if not found:
        raise ExportError(
            "the model has no quantized linears: run smoothquant.quantize (or quantize_model) first"
        )
    return found


def _scheme(modules: dict[str, FakeQuantLinear], name: str) -> Scheme:
    """The one scheme all quantized linears share (the format writes one config group)."""
    first = next(iter(modules.values()))
    outputs = next((m.output_quant for m in modules.values() if m.output_quant is not None), None)
    scheme = Scheme(name, first.weight_quant, first.input_quant, outputs, first.outlier_threshold)
    ct.check_exportable(scheme)
    kinds = {(m.weight_quant, m.input_quant, m.outlier_threshold) for m in modules.values()}
    if len(kinds) > 1:
        raise ExportError(
            f"the quantized linears use {len(kinds)} different schemes; export needs one scheme for all"
        )
    return scheme


def check_layout(model: nn.Module, modules: dict[str, nn.Module]) -> None:
    """Every quantized linear must be an ``nn.Linear`` in a freshly built model of this config,
    or transformers and vLLM would load the int8 weight into something else (GPT-2's Conv1D
    stores ``[in, out]``, and neither client quantizes it)."""
    fresh = dict(skeleton(model.config, device="meta").named_modules())
    for name, module in modules.items():
        original = fresh.get(name)
        if not isinstance(original, nn.Linear):
            kind = type(original).__name__ if original is not None else "missing"
            raise ExportError(
                f"{name} is a {kind} in a {type(model).__name__} built from its config, not an nn.Linear: "
                "compressed-tensors checkpoints of this family would not load in transformers or vLLM"
            )
        if (original.in_features, original.out_features) != (module.in_features, module.out_features):
            raise ExportError(f"{name}: shape differs from the model's config; was the model resized?")


def vllm_caveats(scheme: Scheme, quantized: list[str], model_type: str | None) -> list[str]:
    """Valid checkpoints that vLLM (per its CompressedTensorsW8A8Int8 and INT8 MoE code) will not serve."""
    out = []
    if not ct.vllm_servable(scheme):
        out.append(
            f"scheme {scheme.name} (per-tensor dynamic activations) is valid compressed-tensors and loads "
            "in transformers, but vLLM has no kernel for it; use w8a8, O1 or O3 to serve with vLLM"
        )
    fused = names.fused_on_disk(quantized, model_type)
    if fused and scheme.weights.granularity == "tensor":
        out.append(
            f"{fused[0]} and {len(fused) - 1} more store fused projections with one per-tensor weight "
            "scale; vLLM expects one per logical shard of a fused layer and may refuse the checkpoint: "
            "use w8a8 (per-channel weights) to serve this family with vLLM"
        )
    per_token = scheme.inputs.granularity == "token" and scheme.inputs.dynamic
    if any(".experts." in n for n in quantized) and not (
        scheme.weights.granularity == "channel" and per_token
    ):
        out.append(
            f"vLLM's INT8 MoE kernels take only per-channel weights with per-token activations; "
            f"the experts of this {scheme.name} checkpoint will not load there: use w8a8 for MoE models"
        )
    return out


def _input_scales(modules: dict[str, FakeQuantLinear]) -> dict[str, torch.Tensor]:
    """Static input scales, equal across fused siblings (vLLM keeps one: the maximum).

    The pipeline calibrates siblings on the same input, so their scales agree and nothing changes;
    scales that differ (hand-edited models) are raised to the maximum, which is what vLLM would
    compute anyway, and a warning says so.
    """
    scales = {n: m.input_scale for n, m in modules.items() if m.input_scale is not None}
    for group in names.sibling_sets(list(scales)):
        top = torch.stack([scales[n].float().reshape(()) for n in group]).max()
        if any(not torch.equal(scales[n].reshape(()), top) for n in group):
            log.warning(
                "static input scales of fused siblings %s differ; writing their maximum %.6g for all "
                "(vLLM runs them as one GEMM with one input scale)",
                ", ".join(group),
                float(top),
            )
            for n in group:
                scales[n] = top.reshape(1).to(scales[n].dtype).clone()  # one tensor each
    return scales


def checkpoint_tensors(
    state: Iterable[tuple[str, torch.Tensor]], modules: dict[str, FakeQuantLinear], model_type: str | None
) -> dict[str, torch.Tensor]:
    """Checkpoint name -> tensor for ``state`` (state_dict items of a model, or of one block with its
    prefix), in order, each storage once (tied embeddings); ``modules``: its quantized linears."""
    input_scales = _input_scales(modules)
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple] = set()
    for key, tensor in state:
        module_name, _, leaf = key.rpartition(".")
        if module_name in modules:
            if leaf == "qweight":
                leaf = "weight"
            elif leaf == "input_scale":
                tensor = input_scales[module_name]
        view = (tensor.device, tensor.data_ptr(), tensor.shape, tensor.stride())
        if tensor.numel() and view in seen:
            continue  # a tied weight: stored once, transformers/vLLM tie it back from config
        seen.add(view)
        out[names.to_disk(f"{module_name}.{leaf}" if module_name else leaf, model_type)] = (
            tensor.detach().to("cpu").contiguous()
        )
    return out


def float_linears(model: nn.Module, modules: Container[str]) -> list[str]:
    """Every linear-like module left in floating point: ``nn.Linear`` (lm_head...) and modules
    with a 2-D weight that vLLM builds as linears (MoE routers), in their on-disk names."""
    model_type = getattr(model.config, "model_type", None)
    ignore = []
    for name, module in model.named_modules():
        if name in modules or isinstance(module, nn.Embedding):
            continue
        weight = getattr(module, "weight", None)
        if isinstance(module, nn.Linear) or (isinstance(weight, nn.Parameter) and weight.dim() == 2):
            ignore.append(names.to_disk(name, model_type))
    return ignore


def checkpoint_config(model: nn.Module, scheme: Scheme, ignore: list[str]) -> dict[str, Any]:
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    config.dtype = model_dtype(model)
    if isinstance(model.get_output_embeddings(), FakeQuantLinear):
        config.tie_word_embeddings = False  # an int8 lm_head no longer shares the float embedding
    d = config.to_dict()
    d.pop("_name_or_path", None)  # the source path means nothing beside the export
    d["quantization_config"] = ct.quantization_config(scheme, ignore)
    return d


def save_quantized(
    model: nn.Module | QuantizationResult,
    out_dir: str | os.PathLike,
    *,
    tokenizer: Any = None,
    recipe: dict[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Write a model quantized by smoothquant as a compressed-tensors checkpoint.

    ``model`` is the quantized model or the :class:`QuantizationResult` of ``quantize_model``
    (whose recipe is then recorded). ``recipe`` adds entries to ``smoothquant_recipe.json``
    (calibration data, source model...). ``force=True`` replaces an existing ``out_dir``.
    The model is not modified. Returns the output path.
    """
    result = model if isinstance(model, QuantizationResult) else None
    model = result.model if result is not None else model
    modules = _quantized(model)
    scheme = _scheme(modules, result.scheme.name if result is not None else "custom")
    check_layout(model, modules)
    for warning in vllm_caveats(scheme, list(modules), getattr(model.config, "model_type", None)):
        log.warning(warning)
    model_type = getattr(model.config, "model_type", None)
    tensors = checkpoint_tensors(model.state_dict().items(), modules, model_type)
    config = checkpoint_config(model, scheme, float_linears(model, modules))
    full_recipe = recipe_record(
        len(modules), result.recipe() if result is not None else {"scheme": scheme.name}, recipe
    )
    needed = sum(t.numel() * t.element_size() for t in tensors.values())
    with atomic_directory(out_dir, force=force, needed_bytes=needed) as tmp:
        save_file(tensors, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        write_metadata(tmp, config, getattr(model, "generation_config", None), tokenizer, full_recipe)
    return Path(out_dir)


def recipe_record(quantized_linears: int, applied: dict[str, Any], extra: dict[str, Any] | None) -> dict:
    """What ``smoothquant_recipe.json`` holds: format, what was applied, and the caller's entries."""
    return {
        "smoothquant_version": __version__,
        "format": f"{ct.QUANT_METHOD}/{ct.FORMAT}",
        "quantized_linears": quantized_linears,
        **applied,
        **(extra or {}),
    }


def write_metadata(
    directory: Path, config: dict[str, Any], generation_config: Any, tokenizer: Any, recipe: dict[str, Any]
) -> None:
    """Everything of a checkpoint directory except the weights."""
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if generation_config is not None:
        generation_config.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    (directory / RECIPE_FILE).write_text(json.dumps(recipe, indent=2, default=str) + "\n")
