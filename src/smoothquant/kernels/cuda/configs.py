"""The CUTLASS kernel configurations compiled into the library, and which one runs for a shape.

A configuration is a CTA tile, a cluster shape, a kernel schedule and whether A and B swap
roles (for a handful of tokens). Each is one compiled kernel (one nvcc process, ~1-2 minutes of
one core), so the list holds only those that win somewhere: :func:`choose` is a table of the
measured winners per shape class (``smoothquant bench gemm --sweep-cutlass``, run by
``scripts/gpu_cutlass_run.sh``; docs/kernels.md has the sweep).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

SCHEDULES = {
    "pp": "Pingpong",  # two consumer warpgroups alternate tiles: one's epilogue hides under the other's MMAs
    "co": "Cooperative",  # two consumer warpgroups share one tile (256-row tiles)
    "sk": "CooperativeStreamK",  # cooperative, the last partial wave's K loops split across idle SMs
    "ws": "WarpSpecialized",  # one consumer warpgroup, one tile per CTA (small problems)
}
OUTPUTS = {"bf16": "cutlass::bfloat16_t", "f32": "float"}


@dataclass(frozen=True)
class CutlassConfig:
    schedule: str
    tile: tuple[int, int, int]
    cluster: tuple[int, int] = (1, 1)
    swap: bool = False
    out: str = "bf16"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES or self.out not in OUTPUTS:
            raise ValueError(f"unknown schedule {self.schedule!r} or output {self.out!r}")

    @property
    def name(self) -> str:
        m, n, k = self.tile
        s = f"{'sw' if self.swap else ''}{self.schedule}_{m}x{n}x{k}_c{self.cluster[0]}x{self.cluster[1]}"
        return s if self.out == "bf16" else f"{s}_{self.out}"

    def macros(self) -> list[str]:
        m, n, k = self.tile
        values = {
            "SQ_NAME": self.name, "SQ_TM": m, "SQ_TN": n, "SQ_TK": k, "SQ_CM": self.cluster[0],
            "SQ_CN": self.cluster[1], "SQ_SCHED": SCHEDULES[self.schedule], "SQ_SWAP": int(self.swap),
            "SQ_OUT": OUTPUTS[self.out],
        }  # fmt: skip
        return [f"-D{k}={v}" for k, v in values.items()]


CONFIGS: tuple[CutlassConfig, ...] = (
    # many tokens (prefill): 128-row tiles, persistent
    CutlassConfig("pp", (128, 128, 128), (2, 1)),
    CutlassConfig("pp", (128, 128, 128)),
    CutlassConfig("co", (256, 128, 128), (2, 1)),
    CutlassConfig("co", (128, 256, 128)),
    CutlassConfig("co", (128, 256, 128), (2, 1)),
    CutlassConfig("co", (256, 128, 128), (1, 2)),
    CutlassConfig("co", (128, 128, 128), (2, 1)),
    CutlassConfig("pp", (128, 128, 128), (1, 2)),
    # grids a little over one wave (e.g. 13B at 512 rows: 160 tiles of 128x128 on 132 SMs)
    CutlassConfig("sk", (128, 128, 128)),
    CutlassConfig("sk", (128, 256, 128)),
    # a few hundred tokens
    CutlassConfig("pp", (64, 128, 128), (2, 1)),
    CutlassConfig("ws", (64, 64, 256)),
    # decode: few tokens, the weights streamed once; clusters multicast the activation tile
    CutlassConfig("ws", (64, 128, 256), (1, 4)),
    CutlassConfig("ws", (64, 64, 256), (1, 8)),
    # swap-AB: tokens on the narrow N' side of the tile
    CutlassConfig("pp", (64, 16, 256), swap=True),
    CutlassConfig("ws", (64, 32, 256), swap=True),
    CutlassConfig("ws", (128, 16, 256), (2, 1), swap=True),
    # fp32 output: exactness checks of the int32 accumulators (and fp32 models)
    CutlassConfig("pp", (128, 128, 128), out="f32"),
)
BY_NAME = {c.name: c for c in CONFIGS}


@dataclass(frozen=True)
class Rule:
    """Problems with ``m <= m_max`` and ``n >= n_min`` run ``config`` (the first match wins), its
    persistent scheduler grouping ``swizzle`` tiles (a launch argument, not a compiled one)."""

    m_max: int
    n_min: int
    config: str
    swizzle: int = 1


# Measured winners per shape class: the sweep on one H100 80GB HBM3, 2026-12-07
# (docs/bench/h100_cutlass_table.json, written by scripts/gpu_cutlass_run.sh sweep).
RULES: tuple[Rule, ...] = (
    Rule(1, 8192, "swpp_64x16x256_c1x1"),
    Rule(1, 0, "swws_128x16x256_c2x1"),
    Rule(16, 8192, "swws_128x16x256_c2x1"),
    Rule(16, 0, "ws_64x64x256_c1x8"),
    Rule(128, 0, "pp_64x128x128_c2x1"),
    Rule(512, 8192, "co_128x256x128_c2x1"),
    Rule(512, 0, "pp_128x128x128_c1x2"),
    Rule(2048, 8192, "co_128x256x128_c1x1"),
    Rule(2048, 0, "co_128x256x128_c2x1", 2),
    Rule(1 << 62, 8192, "co_256x128x128_c1x2", 4),
    Rule(1 << 62, 0, "co_128x256x128_c2x1", 4),
)
# gate+up+act from this many rows on: CUTLASS GEMM + a separate act(gate) * up kernel rather than
# the Triton GEMM with the product in its epilogue (runtime/ops.int8_matmul); the sweep found no
# M where the split path wins
GATED_MIN_ROWS = 1 << 62
# up to this many rows CUTLASS runs (above it Triton): with the swept rules CUTLASS's total is
# below Triton's at every swept M (1 to 8192 rows)
MAX_ROWS = 1 << 62


def load_table(path: str | os.PathLike) -> None:
    """Replace :data:`RULES` and :data:`GATED_MIN_ROWS` with a table written by
    ``smoothquant bench gemm --sweep-cutlass --write-table F`` (another Hopper part, another
    clock): read at import from ``$SMOOTHQUANT_CUTLASS_TABLE``."""
    global RULES, GATED_MIN_ROWS, MAX_ROWS
    table = json.loads(Path(path).read_text())
    rules = tuple(
        Rule(int(r["m_max"]), int(r["n_min"]), str(r["config"]), int(r.get("swizzle", 1)))
        for r in table["rules"]
    )
    unknown = [r.config for r in rules if r.config not in BY_NAME]
    if unknown or not rules:
        raise ValueError(f"{path}: unknown or no CUTLASS configurations {unknown}")
    RULES, GATED_MIN_ROWS = rules, int(table.get("gated_min_rows", GATED_MIN_ROWS))
    MAX_ROWS = int(table.get("max_rows", MAX_ROWS))


SWIZZLES = (1, 2, 4, 8)


def plan(m: int, n: int, k: int, out: str = "bf16") -> tuple[CutlassConfig, int]:
    """The configuration and swizzle that ran fastest for this shape class (:data:`RULES`)."""
    if out == "f32":
        return BY_NAME["pp_128x128x128_c1x1_f32"], 1
    rule = next((r for r in RULES if m <= r.m_max and n >= r.n_min), RULES[-1])
    return BY_NAME[rule.config], rule.swizzle


def choose(m: int, n: int, k: int, out: str = "bf16") -> CutlassConfig:
    """The configuration of :func:`plan`."""
    return plan(m, n, k, out)[0]


if os.environ.get("SMOOTHQUANT_CUTLASS_TABLE"):
    load_table(os.environ["SMOOTHQUANT_CUTLASS_TABLE"])
