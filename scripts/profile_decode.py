"""Where a decode step's GPU time goes: bf16 vs W8A8 on a random Llama-2-7B (CUDA).

``PYTHONPATH=src python scripts/profile_decode.py [batch] [context]``: prints the kernels that
take the most GPU time in one decode step of each model, and their total.
"""

from __future__ import annotations

import sys

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import StaticCache

from smoothquant.bench.model import random_llama_2_7b
from smoothquant.quantization import quantize
from smoothquant.runtime import convert


@torch.no_grad()
def profile_step(model, batch: int, ctx: int, label: str) -> None:
    cache = StaticCache(config=model.config, max_cache_len=ctx + 16)
    vocab = model.config.vocab_size
    model(
        input_ids=torch.randint(0, vocab, (batch, ctx), device="cuda"), past_key_values=cache, use_cache=True
    )
    tok = torch.randint(0, vocab, (batch, 1), device="cuda")
    for _ in range(2):
        model(input_ids=tok, past_key_values=cache, use_cache=True)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        model(input_ids=tok, past_key_values=cache, use_cache=True)
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.device_time_total for e in events)
    count = sum(e.count for e in events)
    print(f"== {label} b{batch}@{ctx}: {total / 1e3:.2f} ms GPU time in {count} kernels")
    for e in sorted(events, key=lambda e: -e.device_time_total)[:12]:
        print(f"  {e.device_time_total / 1e3:8.3f} ms {e.count:5d}x  {e.key[:90]}")


if __name__ == "__main__":
    batch = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    ctx = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
    base = random_llama_2_7b("cuda")
    profile_step(base, batch, ctx, "bf16")
    q = quantize(base, "w8a8", inplace=False)
    del base
    convert(q)
    profile_step(q, batch, ctx, "w8a8")
