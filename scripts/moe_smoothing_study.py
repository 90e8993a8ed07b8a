"""How should the MoE block's input be smoothed? Three choices, measured on a random Mixtral.

- shared (ours): one scale for every expert's w1/w3, max|W| over the experts; the router absorbs
  the scale but, staying in floating point, does not bound it.
- shared+router (the reference code): the router's weights count in max|W| too.
- skip (llm-compressor): the MoE input is not smoothed at all.

No trained MoE model installs offline here, so this uses a random Mixtral with planted outlier
channels in its norms (real LLMs have such channels). Prints relative logit error and mean KL of
next-token distributions against the floating-point model, for O1, O3 and w8a8.

    python scripts/moe_smoothing_study.py
"""

from __future__ import annotations

import dataclasses
import sys

import torch
from transformers import AutoConfig, AutoModelForCausalLM

import smoothquant as sq
from smoothquant.families import register_family, unregister_family
from smoothquant.families.tables import MIXTRAL


def build(seed: int = 0) -> torch.nn.Module:
    config = AutoConfig.for_model(
        "mixtral",
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        num_local_experts=8,
        num_experts_per_tok=2,
        vocab_size=512,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, experts_implementation="eager").eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.model.layers:
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight.mul_(1 + 0.3 * torch.randn(256, generator=g).abs())
                norm.weight[torch.randint(0, 256, (3,), generator=g)] *= 40  # systematic outliers
    return model


def variant(name: str):
    if name == "shared":
        return None
    layout = MIXTRAL.layouts[0]
    groups = []
    for group in layout.groups:
        if group.name == "mlp_in" and name == "shared+router":
            group = dataclasses.replace(group, consumers=(*group.consumers, "mlp.gate"), passive=())
        groups.append(group)
    return dataclasses.replace(
        MIXTRAL, name="mixtral-study", layouts=(dataclasses.replace(layout, groups=tuple(groups)),)
    )


def evaluate(choice: str, scheme: str, calib, held_out) -> tuple[float, float]:
    model = build()
    with torch.no_grad():
        ref = model(held_out).logits.float()
    family = variant(choice)
    if family is not None:
        register_family(family)
    try:
        alpha = {"*.mlp_in": None, "*": 0.5} if choice == "skip" else 0.5
        sq.quantize_model(model, calib, scheme, alpha=alpha, progress=False)
    finally:
        if family is not None:
            unregister_family(family.name)
    with torch.no_grad():
        out = model(held_out).logits.float()
    rel = ((out - ref).norm() / ref.norm()).item()
    kl = torch.nn.functional.kl_div(
        out.log_softmax(-1), ref.log_softmax(-1), log_target=True, reduction="none"
    )
    return rel, kl.sum(-1).mean().item()


def main() -> int:
    g = torch.Generator().manual_seed(1)
    calib = torch.randint(0, 512, (16, 64), generator=g)
    held_out = torch.randint(0, 512, (8, 64), generator=g)
    print(f"{'choice':15s} {'scheme':6s} {'rel. logit err':>15s} {'mean KL':>10s}")
    for scheme in ("O1", "O3", "w8a8"):
        for choice in ("shared", "shared+router", "skip"):
            rel, kl = evaluate(choice, scheme, calib, held_out)
            print(f"{choice:15s} {scheme:6s} {rel:15.4f} {kl:10.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
