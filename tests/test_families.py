"""Resolving family tables against module trees (toy trees, then the real tiny models)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

import smoothquant as sq
from smoothquant.errors import UnsupportedModelError
from smoothquant.families import (
    Chunk,
    Family,
    Group,
    Layout,
    UnfusedExperts,
    register_family,
    unregister_family,
)
from tiny_models import TINY_CONFIGS, tiny_batches, tiny_model


class Norm(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))


def _toy_model(blocks: list[nn.Module], **config) -> nn.Module:
    model = nn.Module()
    model.config = SimpleNamespace(model_type="toy", **config)
    model.layers = nn.ModuleList(blocks)
    return model


def _block(**children: nn.Module) -> nn.Module:
    block = nn.Module()
    for name, child in children.items():
        if "." in name:
            parent, _, leaf = name.partition(".")
            if not hasattr(block, parent):
                setattr(block, parent, nn.Module())
            setattr(getattr(block, parent), leaf, child)
        else:
            setattr(block, name, child)
    return block


@pytest.fixture
def toy_family():
    def register(*layouts: Layout, **kw) -> Family:
        family = Family("toy", ("toy",), ("layers",), layouts, **kw)
        register_family(family)
        return family

    yield register
    unregister_family("toy")


def test_first_matching_layout_per_block(toy_family) -> None:
    toy_family(
        Layout((Group("a", "ln_a", ("fc_a",)), Group("b", "ln_b", ("fc_b",))), "two norms"),
        Layout((Group("ab", "ln", ("fc_a", "fc_b")),), "one norm"),
    )
    two = _block(ln_a=Norm(4), ln_b=Norm(4), fc_a=nn.Linear(4, 3), fc_b=nn.Linear(4, 5))
    one = _block(ln=Norm(4), fc_a=nn.Linear(4, 3), fc_b=nn.Linear(4, 5))
    resolved = sq.resolve(_toy_model([two, one]))
    assert [g.id for g in resolved.groups] == ["layers.0.a", "layers.0.b", "layers.1.ab"]
    assert [layout.description for layout in resolved.layouts] == ["two norms", "one norm"]
    assert list(resolved.groups[2].consumers) == ["layers.1.fc_a", "layers.1.fc_b"]
    assert set(resolved.quantizable) == {"layers.0.fc_a", "layers.0.fc_b", "layers.1.fc_a", "layers.1.fc_b"}


def test_missing_paths_are_named(toy_family) -> None:
    toy_family(Layout((Group("a", "ln", ("fc", "gone")),), "only layout"))
    with pytest.raises(
        UnsupportedModelError, match=r"block layers.0.*matches no layout.*only layout: missing \['gone'\]"
    ):
        sq.resolve(_toy_model([_block(ln=Norm(4), fc=nn.Linear(4, 3))]))


def test_width_mismatch_is_a_table_error(toy_family) -> None:
    toy_family(Layout((Group("a", "ln", ("fc",)),)))
    with pytest.raises(
        UnsupportedModelError, match=r"reads 6 channels but its producer layers\.0\.ln gives 4"
    ):
        sq.resolve(_toy_model([_block(ln=Norm(4), fc=nn.Linear(6, 3))]))


def test_wildcards_bind_producer_and_consumer(toy_family) -> None:
    """A wildcard in the producer makes one group per match, reused in the consumers;
    a wildcard only in consumers gathers every match into one group."""
    toy_family(
        Layout(
            (
                Group("in", "ln", ("experts.*.up",), passive=("router",)),
                Group("out", "experts.*.up", ("experts.*.down",)),
            )
        ),
        keep_float=("router",),
    )
    experts = nn.ModuleList(_block(up=nn.Linear(4, 6), down=nn.Linear(6, 4)) for _ in range(3))
    model = _toy_model([_block(ln=Norm(4), router=nn.Linear(4, 3), experts=experts)])
    resolved = sq.resolve(model)
    ids = [g.id for g in resolved.groups]
    assert ids == ["layers.0.in", "layers.0.out.0", "layers.0.out.1", "layers.0.out.2"]
    assert list(resolved.groups[0].consumers) == [f"layers.0.experts.{i}.up" for i in range(3)]
    assert list(resolved.groups[0].passive) == ["layers.0.router"]
    assert list(resolved.groups[2].consumers) == ["layers.0.experts.1.down"]
    assert "layers.0.router" not in resolved.quantizable


def test_chunked_producer_and_config_predicates(toy_family) -> None:
    toy_family(
        Layout(
            (
                Group("in", "ln", ("gate_up",), when={"pre_norm": True}),
                Group("out", "gate_up", ("down",), producer_rows=Chunk(1, 2)),
            )
        )
    )
    block = _block(ln=Norm(4), gate_up=nn.Linear(4, 10), down=nn.Linear(5, 4))
    resolved = sq.resolve(_toy_model([block], pre_norm=False))
    assert [g.id for g in resolved.groups] == ["layers.0.out"]
    assert resolved.groups[0].rows == slice(5, 10) and resolved.groups[0].width == 5


def test_kv_head_channel_map() -> None:
    """o_proj channel h*d + i reads v channel (h // groups)*d + i."""
    model = tiny_model("llama")  # 4 query heads, 2 kv heads, head_dim 16
    group = next(g for g in sq.resolve(model).groups if g.name == "attn_out")
    assert (group.kv_groups, group.head_dim, group.width) == (2, 16, 32)
    index = group.channel_index()
    assert index.shape == (64,)
    assert torch.equal(index[:16], torch.arange(16)) and torch.equal(index[16:32], torch.arange(16))
    assert torch.equal(index[32:48], torch.arange(16, 32)) and torch.equal(index[48:], torch.arange(16, 32))


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe", "qwen3_moe"])
def test_unfolded_experts_compute_the_same_function(name: str) -> None:
    model = tiny_model(name)
    ids = tiny_batches()
    with torch.no_grad():
        ref = model(ids).logits
    sq.prepare_model(model)
    experts = model.model.layers[0].mlp.experts
    assert isinstance(experts, UnfusedExperts)
    names = {"mixtral": "w1", "qwen2_moe": "gate_proj", "qwen3_moe": "gate_proj"}[name]
    assert isinstance(getattr(experts[0], names), nn.Linear)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref, rtol=1e-12, atol=1e-12)
    sq.prepare_model(model)  # idempotent
    assert model.model.layers[0].mlp.experts is experts


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_every_block_linear_is_quantizable_or_kept_float(name: str) -> None:
    """The tables cover every linear of each block: nothing is silently left in float."""
    model = tiny_model(name)
    sq.prepare_model(model)
    resolved = sq.resolve(model)
    keep = resolved.family.keep_float
    for block in resolved.blocks:
        for rel, module in model.get_submodule(block).named_modules():
            if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
                assert f"{block}.{rel}" in resolved.quantizable or rel in keep, (name, rel)


