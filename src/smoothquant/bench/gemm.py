"""GEMM-level benchmark: one linear layer of Llama-2-7B/13B at several token counts M.

Columns (all measured in the same process, CUDA graphs, inputs rotated through several copies so
small problems are not timed out of L2):

- ``bf16``: ``F.linear`` (cuBLAS),
- ``ours``: end to end, per-token dynamic activations (Triton quantization kernel + Triton W8A8
  GEMM with the fused epilogue),
- ``ours_gemm``: the GEMM alone on pre-quantized activations,
- ``cutlass``: end to end as ``ours`` with the CUTLASS GEMM (``kernels/cuda``; the runtime's
  default on Hopper), ``cutlass_gemm``: that GEMM alone,
- ``int_mm_e2e``: the torchao-style path in eager torch (absmax / divide / round / clamp, then
  ``torch._int_mm``, then a separate scale multiply),
- ``int_mm``: ``torch._int_mm`` alone (cuBLAS int8, int32 out, no epilogue),
- ``fp8``: ``torch._scaled_mm`` e4m3 with row-wise scales, alone, for reference.

Rows ``gate+up+act`` (``--models llama-2-7b-fused``) time an MLP's first half: bf16 is
transformers' ``silu(x @ gate.T) * (x @ up.T)`` (two GEMMs and two elementwise kernels), ours
the gated GEMM with the activation in its epilogue, ``int_mm_e2e`` the torchao-style path then
the same elementwise ops; ``int_mm`` and ``fp8`` stay the plain GEMM of both weights.

``torch._int_mm`` needs M > 16 and ``_scaled_mm`` M % 16 == 0: smaller M is zero-padded for those
columns (noted in the table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from smoothquant.bench.timing import cuda_time_ms
from smoothquant.quantization.quantizer import quantize_weight
from smoothquant.quantization.scheme import PER_CHANNEL, TOKEN_DYNAMIC
from smoothquant.runtime import ops

# (layer, in_features K, out_features N)
SHAPES: dict[str, list[tuple[str, int, int]]] = {
    "llama-2-7b": [("q/k/v/o", 4096, 4096), ("gate/up", 4096, 11008), ("down", 11008, 4096)],
    "llama-2-13b": [("q/k/v/o", 5120, 5120), ("gate/up", 5120, 13824), ("down", 13824, 5120)],
    # the runtime's fused sibling GEMMs (runtime/fused.py): q+k+v and gate+up in one launch
    # and gate+up with SiLU(gate) * up in the epilogue (runtime/mlp.py) against transformers'
    # bf16 MLP half: two GEMMs, SiLU, product
    "llama-2-7b-fused": [("qkv", 4096, 12288), ("gate+up", 4096, 22016), ("gate+up+act", 4096, 22016)],
}
M_VALUES = (1, 16, 128, 512, 2048, 8192)
METHODS = ("bf16", "ours", "ours_gemm", "cutlass", "cutlass_gemm", "int_mm_e2e", "int_mm", "fp8")


@dataclass
class GemmRow:
    model: str
    layer: str
    m: int
    k: int
    n: int
    ms: dict[str, float] = field(default_factory=dict)
    check: str = ""
    configs: dict[str, float] = field(default_factory=dict)  # sweep: config -> ms

    def speedup(self, method: str, over: str = "bf16") -> float:
        return self.ms[over] / self.ms[method] if method in self.ms and over in self.ms else float("nan")


def _pad_rows(t: torch.Tensor, multiple: int, minimum: int) -> torch.Tensor:
    rows = max(minimum, -(-t.shape[0] // multiple) * multiple)
    return F.pad(t, (0, 0, 0, rows - t.shape[0])) if rows != t.shape[0] else t


def _torchao_style(x: torch.Tensor, qw_t: torch.Tensor, sw: torch.Tensor) -> torch.Tensor:
    s = x.abs().amax(-1, keepdim=True).float().clamp_min(1e-8) / 127
    q = (x.float() / s).round().clamp(-127, 127).to(torch.int8)
    acc = torch._int_mm(_pad_rows(q, 8, 17), qw_t)[: x.shape[0]]
    return (acc * s * sw).to(x.dtype)


class _Case:
    """One copy of the inputs of every method, built once."""

    def __init__(self, m: int, k: int, n: int, device: torch.device, act: str | None = None) -> None:
        from smoothquant.kernels import triton_quant
        from smoothquant.kernels.layout import interleave_gate_up
        from smoothquant.kernels.packing import unpack

        self.x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
        self.w = (0.02 * torch.randn(n, k, device=device)).to(torch.bfloat16)
        qw, sw = quantize_weight(self.w, PER_CHANNEL)
        self.qw, self.sw = qw, sw.reshape(-1).contiguous()
        self.act = act  # the w rows are [gate; up]; ours reads them interleaved
        if act:
            self.qw_gated = interleave_gate_up(*self.qw.chunk(2)).contiguous()
            self.sw_gated = interleave_gate_up(*self.sw.chunk(2)).contiguous()
        self.qa, self.sa = unpack(triton_quant.quantize_rows(self.x), k)
        self.qa_mm = _pad_rows(self.qa.contiguous(), 8, 17)
        fp8 = torch.float8_e4m3fn
        xs = self.x.float().abs().amax(-1, keepdim=True).clamp_min(1e-8) / 448
        ws = self.w.float().abs().amax(-1, keepdim=True).clamp_min(1e-8) / 448
        self.x8 = _pad_rows((self.x.float() / xs).to(fp8), 16, 16)
        self.xs8 = _pad_rows(xs, 16, 16)
        self.w8, self.ws8 = (self.w.float() / ws).to(fp8), ws.reshape(1, -1)

    def fn(self, method: str, config=None):
        from smoothquant.kernels import triton_gemm

        bf16 = torch.bfloat16
        if self.act and method in ("bf16", "ours", "ours_gemm", "cutlass", "cutlass_gemm", "int_mm_e2e"):
            return self._gated_fn(method, config)
        return {
            "bf16": lambda: F.linear(self.x, self.w),
            "ours": lambda: ops.w8a8_linear(self.x, self.qw, self.sw, None, TOKEN_DYNAMIC, None, "triton"),
            "ours_gemm": lambda: triton_gemm.int8_gemm(
                self.qa, self.sa, self.qw, self.sw, None, bf16, config
            ),
            "cutlass": lambda: ops.w8a8_linear(
                self.x, self.qw, self.sw, None, TOKEN_DYNAMIC, None, "cutlass"
            ),
            "cutlass_gemm": lambda: _cutlass().int8_gemm(
                self.qa, self.sa, self.qw, self.sw, None, bf16, **_cutlass_kwargs(config)
            ),
            "int_mm_e2e": lambda: _torchao_style(self.x, self.qw.t(), self.sw),
            "int_mm": lambda: torch._int_mm(self.qa_mm, self.qw.t()),
            "fp8": lambda: torch._scaled_mm(
                self.x8, self.w8.t(), scale_a=self.xs8, scale_b=self.ws8, out_dtype=bf16
            ),
        }[method]

    def _gated_fn(self, method: str, config=None):
        from smoothquant.kernels import triton_gemm

        bf16, h = torch.bfloat16, self.w.shape[0] // 2

        def torchao_gated():
            y = _torchao_style(self.x, self.qw.t(), self.sw)
            return F.silu(y[:, :h]) * y[:, h:]

        return {
            "bf16": lambda: F.silu(F.linear(self.x, self.w[:h])) * F.linear(self.x, self.w[h:]),
            "ours": lambda: ops.w8a8_linear(
                self.x, self.qw_gated, self.sw_gated, None, TOKEN_DYNAMIC, None, "triton", act=self.act
            ),
            "ours_gemm": lambda: triton_gemm.int8_gemm(
                self.qa, self.sa, self.qw_gated, self.sw_gated, None, bf16, config, act=self.act
            ),
            "cutlass": lambda: ops.w8a8_linear(
                self.x, self.qw_gated, self.sw_gated, None, TOKEN_DYNAMIC, None, "cutlass", act=self.act
            ),
            # the split path: CUTLASS GEMM, then act(gate) * up as a kernel of its own
            "cutlass_gemm": lambda: triton_gemm.gated_act(
                _cutlass().int8_gemm(
                    self.qa, self.sa, self.qw_gated, self.sw_gated, None, bf16, **_cutlass_kwargs(config)
                ),
                self.act,
            ),
            "int_mm_e2e": torchao_gated,
        }[method]  # fmt: skip


def _cutlass():
    from smoothquant.kernels.cuda import gemm

    return gemm


def _cutlass_kwargs(key: str | None) -> dict:
    """A sweep key, ``NAME`` or ``NAME@sN`` (swizzle N), as ``int8_gemm`` arguments."""
    if key is None:
        return {}
    name, _, swizzle = key.partition("@s")
    return {"config": name, "swizzle": int(swizzle or 1)}


def sweep_keys(m: int) -> list[str]:
    """The CUTLASS candidates a ``--sweep-cutlass`` row times: every bf16 configuration, and the
    persistent ones with each swizzle too where the grid has many tiles (from 512 rows)."""
    from smoothquant.kernels.cuda.configs import CONFIGS, SWIZZLES

    keys = []
    for cfg in CONFIGS:
        if cfg.out != "bf16":
            continue
        keys.append(cfg.name)
        if m >= 512 and cfg.schedule in ("pp", "co", "sk"):
            keys += [f"{cfg.name}@s{s}" for s in SWIZZLES if s != 1]
    return keys


def _check(case: _Case) -> str:
    """Same integers as the reference quantizer, output within bf16 rounding of the reference."""
    q_ref, s_ref = ops.quantize_rows(case.x, TOKEN_DYNAMIC, None, "reference")
    same = bool(torch.equal(case.qa, q_ref)) and bool(torch.equal(case.sa, s_ref))
    if case.act:
        want = ops.int8_matmul(
            q_ref, s_ref, case.qw_gated, case.sw_gated, None, torch.bfloat16, "reference", act=case.act
        )
        want = want.float()
    else:
        want = ops.int8_matmul(q_ref, s_ref, case.qw, case.sw, None, torch.float32, "reference")
    errs = []
    for method in ("ours", "cutlass"):
        try:
            got = case.fn(method)().float()
            errs.append(f"{method} {((got - want).norm() / want.norm()).item():.1e}")
        except Exception as e:
            errs.append(f"{method} {type(e).__name__}")
    return f"{'ints equal' if same else 'INTS DIFFER'}, rel.err " + ", ".join(errs)


def run(
    models: list[str] | None = None,
    m_values: tuple[int, ...] = M_VALUES,
    methods: tuple[str, ...] = METHODS,
    sweep: dict[str, list] | None = None,
    reps: int = 20,
    log=print,
    sweep_cutlass: bool = False,
) -> list[GemmRow]:
    """Time every method (and, with ``sweep``, every candidate GEMM config) on every shape.

    ``sweep`` maps each :func:`bucket` of M to a list of Triton configs; ``sweep_cutlass`` times
    every compiled CUTLASS configuration too (``cutlass:NAME`` keys of ``GemmRow.configs``).
    """
    device = torch.device("cuda")
    rows = []
    for model in models or list(SHAPES):
        for layer, k, n in SHAPES[model]:
            for m in m_values:
                torch.manual_seed(0)
                per_call = 2 * (m * k + n * k + m * n)
                act = "silu" if layer.endswith("+act") else None
                copies = max(1, min(8, math.ceil(256e6 / per_call)))
                cases = [_Case(m, k, n, device, act) for _ in range(copies)]
                row = GemmRow(model, layer, m, k, n, check=_check(cases[0]))
                for method in methods:
                    try:
                        row.ms[method] = cuda_time_ms([c.fn(method) for c in cases], reps=reps)
                    except Exception as e:  # a baseline the installed torch cannot run
                        log(f"  {method} failed at M={m} K={k} N={n}: {type(e).__name__}: {e}")
                if sweep_cutlass:
                    _sweep_cutlass(row, cases, reps, log)
                if sweep:
                    for cfg in sweep[bucket(m)]:
                        try:
                            row.configs[str(cfg)] = cuda_time_ms(
                                [c.fn("ours_gemm", cfg) for c in cases], reps=reps
                            )
                        except Exception as e:
                            row.configs[str(cfg)] = float("nan")
                            log(f"  config {cfg} failed: {type(e).__name__}: {str(e)[:120]}")
                log(format_row(row))
                rows.append(row)
                del cases
                torch.cuda.empty_cache()
    return rows


def _sweep_cutlass(row: GemmRow, cases: list[_Case], reps: int, log) -> None:
    for key in sweep_keys(row.m):
        try:
            row.configs[f"cutlass:{key}"] = cuda_time_ms(
                [c.fn("cutlass_gemm", key) for c in cases], reps=reps
            )
        except Exception as e:
            row.configs[f"cutlass:{key}"] = float("nan")
            log(f"  cutlass {key} failed: {type(e).__name__}: {str(e)[:120]}")


def cutlass_table(rows: list[GemmRow], n_split: int = 8192) -> dict:
    """The configuration table (``kernels/cuda/configs.load_table``) a ``--sweep-cutlass`` run
    measured: per swept M (and N below / from ``n_split``) the configuration with the lowest total
    time relative to each row's best; the gated split path from the M where it beats the Triton
    gated GEMM at every larger M."""
    plain = [r for r in rows if not r.layer.endswith("+act")]
    ms = sorted({r.m for r in plain})
    rules = []
    for i, m in enumerate(ms):
        m_max = m if i < len(ms) - 1 else 1 << 62
        for n_min, sel in ((n_split, [r for r in plain if r.m == m and r.n >= n_split]),
                           (0, [r for r in plain if r.m == m and r.n < n_split])):  # fmt: skip
            if sel:
                name, _, swizzle = _winner(sel).partition("@s")
                rules.append({"m_max": m_max, "n_min": n_min, "config": name, "swizzle": int(swizzle or 1)})
    gated = sorted((r for r in rows if r.layer.endswith("+act")), key=lambda r: r.m)
    wins = [_split_time(r, rules) < r.ms.get("ours_gemm", math.inf) for r in gated]
    first = next((i for i in range(len(wins)) if all(wins[i:])), None)
    return {
        "rules": rules,
        "gated_min_rows": gated[first].m if first is not None else 1 << 62,
        "max_rows": _max_rows(plain, ms, rules),
    }


def _max_rows(plain: list[GemmRow], ms: list[int], rules: list[dict]) -> int:
    """CUTLASS takes GEMMs up to the last swept M before its total time first exceeds Triton's."""
    max_rows = 0
    for m in ms:
        sel = [r for r in plain if r.m == m]
        if sum(_split_time(r, rules) for r in sel) > sum(r.ms.get("ours_gemm", math.inf) for r in sel):
            break
        max_rows = m if m != ms[-1] else 1 << 62
    return max_rows


