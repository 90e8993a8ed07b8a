"""``smoothquant quantize MODEL -o DIR``: the one command from a float model to a servable checkpoint."""

from __future__ import annotations

import argparse

EXPORTABLE_SCHEMES = ("w8a8", "O1", "O2", "O3")
DTYPES = ("float32", "bfloat16", "float16")


def register(sub: argparse._SubParsersAction) -> None:
    from smoothquant.cli.evaluate import add_check_alphas

    p = sub.add_parser(
        "quantize",
        help="calibrate, smooth and quantize a model, and write a compressed-tensors checkpoint",
        description="Load MODEL, calibrate it on text, apply SmoothQuant, quantize to W8A8 INT8 and write "
        "a compressed-tensors checkpoint that vLLM serves and transformers loads.",
    )
    p.add_argument(
        "model", help="embedded model name (e.g. smollm2-135m), local checkpoint folder, .gguf file or hub id"
    )
    p.add_argument("-o", "--output", required=True, help="output directory (must not exist unless --force)")
    p.add_argument(
        "--scheme",
        default="w8a8",
        type=str.lower,
        choices=[s.lower() for s in EXPORTABLE_SCHEMES],
        help="w8a8: per-channel W, per-token A (default, vLLM's int8 path); O1/O2/O3: per-tensor W with "
        "per-token / per-tensor dynamic / per-tensor static A (O2 does not run in vLLM)",
    )
    p.add_argument(
        "--alpha",
        default="0.5",
        help="migration strength in [0, 1] (default 0.5), or 'auto' to search it per smoothing group "
        "(linear -> linear groups included) on the calibration data",
    )
    p.add_argument(
        "--calib",
        default=None,
        help="calibration text: wiki-gensim (default), wikitext2, austen, a .txt/.jsonl file or a WikiText-style "
        "folder; only its calibration split is used",
    )
    p.add_argument(
        "--rounding",
        default="nearest",
        choices=["nearest", "gptq"],
        help="weight rounding: to nearest (default), or gptq: each linear's output error on the calibration "
        "data minimised (one more calibration pass; same format)",
    )
    p.add_argument(
        "--ranges",
        default="absmax",
        choices=["absmax", "search"],
        help="quantization ranges: the calibrated absmax (default), or search: per linear, static input ranges "
        "and (with --rounding gptq) weight scales clipped where that lowers the calibration error",
    )
    add_check_alphas(p)
    p.add_argument("--num-samples", type=int, default=64, help="calibration sequences (default 64)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per calibration sequence (default 512)")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=DTYPES,
        help="dtype to load and calibrate in, and of the float tensors written",
    )
    p.add_argument(
        "--format", default="compressed-tensors", choices=["compressed-tensors"], help="checkpoint format"
    )
    p.add_argument("--force", action="store_true", help="replace the output directory if it exists")
    p.add_argument(
        "--layerwise",
        action="store_true",
        help="one decoder layer at a time, streaming weights from MODEL's safetensors shards: for models "
        "larger than memory; the same checkpoint, sharded per layer; an interrupted run resumes",
    )
    p.add_argument(
        "--offload-activations",
        action="store_true",
        help="with --layerwise: keep the calibration activations between layers in a file, not in memory",
    )
    p.add_argument("--device", default=None, help="with --layerwise: where layers compute (default cpu)")
    p.set_defaults(func=_quantize)


def _alpha(text: str) -> float | str:
    from smoothquant.errors import ArgumentError

    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise ArgumentError(f"--alpha must be a number in [0, 1] or 'auto', got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ArgumentError(f"--alpha must be in [0, 1], got {value}")
    return value


def _quantize(args: argparse.Namespace) -> int:
    import torch

    from smoothquant.cli.evaluate import parse_check_alphas
    from smoothquant.errors import ArgumentError
    from smoothquant.export.oneshot import DEFAULT_CALIB, quantize_and_save

    for flag, value in (("--num-samples", args.num_samples), ("--seq-len", args.seq_len)):
        if value < 1:
            raise ArgumentError(f"{flag} must be at least 1, got {value}")
    alpha = _alpha(args.alpha)
    check = parse_check_alphas(args.check_alphas, alpha)
    if args.layerwise and check:
        raise ArgumentError("--check-alphas is not implemented with --layerwise; drop one of them")
    if args.layerwise and args.ranges != "absmax":
        raise ArgumentError("--ranges search is not implemented with --layerwise yet; drop one of them")
    if not args.layerwise:
        if args.offload_activations or args.device:
            raise ArgumentError("--offload-activations and --device need --layerwise")
        summary = quantize_and_save(
            args.model,
            args.output,
            scheme=args.scheme,
            alpha=alpha,
            calib=args.calib or DEFAULT_CALIB,
            num_samples=args.num_samples,
            seq_len=args.seq_len,
            dtype=getattr(torch, args.dtype),
            force=args.force,
            weight_rounding=args.rounding,
            ranges=args.ranges,
            check_alphas=check,
        )
        print("\n".join(summary.lines()))
        return 0
    print("\n".join(_layerwise(args, alpha).lines()))
    return 0


def _layerwise(args: argparse.Namespace, alpha: float):
    """``--layerwise``: the same calibration data and recipe as the in-memory path."""
    from pathlib import Path

    import torch
    from transformers import AutoTokenizer

    from smoothquant.data import calibration_batches
    from smoothquant.errors import ModelLoadError
    from smoothquant.export.atomic import check_output
    from smoothquant.export.oneshot import DEFAULT_CALIB
    from smoothquant.layerwise import quantize_checkpoint

    check_output(Path(args.output).absolute(), args.force)
    folder = Path(args.model).expanduser()
    if not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"--layerwise reads a local checkpoint folder (config.json and safetensors shards); {args.model} "
            "is not one"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"cannot load the tokenizer of {folder}, needed for calibration text: {e}"
        ) from e
    calib = args.calib or DEFAULT_CALIB
    batches = calibration_batches(tokenizer, calib, num_samples=args.num_samples, seq_len=args.seq_len)
    recipe = {
        "source_model": args.model,
        "calibration": {"dataset": calib, "num_samples": args.num_samples, "seq_len": args.seq_len},
    }
    return quantize_checkpoint(
        folder,
        args.output,
        batches,
        args.scheme,
        alpha,
        dtype=getattr(torch, args.dtype),
        device=args.device or "cpu",
        seq_len=args.seq_len,
        num_samples=args.num_samples,
        offload_activations=args.offload_activations,
        tokenizer=tokenizer,
        recipe=recipe,
        force=args.force,
        weight_rounding=args.rounding,
    )
