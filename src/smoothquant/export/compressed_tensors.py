"""The ``compressed-tensors`` W8A8 INT8 format, as data: our schemes <-> ``quantization_config``.

What llm-compressor writes and vLLM serves (``CompressedTensorsW8A8Int8``), checked against
compressed-tensors 0.20 (``QuantizationArgs``, ``IntQuantizationCompressor``) and vLLM's scheme:

- ``config.json["quantization_config"]``: ``quant_method`` "compressed-tensors", ``format``
  "int-quantized" (tensors stored as int8, nothing packed), ``quantization_status`` "compressed",
  one config group targeting ``Linear`` with ``weights`` / ``input_activations`` args, and an
  ``ignore`` list of every linear left in floating point (``lm_head``, MoE routers...).
- per quantized linear ``X``: ``X.weight`` int8 ``[out, in]``, ``X.weight_scale`` fp32 ``[out, 1]``
  (channel) or ``[1]`` (tensor), ``X.input_scale`` fp32 ``[1]`` for static activations, ``X.bias``
  in the model dtype. Symmetric schemes store no zero points. Dequantization is ``q * scale``.

vLLM serves weights per tensor or per channel with activations per token (dynamic) or per tensor
(static). Per-tensor *dynamic* activations (our O2) are valid compressed-tensors but vLLM has no
kernel for them; group-wise weights (ZeroQuant), LLM.int8()'s float outlier columns and quantized
q/k/v outputs cannot be expressed at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from smoothquant.errors import CheckpointError, ExportError
from smoothquant.quantization.scheme import ActQuant, Scheme, WeightQuant

QUANT_METHOD = "compressed-tensors"
FORMAT = "int-quantized"
# formats whose tensors are stored exactly like ours (naive-quantized is the older name)
READABLE_FORMATS = (FORMAT, "naive-quantized")
STATUS = "compressed"


def _args(strategy: str, dynamic: bool) -> dict[str, Any]:
    """One ``QuantizationArgs`` (compressed-tensors' pydantic model forbids unknown keys)."""
    return {
        "num_bits": 8,
        "type": "int",
        "symmetric": True,
        "strategy": strategy,
        "dynamic": dynamic,
        "group_size": None,
        "block_structure": None,
        "actorder": None,
        "observer": "minmax",
        "observer_kwargs": {},
    }


def check_exportable(scheme: Scheme) -> None:
    """Raise :class:`ExportError` for schemes the format cannot express."""
    problems = []
    if scheme.weights.granularity == "group":
        problems.append(f"group-wise weights (group_size={scheme.weights.group_size})")
    if scheme.outlier_threshold is not None:
        problems.append("LLM.int8() float outlier columns")
    if scheme.outputs is not None:
        problems.append("quantized q/k/v outputs (quantize_bmm_inputs)")
    if problems:
        raise ExportError(
            f"scheme {scheme.name} cannot be written as compressed-tensors W8A8: {', '.join(problems)} "
            "has no representation there (nor a vLLM kernel). Export w8a8, O1, O2 or O3 instead."
        )


def quantization_config(scheme: Scheme, ignore: list[str]) -> dict[str, Any]:
    check_exportable(scheme)
    group = {
        "targets": ["Linear"],
        "weights": _args(scheme.weights.granularity, dynamic=False),
        "input_activations": _args(scheme.inputs.granularity, dynamic=scheme.inputs.dynamic),
        "output_activations": None,
        "format": FORMAT,
    }
    return {
        "quant_method": QUANT_METHOD,
        "format": FORMAT,
        "quantization_status": STATUS,
        "config_groups": {"group_0": group},
        "ignore": sorted(ignore),
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
    }


def vllm_servable(scheme: Scheme) -> bool:
    """vLLM's CompressedTensorsW8A8Int8 takes per-token dynamic or per-tensor static inputs."""
    a = scheme.inputs
    return (a.granularity == "token" and a.dynamic) or (a.granularity == "tensor" and not a.dynamic)


# ---- reading ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConfigGroup:
    """One config group, parsed: which modules it covers and how they are quantized."""

    name: str
    targets: tuple[str, ...]
    weights: WeightQuant
    inputs: ActQuant


def _int8_symmetric(args: Any, where: str) -> dict[str, Any]:
    if not isinstance(args, dict):
        raise CheckpointError(
            f"{where} is missing: only W8A8 checkpoints (int8 weights and activations) can be loaded"
        )
    bits, kind, sym = args.get("num_bits", 8), args.get("type", "int"), args.get("symmetric", True)
    if bits != 8 or kind != "int" or sym is not True:
        raise CheckpointError(
            f"{where}: num_bits={bits}, type={kind}, symmetric={sym}; only symmetric 8-bit int "
            "quantization (W8A8 INT8) can be loaded"
        )
    return args


def _strategy(args: dict[str, Any]) -> str:
    """compressed-tensors infers the strategy from group_size when it is absent."""
    strategy = args.get("strategy")
    if strategy is None:
        group_size = args.get("group_size")
        strategy = {None: "tensor", -1: "channel"}.get(group_size, "group")
    return str(strategy).lower()


def _config_group(name: str, group: Any) -> ConfigGroup:
    """One entry of ``config_groups``, checked to be W8A8 INT8 as ``load`` runs it."""
    where = f"config_groups.{name}"
    if not isinstance(group, dict) or not isinstance(group.get("targets"), list):
        raise CheckpointError(f"{where} has no targets list")
    if group.get("format") not in (None, *READABLE_FORMATS):
        raise CheckpointError(f"{where}.format is {group.get('format')!r}; only int8 tensors can be loaded")
    if group.get("output_activations"):
        raise CheckpointError(f"{where}.output_activations is set; output quantization is not supported")
    w = _int8_symmetric(group.get("weights"), f"{where}.weights")
    a = _int8_symmetric(group.get("input_activations"), f"{where}.input_activations")
    w_strategy, a_strategy = _strategy(w), _strategy(a)
    if w_strategy not in ("tensor", "channel") or w.get("dynamic"):
        raise CheckpointError(
            f"{where}.weights: strategy {w_strategy!r} (dynamic={w.get('dynamic')}); only static "
            "per-tensor or per-channel weight scales can be loaded"
        )
    dynamic = a.get("dynamic", False)
    if a_strategy not in ("tensor", "token") or dynamic not in (True, False):
        raise CheckpointError(
            f"{where}.input_activations: strategy {a_strategy!r} (dynamic={dynamic!r}); only per-token "
            "dynamic or per-tensor activation scales can be loaded"
        )
    try:
        inputs = ActQuant(a_strategy, dynamic=dynamic)  # type: ignore[arg-type]
    except Exception as e:  # per-token static: ActQuant says why
        raise CheckpointError(f"{where}.input_activations: {e}") from e
    return ConfigGroup(name, tuple(group["targets"]), WeightQuant(w_strategy), inputs)  # type: ignore[arg-type]


def parse_quantization_config(qc: Any) -> tuple[list[ConfigGroup], list[str]]:
    """Validate a ``quantization_config`` and return its groups and ignore list.

    Raises :class:`CheckpointError` naming the first field that is not W8A8 INT8.
    """
    if not isinstance(qc, dict) or qc.get("quant_method") != QUANT_METHOD:
        method = qc.get("quant_method") if isinstance(qc, dict) else None
        raise CheckpointError(
            f"config.json has no compressed-tensors quantization_config (quant_method={method!r}); "
            "smoothquant.load reads W8A8 INT8 compressed-tensors checkpoints. Load float models "
            "with transformers instead."
        )
    fmt = qc.get("format")
    if fmt not in READABLE_FORMATS:
        raise CheckpointError(
            f"quantization_config.format is {fmt!r}; only {' / '.join(READABLE_FORMATS)} (int8 tensors) "
            "can be loaded"
        )
    if qc.get("quantization_status", STATUS) != STATUS:
        raise CheckpointError(
            f"quantization_status is {qc.get('quantization_status')!r}, not 'compressed': the weights "
            "are not stored as integers"
        )
    if qc.get("kv_cache_scheme") or qc.get("sparsity_config") or qc.get("transform_config"):
        raise CheckpointError(
            "kv_cache_scheme, sparsity_config and transform_config are not supported by smoothquant.load"
        )
    groups = []
    raw_groups = qc.get("config_groups")
    if not isinstance(raw_groups, dict) or not raw_groups:
        raise CheckpointError("quantization_config.config_groups is missing or empty")
    for name, group in raw_groups.items():
        groups.append(_config_group(name, group))
    ignore = qc.get("ignore") or []
    if not isinstance(ignore, list):
        raise CheckpointError("quantization_config.ignore must be a list")
    return groups, ignore
