"""Correctness of the CUTLASS W8A8 GEMMs on a Hopper GPU (docs/bench/h100_cutlass_check.log).

Run from the repository root: ``PYTHONPATH=src python scripts/cutlass_check.py``. Every check
draws fresh random inputs and writes into an output poisoned with NaN first, so an unwritten
element fails. Checked, for every compiled configuration on odd shapes:
- the int32 accumulators exactly (the fp32-output configuration, integers small enough that every
  sum is exact in fp32, against an exact float64 product),
- the bf16 epilogue ``cast((acc * a_scale) * w_scale + bias)`` within one bf16 rounding of the
  same expression on the exact accumulators, with strided (packed-row) and broadcast scales,
- the runtime path (``ops.w8a8_linear`` with backend "cutlass": Triton quantization + CUTLASS),
  its fallback to Triton for shapes CUTLASS cannot take, gate+up+act, CUDA-graph replay and PDL.
Prints one line per check and exits 1 if any failed.
"""

from __future__ import annotations

import sys

import torch

from smoothquant.kernels.cuda import configs, gemm
from smoothquant.kernels.cuda.configs import CONFIGS
from smoothquant.kernels.layout import interleave_gate_up
from smoothquant.quantization.quantizer import quantize_weight
from smoothquant.quantization.scheme import PER_CHANNEL, TOKEN_DYNAMIC
from smoothquant.runtime import ops

FAILS: list[str] = []
# (M, N, K): odd M everywhere, N a multiple of 8, K of 16 (what TMA needs); tiles left ragged
SHAPES = ((1, 264, 272), (3, 4104, 4096), (17, 11008, 4112), (64, 520, 1040), (129, 4096, 11008),
          (1000, 12296, 4096), (2049, 4104, 528), (513, 5128, 5120))  # fmt: skip
# the last one is 13B's 512-row shape, 1.2 waves of 128x128 tiles: stream-K splits K loops there


def report(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'OK  ' if ok else 'FAIL'} {name} {detail}", flush=True)
    if not ok:
        FAILS.append(name)


