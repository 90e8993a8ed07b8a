"""The vocabulary of model-family tables.

A family table says, for one decoder block, which module produces the input of which linears.
Everything the library knows about an architecture is written in these terms (see ``tables.py``);
no code path looks at model classes. Paths are relative to one decoder block, dot-separated; a
``*`` matches exactly one path segment (an expert index, say).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Chunk:
    """Rows ``[index * n / count, (index + 1) * n / count)`` of a fused producer's output.

    Fused ``gate_up_proj`` linears (Phi-3, GLM) emit ``[gate; up]``; only the ``up`` half feeds
    ``down_proj`` linearly, so only those rows may absorb a smoothing scale.
    """

    index: int
    count: int


@dataclass(frozen=True)
class Group:
    """One smoothing group: a producer whose output is the whole input of ``consumers``.

    ``producer`` is a norm (LayerNorm, RMSNorm) or a linear. A linear producer is only listed
    where the fold is exact: the consumer's input is linear (or positively homogeneous) in the
    producer's output, as for ``v_proj -> o_proj``, ``up_proj -> down_proj`` in gated MLPs and
    ``fc1 -> fc2`` across ReLU.

    ``passive`` modules also read the producer's output but are not quantized (MoE routers): they
    absorb the scale so the function is unchanged, but their weights do not bound ``max|W_j|``.

    ``kv_heads``: the consumer reads attention heads built from the producer's KV heads (grouped-
    query attention), so one scale per KV channel is shared by every query head of that KV head.

    ``when``: config attributes that must hold for the group to exist (OPT's post-LN variant has no
    norm in front of q/k/v; ``fc1 -> fc2`` is exact only across ReLU).
    """

    name: str
    producer: str
    consumers: tuple[str, ...]
    passive: tuple[str, ...] = ()
    producer_rows: Chunk | None = None
    kv_heads: bool = False
    when: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Layout:
    """One possible shape of a decoder block; the first layout whose paths all exist is used.

    Families whose blocks differ (Falcon's three attention layouts, MoE models with dense layers)
    list one layout per shape, most specific first.
    """

    groups: tuple[Group, ...]
    description: str = ""


@dataclass(frozen=True)
class Experts:
    """Fused MoE experts (3-D ``gate_up_proj``/``down_proj`` parameters in transformers 5).

    They are unfolded into one ``nn.Linear`` per projection and expert, named as in the family's
    original checkpoints, so calibration, smoothing, quantization and export treat them like any
    other linear.
    """

    path: str
    gate: str = "gate_proj"
    up: str = "up_proj"
    down: str = "down_proj"


@dataclass(frozen=True)
class GatedMLP:
    """A gated MLP, ``down(act(gate(x)) * up(x))``, at ``path`` in each block.

    The INT8 runtime runs gate and up as one GEMM whose epilogue applies ``act(gate) * up``
    (``runtime/mlp.py``); ``act`` names the module's activation attribute, checked numerically
    against the activations the kernel implements before anything is replaced.
    """

    path: str = "mlp"
    gate: str = "gate_proj"
    up: str = "up_proj"
    down: str = "down_proj"
    act: str = "act_fn"


@dataclass(frozen=True)
class Family:
    """Everything the library needs to know about one architecture.

    ``layers``: candidate paths from the model root to the ``ModuleList`` of decoder blocks.
    ``norm_offset``: the norm multiplies by ``(offset + weight)``; Gemma's RMSNorm uses 1.
    ``bmm_inputs``: linears whose outputs are the attention BMM operands (q/k/v), for optional
    output quantization and their calibration statistics.
    ``keep_float``: linears inside blocks that stay in floating point (MoE routers and gates).
    ``gated_mlp``: where the block's gated MLP is, for the INT8 runtime's fused gate/up GEMM.
    ``disk_renames``: (regex on an in-memory name, replacement) pairs, applied in order, giving the
    name a tensor has in the family's checkpoints where transformers renames it on load (Mixtral's
    MoE block is ``mlp`` in memory, ``block_sparse_moe`` on disk, where vLLM expects it).
    ``fused_on_disk``: linears (block-relative paths) that checkpoints store already fused (one
    ``qkv_proj`` for q, k and v): vLLM expects one weight scale per logical shard of those.
    """

    name: str
    model_types: tuple[str, ...]
    layers: tuple[str, ...]
    layouts: tuple[Layout, ...]
    norm_offset: float = 0.0
    bmm_inputs: tuple[str, ...] = ()
    keep_float: tuple[str, ...] = ()
    experts: Experts | None = None
    gated_mlp: GatedMLP | None = None
    disk_renames: tuple[tuple[str, str], ...] = ()
    fused_on_disk: tuple[str, ...] = ()
    notes: str = ""