def _cutlass_times(r: GemmRow) -> dict[str, float]:
    return {
        k.removeprefix("cutlass:"): v for k, v in r.configs.items() if k.startswith("cutlass:") and v == v
    }


def _winner(sel: list[GemmRow]) -> str:
    names = set.intersection(*(set(_cutlass_times(r)) for r in sel))
    return min(names, key=lambda c: sum(_cutlass_times(r)[c] / min(_cutlass_times(r).values()) for r in sel))


def _split_time(r: GemmRow, rules: list[dict]) -> float:
    rule = next((x for x in rules if r.m <= x["m_max"] and r.n >= x["n_min"]), None)
    if rule is None:
        return math.inf
    key = rule["config"] + (f"@s{rule['swizzle']}" if rule["swizzle"] != 1 else "")
    return _cutlass_times(r).get(key, math.inf)


HEADER = (
    f"{'model':12s} {'layer':11s} {'M':>5s} {'bf16 ms':>8s} | end to end: {'triton':>7s} {'x bf16':>6s}"
    f" {'cutlass':>7s} {'x bf16':>6s} {'int_mm':>7s} | GEMM alone TOP/s: {'bf16':>5s} {'triton':>6s}"
    f" {'cutlass':>7s} {'int_mm':>6s} {'fp8':>5s} | check"
)


