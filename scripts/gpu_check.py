"""Correctness of the INT8 kernels on a CUDA GPU, then the device's two ceilings.

Run from the repository root: ``PYTHONPATH=src python scripts/gpu_check.py``. Prints one line per
check (``OK``/``FAIL``) and the measured bf16 matmul rate, int8 ``torch._int_mm`` rate and copy
bandwidth, the numbers the GEMM roofline in docs/kernels-notes.md uses.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from smoothquant.bench.gemm import sweep_configs
from smoothquant.kernels import triton_gemm, triton_quant
from smoothquant.kernels.packing import unpack
from smoothquant.quantization.scheme import (
    PER_CHANNEL,
    PER_TENSOR,
    TENSOR_STATIC,
    TOKEN_DYNAMIC,
)
from smoothquant.runtime import ops
from smoothquant.runtime.linear import Int8Linear

FAILS = []
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a dry run under TRITON_INTERPRET=1
QUANT_SHAPES = ((1, 7), (37, 1000), (300, 13824))
NORM_WIDTHS = (64, 5120)
GEMM_SHAPES = (
    (3, 4096, 1000),
    (1, 1000, 300),
    (16, 4096, 4096),
    (128, 11008, 4096),
    (37, 1000, 2000),
    (300, 4104, 520),
    (2048, 4096, 1000),
)


def report(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'OK  ' if ok else 'FAIL'} {name} {detail}", flush=True)
    if not ok:
        FAILS.append(name)


def check_quant() -> None:
    for dtype in (torch.bfloat16, torch.float32):
        for m, k in QUANT_SHAPES:
            x = torch.randn(m, k, device=DEV, dtype=dtype) * torch.logspace(-3, 3, m, device=DEV)[:, None].to(
                dtype
            )
            for spec, static in ((TOKEN_DYNAMIC, None), (TENSOR_STATIC, torch.tensor([0.03], device=DEV))):
                q, s = ops.quantize_rows(x, spec, static, "triton")
                rq, rs = ops.quantize_rows(x, spec, static, "reference")
                same = torch.equal(q, rq) and torch.equal(s, rs)
                report(f"quant {spec.granularity}-{'dyn' if spec.dynamic else 'static'} {dtype} {m}x{k}", same,
                       "" if same else f"{(q != rq).sum().item()} ints differ")  # fmt: skip
    x = torch.randn(4, 100, device=DEV)
    x[1, 5] = float("nan")
    x[2, 7] = float("inf")
    q, s = ops.quantize_rows(x, TOKEN_DYNAMIC, None, "triton")
    report("quant NaN/inf rows get NaN scales", bool(s[1:3].isnan().all() and s[[0, 3]].isfinite().all()))


def check_norm() -> None:
    for rms, offset, bias in ((True, 0.0, False), (True, 1.0, False), (False, 0.0, True)):
        for k in NORM_WIDTHS:
            x = (3 * torch.randn(77, k, device=DEV)).bfloat16()
            w = (1 + 0.3 * torch.randn(k, device=DEV)).bfloat16()
            b = (0.1 * torch.randn(k, device=DEV)).bfloat16() if bias else None
            for static in (None, torch.tensor([0.05], device=DEV)):
                spec = TOKEN_DYNAMIC if static is None else TENSOR_STATIC
                got = triton_quant.norm_quantize_rows(
                    x, w, b, 1e-5, rms=rms, weight_offset=offset, static_scale=static
                )
                want = ops.norm_quantize(x, w, b, 1e-5, rms, offset, spec, static, "reference")
                qg, _sg = unpack(got, k)
                qw, _sw = unpack(want, k)
                diff = (qg.int() - qw.int()).abs()
                ok = diff.max().item() <= 1 and (diff > 0).float().mean().item() < 1e-3
                report(f"norm+quant rms={rms} off={offset} k={k} static={static is not None}", ok,
                       f"{(diff > 0).sum().item()} ints off by <= {diff.max().item()}")  # fmt: skip


def check_gemm() -> None:
    configs = [c for cs in sweep_configs().values() for c in cs]
    for m, k, n in GEMM_SHAPES:
        lin = torch.nn.Linear(k, n, bias=True, device=DEV, dtype=torch.bfloat16)
        for wq in (PER_CHANNEL, PER_TENSOR):
            mod = Int8Linear.from_float(lin, wq, TOKEN_DYNAMIC, backend="triton")
            x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
            q, s = ops.quantize_rows(x, TOKEN_DYNAMIC, None, "triton")
            want = ops.int8_matmul(q, s, mod.weight_int8, mod.weight_scale, None, torch.float32, "reference")
            # bf16 out, no bias: the specialisation the benchmark times (shares the compile cache)
            for cfg in [None, *configs] if wq is PER_CHANNEL else [None]:
                args = (mod.weight_int8, mod.weight_scale, None, torch.bfloat16, cfg)
                outs = [triton_gemm.int8_gemm(q, s, *args) for _ in range(2)]
                err = ((outs[0].float() - want).abs().max() / want.abs().max()).item()
                ok = err < 8e-3 and torch.equal(outs[0], outs[1])
                report(f"gemm {m}x{k}x{n} {wq.granularity} {cfg or 'auto'}", ok, f"max rel err {err:.1e}")
            y = mod(x)
            ref = ops.w8a8_linear(
                x, mod.weight_int8, mod.weight_scale, mod.bias, TOKEN_DYNAMIC, None, "reference"
            )
            err = ((y.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
            report(f"Int8Linear bf16 {m}x{k}x{n} {wq.granularity}", err < 1e-2, f"max rel err {err:.1e}")


def check_exact_division() -> None:
    import triton
    import triton.language as tl

    @triton.jit
    def divide_both_ways(x_ptr, s_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs, mask=offs < n, other=1.0)
        s = tl.load(s_ptr + offs, mask=offs < n, other=1.0)
        exact = tl.math.div_rn(x, s)
        fast = triton_quant._div_exact(x, s, tl.math.div_rn(tl.full([BLOCK], 1.0, tl.float32), s))
        tl.store(out_ptr + offs, (exact != fast).to(tl.int32), mask=offs < n)

    # 2**27 quotients: scales absmax / 127 over 12 decades, values random and at j + 0.5 +- 1 ulp
    n, bad = (2**24 if DEV == "cuda" else 2**12), 0  # cpu: a dry run
    for rep in range(8):
        g = torch.Generator(device=DEV).manual_seed(rep)
        s = (10 ** (torch.rand(n, device=DEV, generator=g) * 12 - 8)) / 127
        j = torch.randint(-127, 127, (n,), device=DEV, generator=g).float()
        x = (j + 0.5) * s if rep % 2 else (torch.rand(n, device=DEV, generator=g) * 2 - 1) * 127 * s
        if rep % 4 == 3:  # one ulp above or below a tie (rep % 4 == 1: the ties themselves)
            up = torch.rand(n, device=DEV, generator=g) < 0.5
            x = x.nextafter(torch.where(up, 1e30, -1e30))
        out = torch.empty(n, dtype=torch.int32, device=DEV)
        divide_both_ways[(triton.cdiv(n, 1024),)](x, s, out, n, BLOCK=1024)
        bad += int(out.sum().item())
    report("fma-corrected reciprocal == div_rn on 2**27 quotients", bad == 0, f"{bad} differ")


def check_models() -> None:
    import smoothquant as sq
    from smoothquant.runtime import convert
    from tiny_models import tiny_batches, tiny_model

    for family in ("llama", "opt", "gemma"):
        for scheme in ("w8a8", "O1", "O3"):
            model = tiny_model(family, torch.bfloat16).to(DEV)
            ids = tiny_batches(2, 16).to(DEV)
            sq.quantize_model(model, ids, scheme=scheme, alpha=0.5)
            want = model(ids).logits.float()
            convert(model)
            got = model(ids).logits.float()
            err = ((got - want).norm() / want.norm()).item()
            folded = len(model.smoothquant_conversion.folded_norms)
            report(
                f"model {family} {scheme} triton vs fake-quant",
                err < 2e-2,
                f"rel err {err:.1e}, {folded} norms folded",
            )


def ceilings() -> None:
    from smoothquant.bench.timing import cuda_time_ms

    n = 8192
    a = torch.randn(n, n, device=DEV, dtype=torch.bfloat16)
    ms = cuda_time_ms([lambda: a @ a], reps=10)
    print(f"CEILING bf16 matmul {n}^3: {2 * n**3 / ms / 1e9:.0f} TFLOP/s")
    ai = torch.randint(-127, 128, (n, n), device=DEV, dtype=torch.int8)
    ms = cuda_time_ms([lambda: torch._int_mm(ai, ai.t())], reps=10)
    print(f"CEILING int8 torch._int_mm {n}^3: {2 * n**3 / ms / 1e9:.0f} TOP/s")
    buf = torch.empty(2**30, dtype=torch.uint8, device=DEV)
    out = torch.empty_like(buf)
    ms = cuda_time_ms([lambda: out.copy_(buf)], reps=10)
    print(f"CEILING copy 1 GiB: {2 * 2**30 / ms / 1e6:.0f} GB/s (read + write)")


if __name__ == "__main__":
    print(torch.cuda.get_device_name() if DEV == "cuda" else "cpu", torch.__version__, flush=True)
    for fn in (check_quant, check_norm, check_gemm, check_exact_division, check_models, ceilings)[
        : 5 if DEV == "cpu" else 6
    ]:
        try:
            fn()
        except Exception as e:
            report(fn.__name__, False, f"raised {type(e).__name__}: {e}")
    print(f"{len(FAILS)} checks failed: {FAILS[:20]}")
