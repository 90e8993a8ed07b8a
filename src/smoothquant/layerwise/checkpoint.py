"""A model without weights, and the tensors of a safetensors checkpoint read a few at a time.

The skeleton is built under ``accelerate.init_empty_weights``: parameters live on the meta device
(no memory), buffers such as rotary ``inv_freq`` are computed as usual, so the model's own forward
can compute what each block is called with. :meth:`Checkpoint.load` then gives chosen modules
their real parameters, read with ``safetensors.safe_open``, which reads only the requested
tensors; each shard is opened for one read and closed again, so no mapping of a multi-GB file
outlives the read.

Names on disk follow transformers' checkpoints: the renames transformers applies on load
(``embed_out`` -> ``lm_head`` for GPT-NeoX, ``block_sparse_moe`` -> ``mlp`` for Mixtral...) are
applied to the stored names, and MoE experts are read per expert, as stored, into the per-expert
linears of :func:`smoothquant.prepare_model`. The values are what ``from_pretrained`` would load:
each tensor cast to the dtype of the parameter it fills.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig

from smoothquant.errors import CheckpointError
from smoothquant.export.load import weight_files
from smoothquant.families import prepare_model


def empty_model(config: PretrainedConfig, dtype: torch.dtype) -> nn.Module:
    """``from_config`` with every parameter on the meta device (buffers real), tied weights tied
    and fused MoE experts unfolded, in eval mode."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()
    return prepare_model(model).eval()


def _renamer(model: nn.Module) -> Callable[[str], str]:
    """Stored name -> the name in ``model``, as transformers renames keys when loading (its
    converters, which fuse MoE experts, are not applied: our experts stay per expert)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key
    except ImportError:  # pragma: no cover - transformers releases without key conversion
        return lambda key: key
    renamings = [t for t in get_model_conversion_mapping(model) if isinstance(t, WeightRenaming)]
    meta = model.state_dict()
    prefix = getattr(model, "base_model_prefix", None) or None

    def rename(key: str) -> str:
        return rename_source_key(key, renamings, [], prefix, meta)[0]

    return rename


def _tensors_of(
    model: nn.Module, wanted: Callable[[str], bool]
) -> dict[int, list[tuple[nn.Module, str, str]]]:
    """Parameters and persistent buffers any of whose names is ``wanted``, grouped by tensor
    identity, so tied weights stay tied: id -> [(module, leaf, full name) of every place holding it]."""
    found: dict[int, list[tuple[nn.Module, str, str]]] = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        for leaf, tensor in [*module._parameters.items(), *module._buffers.items()]:
            if tensor is None or leaf in module._non_persistent_buffers_set:
                continue
            found.setdefault(id(tensor), []).append((module, leaf, f"{prefix}.{leaf}" if prefix else leaf))
    return {k: places for k, places in found.items() if any(wanted(name) for _, _, name in places)}


class Checkpoint:
    """Where every tensor of ``model`` lies in the checkpoint folder ``path``."""

    def __init__(self, path: Path, model: nn.Module) -> None:
        self.path = path
        self.files = weight_files(path)
        rename = _renamer(model)
        self.location: dict[str, tuple[Path, str]] = {}
        for file in self.files:
            for key in sorted(self._keys(file)):
                name = rename(key)
                if name in self.location:
                    raise CheckpointError(f"{path}: tensor {name} is stored twice ({key})")
                self.location[name] = (file, key)
        self.used: set[str] = set()
        missing = [
            places[0][2]
            for places in _tensors_of(model, lambda name: True).values()
            if not any(name in self.location for _, _, name in places)
            and places[0][0]._parameters.get(places[0][1]) is not None
        ]
        if missing:
            raise CheckpointError(
                f"{path} has no tensor for {len(missing)} parameters of the model its config.json describes "
                f"(e.g. {', '.join(missing[:3])}); is the checkpoint complete and of this architecture?"
            )

    @staticmethod
    def _keys(file: Path) -> list[str]:
        try:
            with safe_open(file, framework="pt", device="cpu") as f:
                return list(f.keys())
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{file} is truncated or corrupt ({e}); copy the checkpoint again") from e

    def fingerprint(self) -> list[list]:
        """Identifies the checkpoint's contents cheaply (file names, sizes, modification times)."""
        config = hashlib.sha256((self.path / "config.json").read_bytes()).hexdigest()
        files = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in self.files]
        return [["config.json", config], *files]

    def unused(self) -> list[str]:
        return sorted(set(self.location) - self.used)

    def skip(self, wanted: Callable[[str], bool]) -> None:
        """Count the tensors named ``wanted`` as used without reading them (reused layers)."""
        self.used.update(n for n in self.location if wanted(n))

    @torch.no_grad()
    def load(self, model: nn.Module, wanted: Callable[[str], bool], device: torch.device) -> None:
        """Give every parameter and persistent buffer of ``model`` whose name is ``wanted`` its
        stored value, on ``device`` in the dtype the model gave it. Buffers the checkpoint lacks
        keep their computed value."""
        by_file: dict[Path, list[tuple[list, str]]] = {}
        for places in _tensors_of(model, wanted).values():
            stored = next((name for _, _, name in places if name in self.location), None)
            if stored is not None:
                file, key = self.location[stored]
                by_file.setdefault(file, []).append((places, key))
                self.used.add(stored)
        for file, items in by_file.items():
            try:
                with safe_open(file, framework="pt", device="cpu") as f:
                    for places, key in items:
                        _assign(places, _checked(file, key, f.get_tensor(key), _current(places), device))
            except (SafetensorError, OSError) as e:
                raise CheckpointError(
                    f"{file} is truncated or corrupt ({e}); copy the checkpoint again"
                ) from e


def _current(places: list[tuple[nn.Module, str, str]]) -> torch.Tensor:
    module, leaf, _ = places[0]
    old = module._parameters.get(leaf)
    return old if old is not None else module._buffers[leaf]


def _checked(
    file: Path, key: str, value: torch.Tensor, old: torch.Tensor, device: torch.device
) -> torch.Tensor:
    if tuple(value.shape) != tuple(old.shape):
        raise CheckpointError(
            f"{file.name}: {key} has shape {list(value.shape)}, the model expects {list(old.shape)}; "
            "config.json does not match the weights"
        )
    # a fresh allocation, as from_pretrained's copy into the parameter: the tensors safetensors
    # returns may be unaligned, and CPU GEMM kernels round differently on unaligned operands
    return value.to(device=device, dtype=old.dtype, copy=True)


def _assign(places: list[tuple[nn.Module, str, str]], value: torch.Tensor) -> None:
    """Put ``value`` in every place that held one tensor (a parameter stays a parameter)."""
    module, leaf, _ = places[0]
    if module._parameters.get(leaf) is not None:
        value = nn.Parameter(value, requires_grad=False)
    for holder, name, _ in places:
        if isinstance(value, nn.Parameter):
            holder._parameters[name] = value
        else:
            holder._buffers[name] = value


def move_buffers(model: nn.Module, device: torch.device) -> None:
    """Move the real (computed) buffers of a skeleton to ``device``; ``Module.to`` would refuse the
    meta parameters."""
    for module in model.modules():
        for leaf, buf in module._buffers.items():
            if buf is not None and not buf.is_meta and buf.device != device:
                module._buffers[leaf] = buf.to(device)


def release(model: nn.Module, wanted: Callable[[str], bool]) -> None:
    """Send the parameters and persistent buffers named ``wanted`` back to the meta device,
    freeing their memory (ties kept)."""
    for places in _tensors_of(model, wanted).values():
        _assign(places, _current(places).to("meta"))
