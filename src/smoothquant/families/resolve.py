"""Resolve a family table against a concrete model's module tree.

The table speaks in relative path patterns; resolution turns them into module objects, checks the
shapes agree (a producer's width equals its consumers' input width), and picks, for every block,
the first layout whose paths all exist. Any mismatch is an :class:`UnsupportedModelError` that
names the block and the missing paths, so a wrong table fails loudly instead of smoothing the
wrong channels.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache

import torch
from torch import nn

from smoothquant.errors import UnsupportedModelError
from smoothquant.families.spec import Family, Group, Layout
from smoothquant.families.tables import FAMILIES
from smoothquant.nn_utils import in_out_features, is_linear_like, is_quantized_linear

_REGISTERED: list[Family] = []


def register_family(family: Family) -> None:
    """Add (or replace, by name) a family table at run time, ahead of the built-in ones."""
    _REGISTERED[:] = [f for f in _REGISTERED if f.name != family.name]
    _REGISTERED.insert(0, family)


def unregister_family(name: str) -> None:
    _REGISTERED[:] = [f for f in _REGISTERED if f.name != name]


def _families() -> tuple[Family, ...]:
    return (*_REGISTERED, *FAMILIES)


def supported_families() -> list[str]:
    return [f.name for f in _families()]


def _model_type(model_or_config: object) -> str | None:
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "model_type", None)


def family_of_type(model_type: str | None) -> Family | None:
    """The family table for a ``config.model_type``, or None for an unsupported one."""
    return next((f for f in _families() if model_type in f.model_types), None)


def find_family(model_or_config: object) -> Family:
    """The family table for a model (or config), by ``config.model_type``."""
    model_type = _model_type(model_or_config)
    for family in _families():
        if model_type in family.model_types:
            return family
    raise UnsupportedModelError(
        f"model family {model_type!r} (config.model_type) is not supported yet. "
        f"Supported families: {', '.join(supported_families())}. "
        "To add one, write a Family table (smoothquant/families/tables.py has one per family) naming "
        "which norm or linear of a decoder block feeds which linears, and either add it to FAMILIES "
        "there with a tiny config in tests/tiny_models.py, or register it at run time with "
        "smoothquant.families.register_family(table)."
    )


@cache
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(pattern).replace(r"\*", r"([^.]+)") + "$")


def _match(pattern: str, names: Iterable[str]) -> list[tuple[str, tuple[str, ...]]]:
    rx = _pattern(pattern)
    out = []
    for name in names:
        m = rx.match(name)
        if m:
            out.append((name, m.groups()))
    return out


def _substitute(pattern: str, captures: tuple[str, ...]) -> str:
    """Fill the first wildcards of ``pattern`` with the producer's captures (same expert)."""
    for cap in captures:
        pattern = pattern.replace("*", cap, 1)
    return pattern


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


@dataclass
class ResolvedGroup:
    """A smoothing group bound to modules: ``producer`` feeds every consumer and passive module."""

    id: str
    name: str
    producer_name: str
    producer: nn.Module
    consumers: dict[str, nn.Module]
    passive: dict[str, nn.Module] = field(default_factory=dict)
    rows: slice | None = None
    kv_groups: int = 1
    head_dim: int = 0
    norm_offset: float = 0.0

    @property
    def is_linear_pair(self) -> bool:
        """True when the producer is a linear (folds into its output rows), not a norm."""
        return is_linear_like(self.producer) or is_quantized_linear(self.producer)

    @property
    def width(self) -> int:
        """Number of producer output channels that carry a scale."""
        if self.rows is not None:
            return self.rows.stop - self.rows.start
        if self.is_linear_pair:
            return in_out_features(self.producer)[1]
        return self.producer.weight.numel()

    def channel_index(self, device: torch.device | None = None) -> torch.Tensor | None:
        """For each consumer input channel, the producer channel it reads (None: identity).

        With grouped-query attention, ``o_proj`` reads ``num_heads`` heads built from
        ``num_kv_heads`` heads of ``v_proj``: channel ``h * d + i`` reads ``(h // groups) * d + i``.
        """
        if self.kv_groups == 1:
            return None
        c = torch.arange(self.width * self.kv_groups, device=device)
        head, i = c // self.head_dim, c % self.head_dim
        return (head // self.kv_groups) * self.head_dim + i


@dataclass
class ResolvedModel:
    family: Family
    layers_path: str
    blocks: list[str]
    layouts: list[Layout]
    groups: list[ResolvedGroup]
    quantizable: dict[str, nn.Module]
    bmm_inputs: list[str]

    def group_ids(self) -> list[str]:
        return [g.id for g in self.groups]


def find_layers(model: nn.Module, family: Family) -> tuple[str, nn.ModuleList]:
    for path in family.layers:
        try:
            layers = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList):
            return path, layers
    raise UnsupportedModelError(
        f"no decoder layers found for family {family.name!r}: looked for a ModuleList at "
        f"{', '.join(family.layers)}. Is this a causal LM (AutoModelForCausalLM) of that family?"
    )


def _applies(group: Group, config: object) -> bool:
    return all(getattr(config, key, None) == value for key, value in group.when.items())


