"""How module names on disk differ from module names in memory, from the family tables.

transformers 5 renames some checkpoint keys on load and fuses MoE experts into 3-D parameters;
``save_pretrained`` reverses that. Our models hold per-expert linears (``prepare_model``) named as
in the original checkpoints, so only the renames remain, and each family table lists its own
(``Family.disk_renames``: Mixtral's MoE block is ``mlp`` in memory but ``block_sparse_moe`` on
disk) and its linears stored fused (``Family.fused_on_disk``).

``FUSED_SIBLINGS``: linears vLLM runs as one fused GEMM (``qkv_proj``, ``gate_up_proj``,
Mixtral's ``w13``) with a single static input scale (the maximum of the siblings').
vLLM loads per-tensor weight scales of layers stored fused as one scale per logical shard, which
such a checkpoint does not have (one per tensor).
"""

from __future__ import annotations

import re

from torch import nn

from smoothquant.families import family_of_type

FUSED_SIBLINGS: tuple[frozenset[str], ...] = (
    frozenset({"q_proj", "k_proj", "v_proj"}),
    frozenset({"gate_proj", "up_proj"}),
    frozenset({"w1", "w3"}),
)


def _apply(name: str, rules: tuple[tuple[str, str], ...]) -> str:
    for pattern, replacement in rules:
        name = re.sub(pattern, replacement, name)
    return name


def to_disk(name: str, model_type: str | None) -> str:
    """The checkpoint name of an in-memory module or tensor name, by the family table's
    ``disk_renames`` (reading maps the model's names forward too, so no inverse is needed)."""
    family = family_of_type(model_type)
    return _apply(name, family.disk_renames) if family else name


def fused_on_disk(names: list[str], model_type: str | None) -> list[str]:
    """Those of ``names`` that the family's checkpoints store as one fused linear."""
    family = family_of_type(model_type)
    paths = tuple(f".{p}" for p in (family.fused_on_disk if family else ()))
    return [n for n in names if n.endswith(paths)] if paths else []


def sibling_sets(names: list[str]) -> list[list[str]]:
    """Groups (of two or more) among ``names`` that vLLM fuses: same parent, sibling leaf names."""
    groups: dict[tuple[str, frozenset[str]], list[str]] = {}
    for name in names:
        parent, _, leaf = name.rpartition(".")
        for siblings in FUSED_SIBLINGS:
            if leaf in siblings:
                groups.setdefault((parent, siblings), []).append(name)
    return [g for g in groups.values() if len(g) > 1]


def matches(name: str, module: nn.Module, target: str) -> bool:
    """compressed-tensors target matching: ``re:`` regex on the name, an exact name, or a class
    name anywhere in the module's MRO (``Linear`` matches ``nn.Linear``)."""
    if target.startswith("re:"):
        return re.match(target[3:], name) is not None
    return target == name or any(cls.__name__ == target for cls in type(module).__mro__)
