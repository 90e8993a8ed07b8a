"""Write a random Llama-style checkpoint to disk, shard by shard, in bounded memory.

Speed and memory measurements need no trained weights, only the right shapes: this writes
config.json, safetensors shards and the shard index exactly as transformers' save_pretrained
does, generating one tensor at a time (peak memory ~ one shard), so a ~13 GB 7B model can be made
on a machine that could not hold it twice. Norms get a few planted outlier channels so that
smoothing has something to do.

    python scripts/make_random_checkpoint.py /tmp/llama7b                 # Llama-2-7B shapes, bf16
    python scripts/make_random_checkpoint.py /tmp/l8 --layers 8 --shard-gb 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from smoothquant.bench.model import LLAMA_2_7B

LLAMA2_7B = dict(
    LLAMA_2_7B,
    architectures=["LlamaForCausalLM"],
    model_type="llama",
    rope_theta=10000.0,
    hidden_act="silu",
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
)


def tensor_specs(config: dict) -> list[tuple[str, tuple[int, ...]]]:
    """Every parameter of a LlamaForCausalLM with this config, in save order."""
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = h // config["num_attention_heads"] * config["num_key_value_heads"]
    specs = [("model.embed_tokens.weight", (v, h))]
    for n in range(config["num_hidden_layers"]):
        p = f"model.layers.{n}"
        specs += [
            (f"{p}.input_layernorm.weight", (h,)),
            (f"{p}.self_attn.q_proj.weight", (h, h)),
            (f"{p}.self_attn.k_proj.weight", (kv, h)),
            (f"{p}.self_attn.v_proj.weight", (kv, h)),
            (f"{p}.self_attn.o_proj.weight", (h, h)),
            (f"{p}.post_attention_layernorm.weight", (h,)),
            (f"{p}.mlp.gate_proj.weight", (i, h)),
            (f"{p}.mlp.up_proj.weight", (i, h)),
            (f"{p}.mlp.down_proj.weight", (h, i)),
        ]
    return [*specs, ("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]


def make_tensor(name: str, shape: tuple[int, ...], seed: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if len(shape) == 1:  # a norm: around 1, with three outlier channels (x20)
        t = 1 + 0.1 * torch.randn(shape, generator=g)
        t[torch.randint(0, shape[0], (3,), generator=g)] *= 20
        return t.to(dtype)
    return (0.02 * torch.randn(shape, generator=g)).to(dtype)


def write_checkpoint(out: Path, config: dict, dtype: torch.dtype, shard_bytes: int, seed: int = 0) -> int:
    out.mkdir(parents=True, exist_ok=True)
    specs = tensor_specs(config)
    shards: list[list[tuple[int, str, tuple[int, ...]]]] = [[]]
    size = 0
    for index, (name, shape) in enumerate(specs):
        nbytes = torch.Size(shape).numel() * torch.tensor([], dtype=dtype).element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((index, name, shape))
        size += nbytes
    weight_map, total = {}, 0
    for k, shard in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {name: make_tensor(name, shape, seed + index, dtype) for index, name, shape in shard}
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        save_file(tensors, str(out / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file))
        print(f"wrote {file} ({len(tensors)} tensors)", flush=True)
        del tensors
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    dtype_name = str(dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps({**config, "torch_dtype": dtype_name}, indent=2))
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--layers", type=int, default=LLAMA2_7B["num_hidden_layers"])
    p.add_argument("--hidden", type=int, default=LLAMA2_7B["hidden_size"])
    p.add_argument("--intermediate", type=int, default=LLAMA2_7B["intermediate_size"])
    p.add_argument("--heads", type=int, default=LLAMA2_7B["num_attention_heads"])
    p.add_argument("--vocab", type=int, default=LLAMA2_7B["vocab_size"])
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    p.add_argument("--shard-gb", type=float, default=2.0)
    args = p.parse_args(argv)
    config = dict(
        LLAMA2_7B,
        num_hidden_layers=args.layers,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        vocab_size=args.vocab,
    )
    total = write_checkpoint(args.out, config, getattr(torch, args.dtype), int(args.shard_gb * 2**30))
    print(f"{args.out}: {total / 2**30:.2f} GiB of weights")
    return 0


if __name__ == "__main__":
    sys.exit(main())