def _resolve_group(
    group: Group,
    block_name: str,
    modules: dict[str, nn.Module],
    config: object,
    family: Family,
) -> tuple[list[ResolvedGroup], list[str]]:
    """Bind one table group inside one block; returns (groups, missing paths)."""
    producers = _match(group.producer, modules)
    if not producers:
        return [], [group.producer]
    missing: list[str] = []
    out: list[ResolvedGroup] = []
    for pname, caps in producers:
        consumers: dict[str, nn.Module] = {}
        passive: dict[str, nn.Module] = {}
        for patterns, target in ((group.consumers, consumers), (group.passive, passive)):
            for pattern in patterns:
                matches = _match(_substitute(pattern, caps), modules)
                if not matches:
                    missing.append(_substitute(pattern, caps))
                for cname, _ in matches:
                    target[_join(block_name, cname)] = modules[cname]
        if missing:
            continue
        suffix = "." + ".".join(caps) if caps else ""
        resolved = ResolvedGroup(
            id=f"{block_name}.{group.name}{suffix}",
            name=group.name,
            producer_name=_join(block_name, pname),
            producer=modules[pname],
            consumers=consumers,
            passive=passive,
            norm_offset=family.norm_offset,
        )
        _bind_shapes(resolved, group, config)
        out.append(resolved)
    return out, missing


def _bind_shapes(rg: ResolvedGroup, group: Group, config: object) -> None:
    """Fill rows/kv mapping and check every consumer reads exactly the producer's channels."""
    producer = rg.producer
    if rg.is_linear_pair:
        out_features = in_out_features(producer)[1]
        if group.producer_rows is not None:
            chunk = group.producer_rows
            if out_features % chunk.count:
                raise UnsupportedModelError(
                    f"{rg.producer_name}: {out_features} output rows do not split into {chunk.count} chunks"
                )
            size = out_features // chunk.count
            rg.rows = slice(chunk.index * size, (chunk.index + 1) * size)
    else:
        weight = getattr(producer, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 1:
            raise UnsupportedModelError(
                f"{rg.producer_name} ({type(producer).__name__}) is neither a linear nor a norm with "
                "a 1-D weight, so a smoothing scale cannot be folded into it; fix the family table"
            )
    width = rg.width
    for name, module in {**rg.consumers, **rg.passive}.items():
        weight = getattr(module, "weight", None)
        if is_quantized_linear(module):  # resolving an already quantized model
            in_features = module.in_features
        elif not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise UnsupportedModelError(f"{name} ({type(module).__name__}) has no 2-D weight to scale")
        else:
            in_features = in_out_features(module)[0] if is_linear_like(module) else weight.shape[1]
        if in_features == width:
            continue
        heads = getattr(config, "num_attention_heads", None)
        if group.kv_heads and heads and in_features % width == 0 and in_features % heads == 0:
            rg.kv_groups = in_features // width
            rg.head_dim = in_features // heads
            if width % rg.head_dim == 0:
                continue
        raise UnsupportedModelError(
            f"{name} reads {in_features} channels but its producer {rg.producer_name} gives {width}; "
            "the family table pairs the wrong modules"
        )


def resolve(model: nn.Module) -> ResolvedModel:
    """Bind the model's family table to its modules (see module docstring)."""
    family = find_family(model)
    config = getattr(model, "config", None)
    layers_path, layers = find_layers(model, family)
    groups: list[ResolvedGroup] = []
    layouts: list[Layout] = []
    quantizable: dict[str, nn.Module] = {}
    bmm_inputs: list[str] = []
    blocks: list[str] = []
    for index, block in enumerate(layers):
        block_name = f"{layers_path}.{index}"
        blocks.append(block_name)
        modules = dict(block.named_modules())
        if family.experts is not None:
            experts = modules.get(family.experts.path)
            if experts is not None and isinstance(getattr(experts, "gate_up_proj", None), torch.Tensor):
                raise UnsupportedModelError(
                    f"{block_name}.{family.experts.path} holds fused experts; call "
                    "smoothquant.prepare_model(model) first (calibrate/smooth/quantize do this)"
                )
        problems: list[str] = []
        for layout in family.layouts:
            found: list[ResolvedGroup] = []
            missing: list[str] = []
            for group in layout.groups:
                if not _applies(group, config):
                    continue
                got, miss = _resolve_group(group, block_name, modules, config, family)
                found += got
                missing += miss
            if not missing:
                groups += found
                layouts.append(layout)
                break
            problems.append(f"layout {layout.description or '#' + str(len(problems))}: missing {missing}")
        else:
            raise UnsupportedModelError(
                f"block {block_name} ({type(block).__name__}) matches no layout of family "
                f"{family.name!r}: " + "; ".join(problems)
            )
        keep = {n for pattern in family.keep_float for n, _ in _match(pattern, modules)}
        for rel, module in modules.items():
            if rel and rel not in keep and is_linear_like(module):
                quantizable[_join(block_name, rel)] = module
        bmm_inputs += [_join(block_name, n) for p in family.bmm_inputs for n, _ in _match(p, modules)]
    return ResolvedModel(family, layers_path, blocks, layouts, groups, quantizable, bmm_inputs)
