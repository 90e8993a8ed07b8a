"""One table per supported model family.

To add a family: write a :class:`Family` entry here (which norm or linear feeds which linears in a
decoder block, relative paths as ``model.named_modules()`` prints them), register it in
``FAMILIES``, and add a tiny config for it in ``tests/tiny_models.py``; the generic tests then check
that smoothing leaves its logits unchanged.

Linear -> linear groups (``attn_out``, ``mlp_out``, ``expert_out``...) are listed wherever the fold
is exact; ``smooth`` skips them unless asked (the paper smooths only norm -> linear).
"""

from __future__ import annotations

from smoothquant.families.spec import Chunk, Experts, Family, GatedMLP, Group, Layout

QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")

ATTN_IN = Group("attn_in", "input_layernorm", QKV)
MLP_IN = Group("mlp_in", "post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"))
ATTN_OUT = Group("attn_out", "self_attn.v_proj", ("self_attn.o_proj",), kv_heads=True)
MLP_OUT = Group("mlp_out", "mlp.up_proj", ("mlp.down_proj",))

LLAMA_BLOCK = Layout((ATTN_IN, MLP_IN, ATTN_OUT, MLP_OUT), "pre-norm attention + gated MLP")


def _llama_like(name: str, model_types: tuple[str, ...], notes: str = "") -> Family:
    return Family(
        name=name,
        model_types=model_types,
        layers=("model.layers",),
        layouts=(LLAMA_BLOCK,),
        bmm_inputs=QKV,
        gated_mlp=GatedMLP(),
        notes=notes,
    )


LLAMA = _llama_like("llama", ("llama",), "Llama 1/2/3 (and every checkpoint using LlamaForCausalLM)")
MISTRAL = _llama_like("mistral", ("mistral",))
QWEN2 = _llama_like("qwen2", ("qwen2",), "q/k/v carry biases; the fold keeps them exact")
QWEN3 = _llama_like("qwen3", ("qwen3",), "q_norm/k_norm act after q/k_proj and are left alone")

GEMMA = Family(
    name="gemma",
    model_types=("gemma",),
    layers=("model.layers",),
    layouts=(LLAMA_BLOCK,),
    norm_offset=1.0,
    bmm_inputs=QKV,
    gated_mlp=GatedMLP(),
    notes="RMSNorm scale is (1 + w): folded as w' = (1 + w) / s - 1",
)

