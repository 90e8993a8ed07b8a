"""``load``: a W8A8 INT8 compressed-tensors checkpoint -> a model of ``FakeQuantLinear`` modules.

Reads checkpoints we wrote and those of other tools (llm-compressor) alike: the model is built from
``config.json``, the linears the ``quantization_config`` covers become ``FakeQuantLinear`` holding
the stored integers and scales exactly, everything else is filled from the checkpoint. Every name,
shape and dtype is checked before anything is assigned; files are read with safetensors only (no
pickle, so no code in a checkpoint can run).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import AutoConfig, PretrainedConfig

from smoothquant.errors import CheckpointError
from smoothquant.export import compressed_tensors as ct
from smoothquant.export import names
from smoothquant.export.skeleton import skeleton
from smoothquant.nn_utils import set_submodule
from smoothquant.quantization import FakeQuantLinear

INDEX_FILE = "model.safetensors.index.json"
_ZERO_POINTS = ("weight_zero_point", "input_zero_point")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{path.name} is missing in {path.parent}: is it a checkpoint directory?"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} cannot be read as JSON: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return data


def weight_files(path: Path) -> list[Path]:
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    index = path / INDEX_FILE
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index} has no weight_map")
        files = sorted({path / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index} lists shards that are missing: {', '.join(missing[:5])}")
        return files
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        raise CheckpointError(
            f"{path} holds only pickle (.bin/.pt) weights; smoothquant reads safetensors only, "
            "since unpickling can run arbitrary code"
        )
    raise CheckpointError(f"no model.safetensors (or {INDEX_FILE}) in {path}")


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory (single file or shards), with clear errors."""
    tensors: dict[str, torch.Tensor] = {}
    for file in weight_files(path):
        try:
            with safe_open(file, framework="pt", device="cpu") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                    if key in tensors:
                        raise CheckpointError(f"tensor {key} appears in two shards")
                    tensors[key] = f.get_tensor(key)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(
                f"{file} is truncated or corrupt ({e}); copy or download the checkpoint again"
            ) from e
    return tensors


def _expect(tensors: Mapping[str, torch.Tensor], key: str, shape: tuple[int, ...], kind: str) -> torch.Tensor:
    """The tensor ``key`` with exactly ``shape`` and a dtype of ``kind`` ("int8" or "float")."""
    if key not in tensors:
        raise CheckpointError(f"the checkpoint has no tensor {key}, which the config requires")
    t = tensors[key]
    if tuple(t.shape) != shape:
        raise CheckpointError(f"tensor {key} has shape {list(t.shape)}, expected {list(shape)}")
    ok = t.dtype == torch.int8 if kind == "int8" else t.is_floating_point()
    if not ok:
        raise CheckpointError(f"tensor {key} has dtype {t.dtype}, expected {kind}")
    return t


def _zero_points_are_zero(tensors: Mapping[str, torch.Tensor], prefix: str) -> None:
    """Older compressed-tensors wrote zero points even for symmetric schemes; accept all-zero ones."""
    for leaf in _ZERO_POINTS:
        zp = tensors.get(f"{prefix}.{leaf}")
        if zp is not None and bool(zp.ne(0).any()):
            raise CheckpointError(f"{prefix}.{leaf} is non-zero: asymmetric quantization cannot be loaded")


def config_dtype(config: dict, dtype: torch.dtype | None = None) -> torch.dtype:
    """The dtype a checkpoint's floats load in: ``dtype`` when given, else the one config.json names."""
    if dtype is not None:
        return dtype
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    found = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(found, torch.dtype) or not found.is_floating_point:
        raise CheckpointError(f"config.json names dtype {name!r}, which is not a floating-point torch dtype")
    return found


Targets = dict[str, tuple[str, nn.Linear, ct.ConfigGroup]]  # module name -> (disk name, linear, group)


def _targets(
    model: nn.Module, groups: list[ct.ConfigGroup], ignore: list[str], tensors: dict, model_type: str | None
) -> Targets:
    """The linears the config quantizes (the first matching group wins, as in compressed-tensors)."""
    found: Targets = {}
    for name, module in model.named_modules():
        disk = names.to_disk(name, model_type)
        if any(names.matches(disk, module, t) for t in ignore):
            continue
        group = next((g for g in groups if any(names.matches(disk, module, t) for t in g.targets)), None)
        if group is None:
            continue
        if not isinstance(module, nn.Linear):
            raise CheckpointError(
                f"{disk} ({type(module).__name__}) is targeted by {group.name} but is not an nn.Linear; "
                "only quantized linears can be loaded"
            )
        found[name] = (disk, module, group)
    stray = {k.rpartition(".")[0] for k in tensors if k.endswith(".weight_scale")}
    stray -= {disk for disk, _, _ in found.values()}
    if stray:
        raise CheckpointError(
            f"the checkpoint has weight scales for {len(stray)} modules the quantization_config does not "
            f"quantize (e.g. {sorted(stray)[0]}); the config's targets/ignore do not match the tensors"
        )
    return found


