"""Compile every Triton kernel variant for sm_90 without a GPU (catches type errors the CPU
interpreter does not see). ``PYTHONPATH=src python scripts/compile_check.py``; point PYTHONPATH at
another Triton to check the GPU machine's version."""

from __future__ import annotations

import itertools
import re

import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from smoothquant.bench.gemm import sweep_configs
from smoothquant.kernels import triton_gemm as g
from smoothquant.kernels import triton_kv as kv
from smoothquant.kernels import triton_quant as q

TARGET = GPUTarget("cuda", 90, 32)


def build(fn, sig: dict, const: dict, **opts):
    sig = {**sig, **{k: "constexpr" for k in const}}
    return triton.compile(ASTSource(fn, sig, const), target=TARGET, options=opts)


def main() -> None:
    base = {"x_ptr": "*bf16", "q_ptr": "*i8", "K": "i32", "stride_x": "i32", "stride_q": "i32"}
    for dyn, one in itertools.product((True, False), (True, False)):
        sig = {**base, "static_ptr": "*bf16" if dyn else "*fp32"}
        k = build(q._quant_rows_kernel, sig, {"DYNAMIC": dyn, "BLOCK_K": 4096, "ONE_TILE": one, "PDL": True},
                  num_warps=8, launch_pdl=True)  # fmt: skip
        assert "griddepcontrol.wait" in k.asm["ptx"]
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
            "PDL": dyn,
        }
        build(q._norm_quant_kernel, {**sig, "static_ptr": "*bf16" if dyn else "*fp32"}, const, num_warps=8)
    print("quant kernels OK")
    configs = {(c, 0) for cs in sweep_configs().values() for c in cs} | {
        (g.choose_config(m, 4096, 4096), 0) for m in (8, 64, 512)
    }
    # the gated MLP's epilogue (act 1: silu, 2: gelu) on the configs the runtime picks for 2 * 11008
    configs = {(c, act, False) for c, act in configs}
    configs |= {(g.choose_config(m, 22016), act, False) for m in (8, 64, 512, 4096) for act in (1, 2)}
    # the gated epilogue writing packed INT8 rows (static scale, the down projection's input)
    configs |= {(g.choose_config(m, 22016), 1, True) for m in (8, 64, 512, 4096)}
    for cfg, act, quant_out in sorted(configs, key=str):
        tma = cfg.split_k == 1
        store_n = cfg.block_n // (2 if cfg.subtile else 1) // (2 if act else 1)
        out = "i8" if quant_out else "bf16"
        sig = {
            "a_desc": f"tensordesc<i8[{cfg.block_m},{cfg.block_k}]>", "b_desc": f"tensordesc<i8[{cfg.block_n},{cfg.block_k}]>",
            "a_scale_ptr": "*fp32", "stride_as": "i32", "b_scale_ptr": "*fp32", "bias_ptr": "*bf16", "c_ptr": f"*{out}",
            "c_desc": f"tensordesc<{out}[{cfg.block_m},{store_n}]>" if tma else "constexpr",
            "stride_cm": "i32", "ws_ptr": "*i32", "M": "i32", "N": "i32", "K": "i32", "num_programs": "i32",
            "b_ptr": "*i8", "stride_b": "i32", "out_scale_ptr": "*fp32", "scale_col": "i32",
        }  # fmt: skip
        const = {"HAS_BIAS": True, "TMA_STORE": tma, "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n,
                 "BLOCK_K": cfg.block_k, "GROUP_M": cfg.group_m, "SPLIT_K": cfg.split_k, "FLATTEN": cfg.persistent, "SUBTILE": cfg.subtile,
                 "PDL": True, "PREFETCH_K": cfg.prefetch_k, "ACT": act, "QUANT_OUT": quant_out, "DTYPE": tl.bfloat16}  # fmt: skip
        if not tma:
            const["c_desc"] = None
            del sig["c_desc"]
        k = build(g._w8a8_gemm_kernel, sig, const, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                  launch_pdl=True)  # fmt: skip
        ptx = k.asm["ptx"]
        assert "griddepcontrol.wait" in ptx and ("prefetch.global.L2" in ptx) == (cfg.prefetch_k > 0), cfg
        mma = "wgmma" if "wgmma" in ptx else "mma.sync" if "mma.sync" in ptx else "NO MMA"
        print(
            f"{cfg!s:32s} act {act}{' int8 out' if quant_out else ''} smem {k.metadata.shared:7d}  {mma:8s} tma {len(re.findall('cp.async.bulk.tensor', ptx))}"
        )
    for quant_out in (False, True):
        sig = {"ws_ptr": "*i32", "split_stride": "i32", "a_scale_ptr": "*fp32", "stride_as": "i32", "b_scale_ptr": "*fp32", "bias_ptr": "*bf16",
               "c_ptr": "*i8" if quant_out else "*bf16", "stride_cm": "i32", "M": "i32", "N": "i32", "out_scale_ptr": "*fp32", "scale_col": "i32"}  # fmt: skip
        const = {"HAS_BIAS": True, "SPLIT_K": 2, "BLOCK_M": 16, "BLOCK_N": 256, "PDL": True, "ACT": 1,
                 "QUANT_OUT": quant_out, "DTYPE": tl.bfloat16}  # fmt: skip
        build(g._split_k_reduce_kernel, sig, const, num_warps=4)
    print("gemm kernels OK")
    kv_kernels()


