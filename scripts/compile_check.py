"""Compile every Triton kernel variant for sm_90 without a GPU (catches type errors the CPU
interpreter does not see). ``PYTHONPATH=src python scripts/compile_check.py``; point PYTHONPATH at
another Triton to check the GPU machine's version."""

from __future__ import annotations

import itertools
import re

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from smoothquant.bench.gemm import sweep_configs
from smoothquant.kernels import triton_gemm as g
from smoothquant.kernels import triton_quant as q

TARGET = GPUTarget("cuda", 90, 32)


def build(fn, sig: dict, const: dict, **opts):
    sig = {**sig, **{k: "constexpr" for k in const}}
    return triton.compile(ASTSource(fn, sig, const), target=TARGET, options=opts)


def main() -> None:
    base = {"x_ptr": "*bf16", "q_ptr": "*i8", "K": "i32", "stride_x": "i32", "stride_q": "i32"}
    for dyn, one in itertools.product((True, False), (True, False)):
        sig = {**base, "static_ptr": "*bf16" if dyn else "*fp32"}
        build(q._quant_rows_kernel, sig, {"DYNAMIC": dyn, "BLOCK_K": 4096, "ONE_TILE": one}, num_warps=8)
    sig = {
        **base,
        "w_ptr": "*bf16",
        "b_ptr": "*bf16",
        "static_ptr": "*fp32",
        "eps": "fp32",
        "w_offset": "fp32",
    }
    for rms, bias, dyn in itertools.product((True, False), repeat=3):
        const = {
            "RMS": rms,
            "HAS_BIAS": bias,
            "DYNAMIC": dyn,
            "ROUND_BF16": True,
            "ROUND_F16": False,
            "BLOCK_K": 4096,
        }
        build(q._norm_quant_kernel, {**sig, "static_ptr": "*bf16" if dyn else "*fp32"}, const, num_warps=8)
    print("quant kernels OK")
    configs = {c for cs in sweep_configs().values() for c in cs} | {
        g.choose_config(m, 4096, 4096) for m in (8, 64, 512)
    }
    for cfg in configs:
        tma = cfg.split_k == 1
        sig = {
            "a_desc": f"tensordesc<i8[{cfg.block_m},{cfg.block_k}]>", "b_desc": f"tensordesc<i8[{cfg.block_n},{cfg.block_k}]>",
            "a_scale_ptr": "*fp32", "stride_as": "i32", "b_scale_ptr": "*fp32", "bias_ptr": "*bf16", "c_ptr": "*bf16",
            "c_desc": f"tensordesc<bf16[{cfg.block_m},{cfg.block_n // (2 if cfg.subtile else 1)}]>" if tma else "constexpr",
            "stride_cm": "i32", "ws_ptr": "*i32", "M": "i32", "N": "i32", "K": "i32", "num_programs": "i32",
        }  # fmt: skip
        const = {"HAS_BIAS": True, "TMA_STORE": tma, "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n,
                 "BLOCK_K": cfg.block_k, "GROUP_M": cfg.group_m, "SPLIT_K": cfg.split_k, "FLATTEN": cfg.persistent, "SUBTILE": cfg.subtile}  # fmt: skip
        if not tma:
            const["c_desc"] = None
            del sig["c_desc"]
        k = build(g._w8a8_gemm_kernel, sig, const, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        ptx = k.asm["ptx"]
        mma = "wgmma" if "wgmma" in ptx else "mma.sync" if "mma.sync" in ptx else "NO MMA"
        print(
            f"{cfg!s:32s} smem {k.metadata.shared:7d}  {mma:8s} tma {len(re.findall('cp.async.bulk.tensor', ptx))}"
        )
    sig = {"ws_ptr": "*i32", "split_stride": "i32", "a_scale_ptr": "*fp32", "stride_as": "i32", "b_scale_ptr": "*fp32", "bias_ptr": "*bf16",
           "c_ptr": "*bf16", "stride_cm": "i32", "M": "i32", "N": "i32"}  # fmt: skip
    build(
        g._split_k_reduce_kernel,
        sig,
        {"HAS_BIAS": True, "SPLIT_K": 2, "BLOCK_M": 16, "BLOCK_N": 256},
        num_warps=4,
    )
    print("gemm kernels OK")


if __name__ == "__main__":
    main()