def _fake_quant(
    tensors: dict, disk: str, linear: nn.Linear, group: ct.ConfigGroup, dtype: torch.dtype, used: set[str]
) -> FakeQuantLinear:
    """A FakeQuantLinear holding the stored integers and scales (scales widened to fp32, exactly)."""
    out_f, in_f = linear.weight.shape
    fq = FakeQuantLinear(in_f, out_f, linear.bias is not None, group.weights, group.inputs, dtype=dtype)
    scale_shape = (out_f, 1) if group.weights.granularity == "channel" else (1,)
    fq.qweight.copy_(_expect(tensors, f"{disk}.weight", (out_f, in_f), "int8"))
    fq.weight_scale.copy_(_expect(tensors, f"{disk}.weight_scale", scale_shape, "float").float())
    consumed = ["weight", "weight_scale", *_ZERO_POINTS]
    if fq.input_scale is not None:
        fq.input_scale.copy_(_expect(tensors, f"{disk}.input_scale", (1,), "float").float())
        consumed.append("input_scale")
    if fq.bias is not None:
        fq.bias.copy_(_expect(tensors, f"{disk}.bias", (out_f,), "float"))
        consumed.append("bias")
    _zero_points_are_zero(tensors, disk)
    used |= {f"{disk}.{leaf}" for leaf in consumed}  # anything else left over is reported as unexpected
    return fq


def load(
    path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    backend: str | None = "auto",
) -> nn.Module:
    """Load a W8A8 INT8 compressed-tensors checkpoint, ready to run on the INT8 runtime.

    The linears are first rebuilt as :class:`FakeQuantLinear` holding exactly the stored integers
    and fp32 scales, then ``runtime.convert(model, backend)`` moves every one the INT8 kernels
    support onto them (``"auto"``: Triton on CUDA, exact int8 GEMMs on CPU). ``backend=None``
    keeps the fake-quant simulation, which reproduces the saved model's logits bit for bit.
    ``dtype`` is the dtype of the floating-point parameters (default: the one in config.json).
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory; pass the checkpoint directory")
    raw = _read_json(path / "config.json")
    groups, ignore = ct.parse_quantization_config(raw.get("quantization_config"))
    dtype = config_dtype(raw, dtype)
    tensors = read_tensors(path)
    config = _float_config(path)
    model = skeleton(config, dtype=dtype)
    model_type = getattr(config, "model_type", None)

    # build every replacement and check every tensor before touching the model
    targets = _targets(model, groups, ignore, tensors, model_type)
    used: set[str] = set()
    replacements = {n: _fake_quant(tensors, *target, dtype, used) for n, target in targets.items()}
    dense: list[tuple[torch.Tensor, torch.Tensor]] = []
    prefixes = tuple(f"{n}." for n in targets)
    # named_parameters/buffers list tied tensors once, under the name the checkpoint stores
    for key, param in [*model.named_parameters(), *_persistent_buffers(model)]:
        if not key.startswith(prefixes):
            disk = names.to_disk(key, model_type)
            dense.append((param, _expect(tensors, disk, tuple(param.shape), "float")))
            used.add(disk)
    unexpected = sorted(set(tensors) - used)
    if unexpected:
        raise CheckpointError(
            f"the checkpoint has {len(unexpected)} tensors the model does not use (e.g. "
            f"{', '.join(unexpected[:3])}); it belongs to another architecture or config.json is wrong"
        )

    with torch.no_grad():
        for param, value in dense:
            param.copy_(value)
    for name, fq in replacements.items():
        set_submodule(model, name, fq)
    model.to(device)
    if backend is not None:
        from smoothquant.runtime import convert

        convert(model, backend)
    return model


def _float_config(path: Path) -> PretrainedConfig:
    """The checkpoint's transformers config without its quantization_config: the quantized
    modules are built here, not by transformers."""
    try:
        config = AutoConfig.from_pretrained(path)
    except (ValueError, KeyError, OSError) as e:
        raise CheckpointError(f"{path}/config.json is not a transformers config: {e}") from e
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config


def _persistent_buffers(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    state = model.state_dict(keep_vars=True)
    return [(k, b) for k, b in model.named_buffers() if k in state]
