"""Activation quantization kernel variants on the GPU: row block and warps, per shape.

``PYTHONPATH=src python scripts/bench_quant.py``: prints microseconds per call and GB/s (bf16 read
plus int8 write) for each variant, fastest first per shape.
"""

from __future__ import annotations

import torch

from smoothquant.bench.timing import cuda_time_ms
from smoothquant.kernels.triton_quant import quantize_rows

SHAPES = ((1, 11008), (16, 11008), (512, 4096), (512, 11008), (2048, 4096), (2048, 11008), (8192, 11008))
VARIANTS = [
    (None, 4),
    (None, 8),
    (None, 16),
    (2048, 4),
    (2048, 8),
    (4096, 4),
    (4096, 8),
    (8192, 8),
    (8192, 16),
    (16384, 8),
    (16384, 16),
    (16384, 32),
]

if __name__ == "__main__":
    for m, k in SHAPES:
        copies = max(1, min(8, 200_000_000 // (3 * m * k)))
        xs = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
        rows = []
        for block, warps in VARIANTS:
            if block and block > 4096 and block // 2 >= k:
                continue  # the same one-tile kernel as a narrower block
            fns = [lambda x=x, b=block, w=warps: quantize_rows(x, None, b, w) for x in xs]
            try:
                ms = cuda_time_ms(fns, reps=20)
            except Exception as e:  # a variant this Triton cannot build
                print(f"quant {m}x{k} block={block} warps={warps}: {type(e).__name__}")
                continue
            rows.append((ms, block, warps))
        for ms, block, warps in sorted(rows, key=lambda r: r[0])[:4]:
            print(
                f"quant {m}x{k} block={block} warps={warps}: {ms * 1e3:7.1f} us {3 * m * k / ms / 1e6:7.0f} GB/s"
            )
