"""One device call of exploration for issue 4's open targets (small-M and 512-row GEMMs, wide-row
quantization, where prefill 1x512 spends its time). Prints tables; writes JSON to $OUT.

``PYTHONPATH=src python scripts/gpu_explore.py [small] [m512] [quant] [profile]``
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict

import torch

from smoothquant.bench.timing import cuda_time_ms
from smoothquant.kernels import triton_quant
from smoothquant.kernels.packing import unpack
from smoothquant.kernels.triton_gemm import GemmConfig as C
from smoothquant.kernels.triton_gemm import choose_config, int8_gemm

OUT = os.environ.get("OUT", "/tmp/out")
SMEM = 227 * 1024
SHAPES = {  # (K, N)
    "7b qkvo": (4096, 4096),
    "7b gate/up": (4096, 11008),
    "7b down": (11008, 4096),
    "13b qkvo": (5120, 5120),
    "13b gate/up": (5120, 13824),
    "13b down": (13824, 5120),
}
SMALL = [
    C(16, 32, 256, 4, 6),
    C(16, 32, 512, 4, 6),
    C(16, 32, 512, 4, 8),
    C(16, 32, 1024, 4, 3),
    C(16, 32, 1024, 4, 4),
    C(16, 16, 1024, 4, 4),
    C(16, 16, 1024, 4, 6),
    C(16, 16, 512, 4, 8),
    C(16, 64, 512, 4, 4),
    C(16, 32, 256, 4, 10),
    C(16, 32, 1024, 8, 4),
    C(16, 32, 512, 4, 6, split_k=2),
    C(16, 16, 512, 2, 8),
]
M512 = [
    C(64, 256, 128, 4, 4, persistent=True),
    C(128, 256, 128, 8, 4, split_k=2),
    C(128, 256, 64, 8, 6, persistent=True, subtile=True),
    C(64, 256, 64, 4, 8, persistent=True),
    C(128, 128, 64, 4, 8, persistent=True),
    C(128, 128, 128, 8, 5, persistent=True),
    C(64, 128, 256, 4, 4, persistent=True),
    C(64, 256, 128, 4, 4, group_m=16, persistent=True),
    C(64, 256, 128, 4, 4, group_m=4, persistent=True),
    C(256, 128, 64, 8, 6, persistent=True),
    C(128, 256, 128, 8, 4, persistent=True, subtile=True),
]


def fits(c: C) -> bool:
    return (c.block_m + c.block_n) * c.block_k * c.num_stages <= SMEM


def time_gemm_table(ms: list[int], configs: list[C], shapes: dict, tag: str) -> list[dict]:
    dev = torch.device("cuda")
    rows = []
    for name, (k, n) in shapes.items():
        for m in ms:
            sets = []
            for _ in range(4):  # rotate inputs: keep small problems out of L2
                xa = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
                w = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
                q = torch.randint(-127, 128, (m, k), device=dev, dtype=torch.int8)
                qw = torch.randint(-127, 128, (n, k), device=dev, dtype=torch.int8)
                sa = torch.rand(m, device=dev) + 0.5
                sw = torch.rand(n, device=dev) + 0.5
                sets.append((xa, w, q, qw, sa, sw))
            row = {"shape": name, "m": m, "k": k, "n": n, "ms": {}}
            row["ms"]["bf16"] = cuda_time_ms([lambda s=s: s[0] @ s[1].t() for s in sets], reps=30)
            default = choose_config(m, n)
            base = None
            for cfg in [default, *configs]:
                if not fits(cfg) or str(cfg) in row["ms"]:
                    continue
                try:
                    out = int8_gemm(sets[0][2], sets[0][4], sets[0][3], sets[0][5], None, torch.bfloat16, cfg)
                    if base is None:
                        base = out
                    elif not torch.equal(out, base):
                        row["ms"][str(cfg)] = float("nan")
                        continue
                    row["ms"][str(cfg)] = cuda_time_ms(
                        [
                            lambda s=s, c=cfg: int8_gemm(s[2], s[4], s[3], s[5], None, torch.bfloat16, c)
                            for s in sets
                        ],
                        reps=30,
                    )
                except Exception as e:  # a config this Triton cannot build: note it, go on
                    row["ms"][str(cfg)] = f"{type(e).__name__}"
            row["default"] = str(default)
            rows.append(row)
            timed = {c: t for c, t in row["ms"].items() if isinstance(t, float) and c != "bf16" and t == t}
            best = min(timed, key=timed.get)
            bf = row["ms"]["bf16"]
            print(
                f"{tag:6s} {name:12s} M={m:5d} bf16 {bf * 1e3:7.1f} us  default {timed[str(default)] * 1e3:7.1f} us "
                f"({bf / timed[str(default)]:.2f}x)  best {timed[best] * 1e3:7.1f} us ({bf / timed[best]:.2f}x) {best}",
                flush=True,
            )
    return rows


def quant_table() -> list[dict]:
    dev = torch.device("cuda")
    rows = []
    for m, k in [
        (1, 4096),
        (16, 11008),
        (512, 4096),
        (512, 11008),
        (2048, 11008),
        (8192, 4096),
        (8192, 11008),
    ]:
        xs = [torch.randn(m, k, device=dev, dtype=torch.bfloat16) for _ in range(3)]
        ref = triton_quant.quantize_rows(xs[0])
        row = {"m": m, "k": k, "us": {}}
        for block, warps in [
            (None, None),
            (2048, 4),
            (4096, 4),
            (4096, 8),
            (8192, 8),
            (16384, 8),
            (16384, 16),
        ]:
            if block is not None and block < k // 8:
                continue
            got = triton_quant.quantize_rows(xs[0], block_k=block, num_warps=warps)
            ok = torch.equal(unpack(got, k)[0], unpack(ref, k)[0])
            t = cuda_time_ms(
                [
                    lambda x=x, b=block, w=warps: triton_quant.quantize_rows(x, block_k=b, num_warps=w)
                    for x in xs
                ],
                reps=30,
            )
            row["us"][f"{block}/{warps}"] = t * 1e3 if ok else float("nan")
        rows.append(row)
        gbs = m * k * 3 / (row["us"]["None/None"] * 1e-6) / 1e9
        print(f"quant {m:5d}x{k:5d} default {row['us']['None/None']:6.1f} us ({gbs:5.0f} GB/s) "
              + " ".join(f"{c}:{v:.1f}" for c, v in row["us"].items()), flush=True)  # fmt: skip
    return rows


def profile_prefill() -> dict:
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModelForCausalLM, LlamaConfig

    from smoothquant.bench.model import LLAMA_2_7B
    from smoothquant.quantization import quantize
    from smoothquant.runtime import convert

    layers = 4
    with torch.device("cuda"):
        base = AutoModelForCausalLM.from_config(
            LlamaConfig(**{**LLAMA_2_7B, "num_hidden_layers": layers}), dtype=torch.bfloat16
        ).eval()
    q = quantize(base, "w8a8", None, inplace=False)
    convert(q, fuse_siblings=True)
    result = {}
    for label, model in (("bf16", base), ("w8a8", q)):
        for b, s in ((1, 512), (4, 2048)):
            ids = torch.randint(0, 32000, (b, s), device="cuda")
            with torch.no_grad():
                fn = lambda model=model, ids=ids: model(input_ids=ids, use_cache=False, logits_to_keep=1)  # noqa: E731
                total = cuda_time_ms([fn], reps=10)
                for _ in range(2):
                    fn()
                torch.cuda.synchronize()
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(5):
                        fn()
                    torch.cuda.synchronize()
            per = defaultdict(float)
            for ev in prof.key_averages():
                if ev.device_type.name == "CUDA" or getattr(ev, "self_device_time_total", 0):
                    per[ev.key[:70]] += ev.self_device_time_total / 5 / layers  # us per layer
            key = f"{label} {b}x{s}"
            result[key] = {"graph_ms_per_layer": total / layers, "kernels_us_per_layer": dict(per)}
            print(f"\n== {key}: {total / layers * 1e3:.1f} us per layer (graph; embedding + head included)")
            for name, us in sorted(per.items(), key=lambda kv: -kv[1])[:14]:
                print(f"   {us:8.1f} us  {name}")
    return result


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    parts = sys.argv[1:] or ["small", "m512", "quant", "profile"]
    out = {}
    if "profile" in parts:
        out["profile"] = profile_prefill()
    if "quant" in parts:
        out["quant"] = quant_table()
    if "small" in parts:
        out["small"] = time_gemm_table([1, 16], SMALL, SHAPES, "small")
    if "m512" in parts:
        shapes = {**SHAPES, "7b qkv": (4096, 12288), "7b gate+up": (4096, 22016)}
        out["m512"] = time_gemm_table([512], M512, shapes, "m512")
    with open(os.path.join(OUT, "explore.json"), "w") as f:
        json.dump(out, f, indent=1, default=str)


if __name__ == "__main__":
    main()