def test_cli_lists_families_and_schemes(capsys) -> None:
    from smoothquant.cli import main

    assert main(["families"]) == 0
    out = capsys.readouterr().out
    assert "mixtral" in out and "gemma3_text" in out
    assert main(["schemes"]) == 0
    assert "outlier-suppression" in capsys.readouterr().out


def test_disk_names_and_fused_layers_come_from_the_family_tables() -> None:
    """Renames and fused-on-disk linears are table data: GPT-2's fused c_attn is found like
    Phi-3's qkv_proj, and per-tensor weights of such layers get the vLLM caveat."""
    from smoothquant.export import names
    from smoothquant.export.save import vllm_caveats
    from smoothquant.quantization import get_scheme

    assert names.to_disk("model.layers.0.mlp.experts.3.w1.weight", "mixtral") == (
        "model.layers.0.block_sparse_moe.experts.3.w1.weight"
    )
    assert (
        names.to_disk("model.layers.0.mlp.gate.weight", "mixtral")
        == "model.layers.0.block_sparse_moe.gate.weight"
    )
    assert (
        names.to_disk("model.layers.0.mlp.experts.3.w1.weight", "llama")
        == "model.layers.0.mlp.experts.3.w1.weight"
    )
    gpt2 = ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_fc"]
    assert names.fused_on_disk(gpt2, "gpt2") == ["transformer.h.0.attn.c_attn"]
    phi3 = [
        "model.layers.1.self_attn.qkv_proj",
        "model.layers.1.self_attn.o_proj",
        "model.layers.1.mlp.gate_up_proj",
    ]
    assert names.fused_on_disk(phi3, "phi3") == [phi3[0], phi3[2]]
    assert names.fused_on_disk(phi3, "llama") == [] and names.fused_on_disk(phi3, "nope") == []
    caveats = vllm_caveats(get_scheme("O3"), gpt2, "gpt2")
    assert len(caveats) == 1 and caveats[0].startswith("transformer.h.0.attn.c_attn and 0 more")
    assert vllm_caveats(get_scheme("w8a8"), gpt2, "gpt2") == []  # per-channel weights: one scale per row
