"""Tiny random models of every supported family, built from configs (no downloads).

Two decoder layers, hidden size 64, grouped-query attention where the family has it. Variants
cover every layout a family table lists (Falcon's three attention layouts, OPT post-LN, dense
layers of MoE models).
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

H = 64
VOCAB = 128
_BASE = dict(
    hidden_size=H, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=VOCAB
)
_GQA = dict(_BASE, num_key_value_heads=2)

# name -> (model_type, config kwargs)
TINY_CONFIGS: dict[str, tuple[str, dict]] = {
    "opt": (
        "opt",
        dict(
            hidden_size=H,
            num_hidden_layers=2,
            num_attention_heads=4,
            ffn_dim=128,
            vocab_size=VOCAB,
            word_embed_proj_dim=H,
            max_position_embeddings=256,
        ),
    ),
    "opt-postln": (
        "opt",
        dict(
            hidden_size=H,
            num_hidden_layers=2,
            num_attention_heads=4,
            ffn_dim=128,
            vocab_size=VOCAB,
            word_embed_proj_dim=H,
            max_position_embeddings=256,
            do_layer_norm_before=False,
        ),
    ),
    "bloom": ("bloom", dict(hidden_size=H, n_layer=2, n_head=4, vocab_size=VOCAB)),
    "falcon-7b": (
        "falcon",
        dict(hidden_size=H, num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB),
    ),
    "falcon-40b": (
        "falcon",
        dict(
            hidden_size=H,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=VOCAB,
            new_decoder_architecture=True,
            num_kv_heads=2,
        ),
    ),
    "falcon-rw": (
        "falcon",
        dict(
            hidden_size=H,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=VOCAB,
            parallel_attn=False,
            multi_query=False,
        ),
    ),
    "llama": ("llama", _GQA),
    "mistral": ("mistral", _GQA),
    "mixtral": ("mixtral", dict(_GQA, num_local_experts=4, num_experts_per_tok=2)),
    "qwen2": ("qwen2", _GQA),
    "qwen3": ("qwen3", dict(_GQA, head_dim=16)),
    "qwen2_moe": (
        "qwen2_moe",
        dict(
            _GQA,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=64,
            mlp_only_layers=[1],
        ),
    ),
    "qwen3_moe": (
        "qwen3_moe",
        dict(_GQA, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, head_dim=16),
    ),
    "gemma": ("gemma", dict(_GQA, head_dim=16)),
    "gemma2": ("gemma2", dict(_GQA, head_dim=16)),
    "gemma3": ("gemma3_text", dict(_GQA, head_dim=16)),
    "phi3": ("phi3", dict(_GQA, pad_token_id=0)),
    "gpt2": ("gpt2", dict(n_embd=H, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=256)),
    "gpt_neox": ("gpt_neox", _BASE),
    "glm": ("glm", dict(_GQA, head_dim=16, pad_token_id=0)),
}


def tiny_model(name: str, dtype: torch.dtype = torch.float64, seed: int = 0, perturb: bool = True):
    """A tiny random causal LM in eval mode.

    ``perturb`` randomises norm weights and biases (random init leaves them at 1/0, which would
    hide a fold into the wrong channel or a missing bias update).
    """
    model_type, kwargs = TINY_CONFIGS[name]
    config = AutoConfig.for_model(model_type, **kwargs)
    torch.manual_seed(seed)
    # eager experts: grouped_mm has no float64 kernel (prepare_model unfolds them anyway)
    model = AutoModelForCausalLM.from_config(config, experts_implementation="eager").to(dtype).eval()
    if perturb:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for module in model.modules():
                w = getattr(module, "weight", None)
                b = getattr(module, "bias", None)
                if isinstance(w, torch.Tensor) and w.dim() == 1:  # a norm
                    w.add_(0.5 * torch.randn(w.shape, generator=g, dtype=w.dtype))
                    if isinstance(b, torch.Tensor):
                        b.copy_(0.1 * torch.randn(b.shape, generator=g, dtype=b.dtype))
                elif isinstance(b, torch.Tensor) and b.dim() == 1:  # a linear's bias
                    b.copy_(0.02 * torch.randn(b.shape, generator=g, dtype=b.dtype))
    return model


def tiny_batches(n: int = 4, seq_len: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n, seq_len), generator=g)


def plant_outliers(model, factor: float = 30.0, channel: int = 3) -> None:
    """Give every smoothing group's producer one outlier output channel (x ``factor``).

    Real LLMs have a few activation channels orders of magnitude above the rest; random init
    has none, so without this a test could not tell whether smoothing helps.
    """
    from smoothquant.families import prepare_model, resolve
    from smoothquant.nn_utils import weight_oi

    prepare_model(model)
    with torch.no_grad():
        for group in resolve(model).groups:
            p = group.producer
            if group.is_linear_pair:
                rows = group.rows or slice(None)
                weight_oi(p)[rows][channel].mul_(factor)
            else:
                off = group.norm_offset
                p.weight[channel] = (p.weight[channel] + off) * factor - off
