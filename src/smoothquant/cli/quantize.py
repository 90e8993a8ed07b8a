"""``smoothquant quantize MODEL -o DIR``: the one command from a float model to a servable checkpoint.

The flags are a thin mapping onto a :class:`~smoothquant.recipe.Recipe` (``--recipe FILE`` reads
one, e.g. a checkpoint's ``smoothquant_recipe.json``; flags given beside it replace its fields), so
the command line, the library and the written checkpoint name every setting the same way.
"""

from __future__ import annotations

import argparse

from smoothquant.recipe import EXPORTABLE_SCHEMES

# flag destination -> Recipe field (the flags without a default: given or not)
RECIPE_FLAGS = {
    "scheme": "scheme",
    "alpha": "alpha",
    "rounding": "weight_rounding",
    "ranges": "ranges",
    "check_alphas": "check_alphas",
    "calib": "calibration",
    "num_samples": "num_samples",
    "seq_len": "seq_len",
    "dtype": "dtype",
}


def register(sub: argparse._SubParsersAction) -> None:
    from smoothquant.cli.flags import add_recipe_args

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
        "--recipe",
        help="a recipe JSON file, or a checkpoint folder whose smoothquant_recipe.json to follow (the same "
        "model and recipe give the same checkpoint); flags given beside it replace its settings",
    )
    p.add_argument(
        "--scheme",
        default=None,
        type=str.lower,
        choices=[s.lower() for s in EXPORTABLE_SCHEMES],
        help="w8a8: per-channel W, per-token A (default, vLLM's int8 path); O1/O2/O3: per-tensor W with "
        "per-token / per-tensor dynamic / per-tensor static A (O2 does not run in vLLM)",
    )
    add_recipe_args(p)
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


def recipe_from_args(args: argparse.Namespace):
    """The Recipe the flags say: ``--recipe``'s (or the defaults), the flags given replacing its
    fields, then the calibration defaults of a command that builds its own data."""
    from smoothquant.cli.flags import checked_alpha, parse_check_alphas
    from smoothquant.errors import ArgumentError
    from smoothquant.oneshot import complete_recipe
    from smoothquant.recipe import Recipe

    for flag, value in (("--num-samples", args.num_samples), ("--seq-len", args.seq_len)):
        if value is not None and value < 1:
            raise ArgumentError(f"{flag} must be at least 1, got {value}")
    base = Recipe.from_file(args.recipe) if args.recipe else None
    given = {RECIPE_FLAGS[k]: getattr(args, k) for k in RECIPE_FLAGS if getattr(args, k) is not None}
    if "alpha" in given:
        given["alpha"] = checked_alpha(given["alpha"])
    alpha = given.get("alpha", base.alpha if base else 0.5)
    if "check_alphas" in given:
        given["check_alphas"] = parse_check_alphas(given["check_alphas"], alpha)
    elif base is not None and base.check_alphas and alpha != "auto":
        given["check_alphas"] = ()  # a recipe's check of "auto" does not carry over to a given alpha
    recipe = base.replace(**given) if base else Recipe(**given)
    return complete_recipe(recipe)


def _quantize(args: argparse.Namespace) -> int:
    from smoothquant.errors import ArgumentError

    recipe = recipe_from_args(args)
    if args.layerwise and recipe.check_alphas:
        raise ArgumentError(
            "--check-alphas is not available with --layerwise: it scores the whole quantized model once per "
            "candidate alpha; drop one of them"
        )
    if not args.layerwise and (args.offload_activations or args.device):
        raise ArgumentError("--offload-activations and --device need --layerwise")
    from smoothquant.preflight import check_quantize

    check_quantize(
        args.model,
        args.output,
        recipe.calibration,
        recipe.seq_len,
        args.force,
        dtype=recipe.dtype or "float32",
    )
    if not args.layerwise:
        from smoothquant.oneshot import quantize_and_save

        print("\n".join(quantize_and_save(args.model, args.output, recipe, force=args.force).lines()))
        return 0
    print("\n".join(_layerwise(args, recipe).lines()))
    return 0


def _layerwise(args: argparse.Namespace, recipe):
    """``--layerwise``: the same calibration data and recipe as the in-memory path."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from smoothquant.data import calibration_batches
    from smoothquant.errors import ModelLoadError
    from smoothquant.layerwise import quantize_checkpoint
    from smoothquant.oneshot import source_record

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
    batches = calibration_batches(tokenizer, recipe.calibration, recipe.num_samples, recipe.seq_len)
    return quantize_checkpoint(
        folder,
        args.output,
        batches,
        recipe,
        device=args.device or "cpu",
        offload_activations=args.offload_activations,
        tokenizer=tokenizer,
        record=source_record(args.model, recipe),
        force=args.force,
    )
