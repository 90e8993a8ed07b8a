"""``smoothquant bench``: GEMM- and model-level speed and memory of the INT8 runtime."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark the INT8 runtime (GEMM level, model level)")
    which = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    g = which.add_parser("gemm", help="Llama-2 linear shapes: ours vs cuBLAS bf16, torch._int_mm, fp8 (CUDA)")
    g.add_argument(
        "--models",
        default="llama-2-7b,llama-2-13b",
        help="comma-separated: llama-2-7b,llama-2-13b (also: llama-2-7b-fused, the fused q+k+v and gate+up shapes)",
    )
    g.add_argument("--m", default="1,16,128,512,2048,8192", help="token counts M, comma-separated")
    g.add_argument("--sweep", action="store_true", help="also time every candidate GEMM config")
    g.add_argument("--sweep-cutlass", action="store_true", help="also time every compiled CUTLASS config")
    g.add_argument(
        "--write-table",
        help="with --sweep-cutlass: write the measured CUTLASS configuration table here "
        "(use it with SMOOTHQUANT_CUTLASS_TABLE=F)",
    )
    g.add_argument("--methods", default="", help="columns to time, comma-separated (default: all)")
    g.add_argument("--reps", type=int, default=20)
    g.add_argument("--json", help="write all numbers to this file")
    g.set_defaults(func=_gemm)
    m = which.add_parser("model", help="prefill latency, decode tokens/s, weight and peak memory")
    m.add_argument(
        "--model", default="random:llama-2-7b", help="random:llama-2-7b, a .gguf file or a model dir"
    )
    m.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    m.add_argument("--dtype", default="bfloat16", help="the floating-point model's dtype")
    m.add_argument("--baselines", default="", help="more floating-point dtypes to time, e.g. float32")
    m.add_argument("--schemes", default="O1,O3,w8a8", help="W8A8 schemes, comma-separated")
    m.add_argument("--prefill", default="1x512,4x2048", help="BATCHxTOKENS, comma-separated")
    m.add_argument("--decode", default="1@1024,16@1024", help="BATCH@CONTEXT, comma-separated ('' for none)")
    m.add_argument("--quantize-lm-head", action="store_true", help="also run lm_head in INT8")
    m.add_argument(
        "--kv-cache",
        default="float",
        help="KV caches to decode with, comma-separated: float (the model's dtype), int8 (also times "
        "the INT8 KV cache; speed-ups against the first model's float cache)",
    )
    m.add_argument(
        "--unfused",
        action="store_true",
        help="also time each scheme with q/k/v and gate/up as separate GEMMs (row '+unfused')",
    )
    m.add_argument(
        "--backends", default="auto", help="INT8 backends to time each scheme on, e.g. cutlass,triton"
    )
    m.add_argument("--reps", type=int, default=10)
    m.add_argument("--json", help="write all numbers to this file")
    m.set_defaults(func=_model)


def _ints(s: str, sep: str) -> list[tuple[int, ...]]:
    return [tuple(int(v) for v in item.split(sep)) for item in s.split(",") if item]


def _dtype(name: str):
    import torch

    from smoothquant.errors import ArgumentError

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ArgumentError(f"--dtype/--baselines: {name!r} is not a floating-point torch dtype")
    return dtype


def _kv_caches(spec: str) -> tuple[str, ...]:
    from smoothquant.bench.model import KV_CACHES
    from smoothquant.errors import ArgumentError

    kinds = {k.strip() for k in spec.split(",") if k.strip()}
    if not kinds <= set(KV_CACHES):
        raise ArgumentError(f"--kv-cache: choose among {', '.join(KV_CACHES)}, not {spec!r}")
    return tuple(k for k in KV_CACHES if k in kinds | {"float"})  # float always: the reference


def _need_cuda() -> None:
    import torch

    from smoothquant.errors import BackendError

    if not torch.cuda.is_available():
        raise BackendError(
            "this benchmark needs a CUDA GPU; on CPU use `smoothquant bench model --device cpu`"
        )


def _gemm(args: argparse.Namespace) -> int:
    import torch

    from smoothquant.bench import gemm

    _need_cuda()
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(gemm.HEADER)
    rows = gemm.run(
        [m.strip() for m in args.models.split(",")],
        tuple(v[0] for v in _ints(args.m, ",")),
        tuple(x.strip() for x in args.methods.split(",") if x.strip()) or gemm.METHODS,
        sweep=gemm.sweep_configs() if args.sweep else None,
        reps=args.reps,
        sweep_cutlass=args.sweep_cutlass,
    )
    if args.write_table:
        with open(args.write_table, "w") as f:
            json.dump({**gemm.cutlass_table(rows), "device": torch.cuda.get_device_name()}, f, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=1)
    print(gemm.HEADER)
    for r in rows:
        print(gemm.format_row(r))
    return 0


def _model(args: argparse.Namespace) -> int:
    from smoothquant.bench import model

    if args.device == "cuda":
        _need_cuda()
    results = model.run(
        args.model,
        tuple(s.strip() for s in args.schemes.split(",") if s.strip()),
        args.device,
        _dtype(args.dtype),
        prefill=_ints(args.prefill, "x"),
        decode=_ints(args.decode, "@"),
        baselines=tuple(_dtype(d) for d in args.baselines.split(",") if d),
        quantize_lm_head=args.quantize_lm_head,
        reps=args.reps,
        kv_caches=_kv_caches(args.kv_cache),
        unfused=args.unfused,
        backends=tuple(b.strip() for b in args.backends.split(",") if b.strip()),
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in results], f, indent=1)
    print(model.format_table(results))
    return 0
