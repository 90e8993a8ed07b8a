"""A/B on one O3 model: the gated GEMM writing INT8 rows for the down projection, or bf16 rows
quantized by the down projection (INT8_OUT_MIN_ROWS huge), same process, alternating."""

import torch

from smoothquant.bench.model import measure, random_llama_2_7b
from smoothquant.calibration import calibrate
from smoothquant.quantization import quantize
from smoothquant.runtime import convert, mlp

base = random_llama_2_7b("cuda")
ids = torch.randint(0, 32000, (2, 128), device="cuda")
stats = calibrate(base, ids)
q = quantize(base, "O3", stats, inplace=True)
convert(q)
for rep in range(2):
    for label, rows in (
        (("int8-out", 1), ("bf16-out", 10**9)) if rep == 0 else (("bf16-out", 10**9), ("int8-out", 1))
    ):
        mlp.INT8_OUT_MIN_ROWS = rows
        r = measure(q, label, [(1, 512), (1, 2048), (4, 2048)], [(1, 1024), (16, 1024)], reps=10)
        print(
            label,
            {k: round(v, 2) for k, v in r.prefill_ms.items()},
            {k: round(v, 1) for k, v in r.decode_tok_s.items()},
            flush=True,
        )