GEMMA2_BLOCK = Layout(
    (
        ATTN_IN,
        Group("mlp_in", "pre_feedforward_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
        ATTN_OUT,
        MLP_OUT,
    ),
    "sandwich norms: pre_feedforward_layernorm feeds the MLP",
)
GEMMA2 = Family(
    name="gemma2",
    model_types=("gemma2",),
    layers=("model.layers",),
    layouts=(GEMMA2_BLOCK,),
    norm_offset=1.0,
    bmm_inputs=QKV,
    gated_mlp=GatedMLP(),
)
GEMMA3 = Family(
    name="gemma3",
    model_types=("gemma3_text",),
    layers=("model.layers",),
    layouts=(GEMMA2_BLOCK,),
    norm_offset=1.0,
    bmm_inputs=QKV,
    gated_mlp=GatedMLP(),
    notes="text model (Gemma3ForCausalLM); q_norm/k_norm are left alone",
)

_FUSED_MLP = (
    Group("mlp_in", "post_attention_layernorm", ("mlp.gate_up_proj",)),
    Group("mlp_out", "mlp.gate_up_proj", ("mlp.down_proj",), producer_rows=Chunk(1, 2)),
)
PHI3 = Family(
    name="phi3",
    model_types=("phi3",),
    layers=("model.layers",),
    layouts=(Layout((Group("attn_in", "input_layernorm", ("self_attn.qkv_proj",)), *_FUSED_MLP)),),
    bmm_inputs=("self_attn.qkv_proj",),
    fused_on_disk=("self_attn.qkv_proj", "mlp.gate_up_proj"),
    notes="fused qkv_proj: v_proj -> o_proj smoothing is not offered",
)
GLM = Family(
    name="glm",
    model_types=("glm",),
    layers=("model.layers",),
    layouts=(Layout((ATTN_IN, ATTN_OUT, *_FUSED_MLP)),),
    bmm_inputs=QKV,
    fused_on_disk=("mlp.gate_up_proj",),
    notes="transformers' Glm (GLM-4 architecture); the MLP's gate_up_proj is fused",
)

OPT = Family(
    name="opt",
    model_types=("opt",),
    layers=("model.decoder.layers",),
    layouts=(
        Layout(
            (
                Group("attn_in", "self_attn_layer_norm", QKV, when={"do_layer_norm_before": True}),
                Group("mlp_in", "final_layer_norm", ("fc1",), when={"do_layer_norm_before": True}),
                Group("attn_out", "self_attn.v_proj", ("self_attn.out_proj",)),
                Group("mlp_out", "fc1", ("fc2",), when={"activation_function": "relu"}),
            )
        ),
    ),
    bmm_inputs=QKV,
    notes="fc1 -> fc2 across ReLU (positively homogeneous); OPT-350m (post-LN) has no norm -> q/k/v",
)

BLOOM = Family(
    name="bloom",
    model_types=("bloom",),
    layers=("transformer.h",),
    layouts=(
        Layout(
            (
                Group("attn_in", "input_layernorm", ("self_attention.query_key_value",)),
                Group("mlp_in", "post_attention_layernorm", ("mlp.dense_h_to_4h",)),
            )
        ),
    ),
    bmm_inputs=("self_attention.query_key_value",),
    fused_on_disk=("self_attention.query_key_value",),
    notes="GELU MLP and head-interleaved fused qkv: norm -> linear only",
)

_FALCON_QKV = "self_attention.query_key_value"
_FALCON_FC1 = "mlp.dense_h_to_4h"
FALCON = Family(
    name="falcon",
    model_types=("falcon",),
    layers=("transformer.h",),
    layouts=(
        Layout(
            (
                Group("attn_in", "ln_attn", (_FALCON_QKV,)),
                Group("mlp_in", "ln_mlp", (_FALCON_FC1,)),
            ),
            "new decoder architecture (40B/180B): one norm per parallel branch",
        ),
        Layout(
            (
                Group("attn_in", "input_layernorm", (_FALCON_QKV,)),
                Group("mlp_in", "post_attention_layernorm", (_FALCON_FC1,)),
            ),
            "sequential attention and MLP (rw-1b)",
        ),
        Layout(
            (Group("attn_mlp_in", "input_layernorm", (_FALCON_QKV, _FALCON_FC1)),),
            "parallel attention (7B): one norm feeds both branches",
        ),
    ),
    bmm_inputs=(_FALCON_QKV,),
    fused_on_disk=(_FALCON_QKV,),
)

GPT2 = Family(
    name="gpt2",
    model_types=("gpt2",),
    layers=("transformer.h",),
    layouts=(Layout((Group("attn_in", "ln_1", ("attn.c_attn",)), Group("mlp_in", "ln_2", ("mlp.c_fc",)))),),
    bmm_inputs=("attn.c_attn",),
    fused_on_disk=("attn.c_attn",),
    notes="Conv1D linears (weight stored [in, out])",
)

GPT_NEOX = Family(
    name="gpt_neox",
    model_types=("gpt_neox",),
    layers=("gpt_neox.layers",),
    layouts=(
        Layout(
            (
                Group("attn_in", "input_layernorm", ("attention.query_key_value",)),
                Group("mlp_in", "post_attention_layernorm", ("mlp.dense_h_to_4h",)),
            )
        ),
    ),
    bmm_inputs=("attention.query_key_value",),
    fused_on_disk=("attention.query_key_value",),
)

# MoE: the router ("mlp.gate") reads the same normed input as the experts. It absorbs the scale
# (passive) but stays in floating point, as vLLM keeps it. One scale is shared by all experts of a
# layer, which see the same input distribution; docs/moe.md records the measurement behind this.
MIXTRAL = Family(
    name="mixtral",
    model_types=("mixtral",),
    layers=("model.layers",),
    layouts=(
        Layout(
            (
                ATTN_IN,
                Group(
                    "mlp_in",
                    "post_attention_layernorm",
                    ("mlp.experts.*.w1", "mlp.experts.*.w3"),
                    passive=("mlp.gate",),
                ),
                ATTN_OUT,
                Group("expert_out", "mlp.experts.*.w3", ("mlp.experts.*.w2",)),
            )
        ),
    ),
    bmm_inputs=QKV,
    keep_float=("mlp.gate",),
    experts=Experts("mlp.experts", gate="w1", up="w3", down="w2"),
    disk_renames=((r"\.mlp\.(experts|gate)(\.|$)", r".block_sparse_moe.\1\2"),),
)

_MOE_EXPERTS_IN = ("mlp.experts.*.gate_proj", "mlp.experts.*.up_proj")
_EXPERT_OUT = Group("expert_out", "mlp.experts.*.up_proj", ("mlp.experts.*.down_proj",))

QWEN2_MOE = Family(
    name="qwen2_moe",
    model_types=("qwen2_moe",),
    layers=("model.layers",),
    layouts=(
        Layout(
            (
                ATTN_IN,
                Group(
                    "mlp_in",
                    "post_attention_layernorm",
                    (*_MOE_EXPERTS_IN, "mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj"),
                    passive=("mlp.gate", "mlp.shared_expert_gate"),
                ),
                ATTN_OUT,
                _EXPERT_OUT,
                Group("shared_out", "mlp.shared_expert.up_proj", ("mlp.shared_expert.down_proj",)),
            ),
            "sparse MoE block with a shared expert",
        ),
        Layout(LLAMA_BLOCK.groups, "dense MLP layer (mlp_only_layers)"),
    ),
    bmm_inputs=QKV,
    keep_float=("mlp.gate", "mlp.shared_expert_gate"),
    experts=Experts("mlp.experts"),
)

QWEN3_MOE = Family(
    name="qwen3_moe",
    model_types=("qwen3_moe",),
    layers=("model.layers",),
    layouts=(
        Layout(
            (
                ATTN_IN,
                Group("mlp_in", "post_attention_layernorm", _MOE_EXPERTS_IN, passive=("mlp.gate",)),
                ATTN_OUT,
                _EXPERT_OUT,
            ),
            "sparse MoE block",
        ),
        Layout(LLAMA_BLOCK.groups, "dense MLP layer (mlp_only_layers)"),
    ),
    bmm_inputs=QKV,
    keep_float=("mlp.gate",),
    experts=Experts("mlp.experts"),
)

FAMILIES: tuple[Family, ...] = (
    OPT,
    BLOOM,
    FALCON,
    LLAMA,
    MISTRAL,
    MIXTRAL,
    QWEN2,
    QWEN3,
    QWEN2_MOE,
    QWEN3_MOE,
    GEMMA,
    GEMMA2,
    GEMMA3,
    PHI3,
    GPT2,
    GPT_NEOX,
    GLM,
)