def kv_kernels() -> None:
    """The INT8 KV cache's kernels: fp32/bf16 queries, with and without mask and slices, MHA and GQA."""
    names = "q_ptr k_ptr v_ptr m_ptr o_ptr part_ptr lse_ptr L HKV split_len qk_scale sq_b sq_h sq_s rk_b rk_h rv_b rv_h sm_b sm_h sm_s so_b so_s so_h"  # fmt: skip
    for dt, mask, split, (s, grp, d) in itertools.product(("fp32", "bf16"), (True, False), (True, False), ((1, 1, 128), (4, 4, 80))):  # fmt: skip
        ptrs = [f"*{dt}", "*i8", "*i8", "*i8", f"*{dt}", "*fp32", "*fp32"]
        types = ptrs + ["i32", "i32", "i32", "fp32"] + ["i32"] * 13
        w = kv.packed_width(d, kv.KV_PACK_ALIGN)
        dot = kv._dot_dtype(torch.float32 if dt == "fp32" else torch.bfloat16)
        const = {"S": s, "G": grp, "D": d, "DP": w - kv.KV_PACK_ALIGN, "W": w, "SPLIT": split, "BLOCK_M": 16,
                 "BLOCK_N": 64, "BLOCK_D": 128, "HAS_MASK": mask, "DOT_DTYPE": dot,
                 "PRECISION": "ieee" if dt == "fp32" else "tf32"}  # fmt: skip
        build(
            kv._decode_attn_kernel,
            dict(zip(names.split(), types, strict=True)),
            const,
            num_warps=4,
            num_stages=2,
        )
    names = "q_ptr k_ptr v_ptr m_ptr o_ptr part_ptr lse_ptr L HKV split_len qk_scale sq_b sq_h rk_b rk_h rv_b rv_h sm_b sm_h so_b so_h"  # fmt: skip
    for mask, split, d in itertools.product((True, False), (True, False), (128, 80)):
        types = ["*bf16", "*i8", "*i8", "*i8", "*bf16", "*fp32", "*fp32", "i32", "i32", "i32", "fp32"] + [
            "i32"
        ] * 10
        w = kv.packed_width(d, kv.KV_PACK_ALIGN)
        const = {"D": d, "DP": w - kv.KV_PACK_ALIGN, "W": w, "SPLIT": split, "BLOCK_N": 32, "BLOCK_D": 128,
                 "HAS_MASK": mask}  # fmt: skip
        k = build(kv._decode_attn_row_kernel, dict(zip(names.split(), types, strict=True)), const, num_warps=4,
                  num_stages=3)  # fmt: skip
        assert "mma" not in k.asm["ptx"]
    sig = {"part_ptr": "*fp32", "lse_ptr": "*fp32", "o_ptr": "*bf16", "HQ": "i32", "so_b": "i32", "so_s": "i32",
           "so_h": "i32", "NSPLIT": "i32"}  # fmt: skip
    build(kv._combine_kernel, sig, {"S": 1, "D": 128, "BLOCK_SPLIT": 16, "BLOCK_D": 128}, num_warps=1)
    names = "k_ptr v_ptr kc_ptr vc_ptr start_ptr H S sk_b sk_h sk_s sv_b sv_h sv_s rkc_b rkc_h rvc_b rvc_h"
    types = ["*bf16", "*bf16", "*i8", "*i8", "*i64"] + ["i32"] * 12
    build(
        kv._kv_write_kernel,
        dict(zip(names.split(), types, strict=True)),
        {"D": 128, "DP": 128, "W": 132, "BLOCK_D": 128},
        num_warps=1,
    )
    print("kv cache kernels OK")


if __name__ == "__main__":
    main()