def poisoned(m: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.full((m, n), float("nan"), dtype=dtype, device="cuda")


def packed_activations(m: int, k: int, lo: int = -127, hi: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Integers and scales as strided views of packed rows (scale after the padded integers)."""
    width = -(-k // 16) * 16 + 16
    rows = torch.randint(lo, hi, (m, width), dtype=torch.int8, device="cuda")
    scale = torch.rand(m, device="cuda") * 0.1 + 1e-3
    rows.view(torch.float32)[:, (width - 16) // 4] = scale
    return rows[:, :k], rows.view(torch.float32)[:, (width - 16) // 4]


def ulps_bf16(got: torch.Tensor, want32: torch.Tensor) -> float:
    """Largest |got - want| in units of bf16's spacing at |want| (0.5 = correctly rounded)."""
    # values near zero after cancellation are judged at 1/1024 of the tensor's largest magnitude:
    # their fp32 sum order (fma contraction) differs by more ulps than their own magnitude holds
    floor = want32.abs().max().clamp_min(1e-30) / 1024
    spacing = torch.ldexp(torch.ones_like(want32), torch.frexp(want32.abs().clamp_min(floor))[1] - 8)
    return ((got.float() - want32).abs() / spacing).max().item()


def check_accumulators() -> None:
    f32 = [c for c in CONFIGS if c.out == "f32"]
    for cfg in f32:
        for m, n, k in SHAPES:
            q, _ = packed_activations(m, k, -31, 32)  # |acc| <= 31 * 31 * K < 2**24: exact in fp32
            w = torch.randint(-31, 32, (n, k), dtype=torch.int8, device="cuda")
            ones_m, ones_n = torch.ones(m, device="cuda"), torch.ones(n, device="cuda")
            out = gemm.int8_gemm(
                q, ones_m, w, ones_n, None, torch.float32, cfg.name, out=poisoned(m, n, torch.float32)
            )
            torch.cuda.synchronize()
            exact = (q.double() @ w.double().t()).float()
            report(f"int32 accumulators {cfg.name} {m}x{n}x{k}", torch.equal(out, exact),
                   f"max|diff| {(out - exact).abs().nan_to_num(1e30).max().item():.0f}")  # fmt: skip


def check_epilogue() -> None:
    for cfg in CONFIGS:
        if cfg.out != "bf16":
            continue
        for i, (m, n, k) in enumerate(SHAPES):
            q, sa = packed_activations(m, k)
            if i % 3 == 2:  # a per-tensor scale broadcast to every row: stride 0
                sa = sa[:1].expand(m)
            w = torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda")
            sw = torch.rand(n, device="cuda") * 0.01 + 1e-4
            bias = torch.randn(n, device="cuda").to(torch.bfloat16) if i % 2 else None
            out = gemm.int8_gemm(
                q, sa, w, sw, bias, torch.bfloat16, cfg.name, out=poisoned(m, n, torch.bfloat16)
            )
            torch.cuda.synchronize()
            acc = (q.double() @ w.double().t()).float()
            want = acc * sa[:, None] * sw[None, :] + (bias.float() if bias is not None else 0)
            err = ulps_bf16(out, want)
            ok = bool(torch.isfinite(out).all()) and err <= 1.0
            report(
                f"epilogue {cfg.name} {m}x{n}x{k}{' bias' if bias is not None else ''}", ok, f"{err:.2f} ulp"
            )


def _linear_case(m: int, n: int, k: int, gated: bool = False):
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16) * torch.logspace(-1, 1, k, device="cuda").to(
        torch.bfloat16
    )
    w = (0.02 * torch.randn(n, k, device="cuda")).to(torch.bfloat16)
    qw, sw = quantize_weight(w, PER_CHANNEL)
    kp = -(-k // 16) * 16  # rows padded to 16 bytes, as Int8Linear stores them
    buf = torch.zeros(n, kp, dtype=torch.int8, device="cuda")
    buf[:, :k] = qw.to(torch.int8)
    qw, sw = buf[:, :k], sw.reshape(-1).float().contiguous()
    if gated:
        qw, sw = interleave_gate_up(*qw.chunk(2)).contiguous(), interleave_gate_up(*sw.chunk(2)).contiguous()
    return x, qw, sw


def check_runtime_path() -> None:
    """ops.w8a8_linear on "cutlass" against "reference" (same integers, same epilogue)."""
    for m, n, k, note in ((5, 4096, 4096, ""), (300, 11008, 4096, ""), (7, 1000, 4096, "fallback: N % 8"),
                          (9, 4096, 1000, "fallback: K % 16")):  # fmt: skip
        x, qw, sw = _linear_case(m, n, k)
        bias = torch.randn(n, device="cuda").to(torch.bfloat16)
        got = ops.w8a8_linear(x, qw, sw, bias, TOKEN_DYNAMIC, None, "cutlass")
        want = ops.w8a8_linear(x, qw, sw, bias, TOKEN_DYNAMIC, None, "reference").float()
        err = ulps_bf16(got, want)
        report(f"w8a8_linear cutlass {m}x{n}x{k} {note}", err <= 1.0, f"{err:.2f} ulp")
    for m in (1, 16, 600, 4096):
        x, qw, sw = _linear_case(m, 22016, 4096, gated=True)
        q, s = ops.quantize_rows(x, TOKEN_DYNAMIC, None, "reference")
        want = ops.int8_matmul(q, s, qw, sw, None, torch.bfloat16, "reference", act="silu").float()
        saved = configs.GATED_MIN_ROWS
        for threshold, path in ((1, "cutlass GEMM + act kernel"), (1 << 62, "triton gated epilogue")):
            configs.GATED_MIN_ROWS = threshold
            got = ops.w8a8_linear(x, qw, sw, None, TOKEN_DYNAMIC, None, "cutlass", act="silu")
            err = ulps_bf16(got, want)
            report(f"gate+up+act {m}x22016x4096 via {path}", err <= 1.0, f"{err:.2f} ulp")
        configs.GATED_MIN_ROWS = saved


def check_graph_and_pdl() -> None:
    m, n, k = 16, 4096, 4096
    q, sa = packed_activations(m, k)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda")
    sw = torch.rand(n, device="cuda") * 0.01
    for pdl in (False, True):
        out = poisoned(m, n, torch.bfloat16)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            gemm.int8_gemm(q, sa, w, sw, None, torch.bfloat16, pdl=pdl, out=out)  # warm-up off the capture
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            gemm.int8_gemm(q, sa, w, sw, None, torch.bfloat16, pdl=pdl, out=out)
        q.copy_(torch.randint(-127, 128, q.shape, dtype=torch.int8, device="cuda"))  # fresh inputs
        out.fill_(float("nan"))
        g.replay()
        torch.cuda.synchronize()
        want = (q.double() @ w.double().t()).float() * sa[:, None] * sw[None, :]
        err = ulps_bf16(out, want)
        report(
            f"CUDA graph replay, pdl={pdl}", bool(torch.isfinite(out).all()) and err <= 1.0, f"{err:.2f} ulp"
        )


def main() -> int:
    torch.manual_seed(0)
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, library {gemm.library().path}")
    for c in CONFIGS:
        print(f"# {c.name}: {gemm.library().info(c)}")
    check_accumulators()
    check_epilogue()
    check_runtime_path()
    check_graph_and_pdl()
    print(f"{len(FAILS)} failed" if FAILS else "all checks passed")
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