def format_row(r: GemmRow) -> str:
    """One table line; end-to-end columns in ms (with speedup over bf16), the GEMMs in TOP/s."""
    ms, ops_ = r.ms, 2 * r.m * r.n * r.k

    def t(key: str, width: int = 7) -> str:
        return f"{ms[key]:{width}.4f}" if key in ms else f"{'n/a':>{width}s}"

    def rate(key: str, width: int) -> str:
        return f"{ops_ / ms[key] / 1e9:{width}.0f}" if key in ms else f"{'n/a':>{width}s}"

    return (
        f"{r.model:12s} {r.layer:11s} {r.m:5d} {t('bf16', 8)} |             {t('ours')} {r.speedup('ours'):6.2f}"
        f" {t('cutlass')} {r.speedup('cutlass'):6.2f} {t('int_mm_e2e')} |                   {rate('bf16', 5)}"
        f" {rate('ours_gemm', 6)} {rate('cutlass_gemm', 7)} {rate('int_mm', 6)} {rate('fp8', 5)} | {r.check}"
    )


def bucket(m: int) -> str:
    return "small" if m <= 16 else "m128" if m <= 128 else "m512" if m <= 512 else "large"


def sweep_configs() -> dict[str, list]:
    """Candidate GEMM configs per M bucket for ``--sweep`` (the winners go into ``choose_config``)."""
    from smoothquant.kernels.triton_gemm import GemmConfig as C

    return {
        "small": [
            C(16, 32, 256, 4, 6),
            C(16, 32, 256, 4, 6, prefetch_k=512),
            C(16, 32, 256, 4, 6, prefetch_k=2048),
            C(16, 32, 512, 4, 4, prefetch_k=1024),
            C(16, 16, 512, 4, 6, prefetch_k=1024),
            C(16, 64, 256, 4, 4, prefetch_k=1024),
            C(16, 32, 256, 2, 6, prefetch_k=1024),
            C(16, 32, 256, 8, 6, prefetch_k=1024),
            C(16, 64, 256, 4, 4, split_k=2, prefetch_k=1024),
        ],
        "m128": [
            C(64, 128, 128, 4, 4, persistent=True),
            C(64, 256, 128, 4, 4, split_k=2),
            C(64, 64, 128, 4, 5),
            C(64, 64, 256, 4, 4),
            C(64, 128, 128, 4, 4),
            C(64, 64, 128, 4, 5, split_k=2),
            C(64, 128, 128, 4, 4, split_k=2),
            C(128, 64, 128, 4, 4),
            C(64, 32, 256, 4, 4),
            C(64, 128, 128, 4, 4, prefetch_k=512),
            C(64, 128, 128, 4, 4, split_k=2, prefetch_k=512),
        ],
        "m512": [
            C(64, 256, 128, 4, 4),
            C(128, 128, 128, 8, 4, persistent=True),
            C(128, 128, 128, 4, 4, persistent=True),
            C(64, 256, 128, 4, 4, persistent=True),
            C(128, 256, 128, 8, 3, persistent=True),
            C(128, 128, 128, 8, 4, split_k=2),
            C(64, 128, 128, 4, 4),
            C(64, 128, 128, 4, 4, persistent=True),
            C(128, 128, 128, 8, 4),
            C(128, 256, 128, 8, 4, persistent=True, subtile=True),
            C(128, 64, 128, 4, 4, persistent=True),
            C(64, 256, 128, 4, 4, split_k=2),
            C(64, 256, 128, 4, 4, persistent=True, prefetch_k=256),
            C(128, 256, 128, 8, 4, persistent=True, subtile=True, prefetch_k=256),
            C(128, 128, 128, 8, 4, split_k=2, prefetch_k=256),
        ],
        "large": [
            C(128, 256, 128, 8, 3, persistent=True),
            C(128, 256, 128, 8, 4, persistent=True, subtile=True),
            C(128, 256, 128, 8, 3, persistent=True, subtile=True),
            C(128, 256, 64, 8, 6, persistent=True, subtile=True),
            C(128, 256, 128, 8, 3, group_m=4, persistent=True),
            C(128, 256, 128, 8, 3),
            C(256, 128, 128, 8, 3, persistent=True),
            C(128, 256, 128, 8, 4, persistent=True, subtile=True, prefetch_k=256),
        ],
    }
