"""``smoothquant eval``: perplexity and fidelity of several quantization configurations.

All rows share one calibration and one floating-point pass; the table is printed at the end and
can be written as JSON or CSV.
"""

from __future__ import annotations

import argparse
import logging
import platform
import time

from smoothquant.cli.flags import add_recipe_args, checked_alpha, parse_alpha, parse_check_alphas

__all__ = ["add_recipe_args", "checked_alpha", "parse_alpha", "parse_check_alphas", "register"]

log = logging.getLogger("smoothquant")

DEFAULT_SCHEMES = "fp,naive,O1,O2,O3,w8a8"


def add_model_args(p: argparse.ArgumentParser, default_data: str) -> None:
    from smoothquant.models import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL, help="embedded name, local folder, .gguf file or hub id")
    p.add_argument(
        "--data", default=default_data, help="evaluation text: wiki-gensim, wikitext2, austen, or a file"
    )
    p.add_argument("--data-dir", help="local WikiText-2 folder for --data wikitext2 (test.txt, valid.txt)")
    # the calibration flags of quantize (add_recipe_args); the older names stay as hidden aliases
    p.add_argument("--calib-data", dest="calib", help=argparse.SUPPRESS)
    p.add_argument("--calib-samples", dest="num_samples", type=int, help=argparse.SUPPRESS)
    p.add_argument("--calib-seq-len", type=int, default=512, help="calibration window length (default 512)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="perplexity, KL and top-1 agreement of quantization schemes vs the floating-point model",
        description="Evaluate quantization configurations of one model on held-out text. Perplexity follows "
        "the reference protocol (non-overlapping --seq-len windows of the concatenated split); KL(FP||Q) "
        "and top-1 agreement compare each row's next-token distribution with the floating-point model's.",
    )
    add_model_args(p, default_data="wiki-gensim")
    p.add_argument(
        "--schemes", default=DEFAULT_SCHEMES, help=f"comma-separated rows (default {DEFAULT_SCHEMES})"
    )
    p.add_argument(
        "--linear-pairs",
        nargs="?",
        const="all",
        default="",
        metavar="SCHEMES",
        help="also smooth v_proj->o_proj and up_proj->down_proj: for every SmoothQuant row, or for the "
        "comma-separated schemes given (e.g. O2,O3)",
    )
    add_recipe_args(p, seq_len=False)  # --alpha, --rounding, --ranges: of the SmoothQuant rows
    p.add_argument(
        "--seq-len", type=int, default=2048, help="evaluation window (default 2048; 512 also common)"
    )
    p.add_argument("--max-tokens", type=int, help="evaluate only the first N tokens of the split")
    p.add_argument(
        "--tasks", help="also run lm-evaluation-harness tasks on every row (e.g. lambada_openai,piqa)"
    )
    p.add_argument("--task-dir", help="folder of lm-eval task YAML files (tasks over local data files)")
    p.add_argument("--task-limit", type=float, help="examples per lm-eval task (a count, or a fraction < 1)")
    p.add_argument("--json", help="write the results (with the settings) to this .json file")
    p.add_argument("--csv", help="write the results to this .csv file")
    p.set_defaults(func=_eval)


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def _eval(args: argparse.Namespace) -> int:
    from smoothquant.data import calibration_batches, eval_windows
    from smoothquant.evaluation.runner import format_table, parse_configs, run, write_results
    from smoothquant.models import load_model

    alpha = checked_alpha(args.alpha or "0.5")
    check = parse_check_alphas(args.check_alphas, alpha)
    rounding, ranges = args.rounding or "nearest", args.ranges or "absmax"
    configs = parse_configs(args.schemes.split(","), alpha, args.linear_pairs, rounding, ranges, check)
    calib_data, num_samples, dtype = args.calib or args.data, args.num_samples or 64, args.dtype or "float32"
    start = time.perf_counter()
    model, tokenizer = load_model(args.model, dtype=torch_dtype(dtype))
    windows = eval_windows(tokenizer, args.data, args.seq_len, args.max_tokens, data_dir=args.data_dir)
    calib = None
    if any(c.scheme is not None for c in configs):
        calib = calibration_batches(
            tokenizer,
            calib_data,
            num_samples,
            args.calib_seq_len,
            data_dir=args.data_dir,
        )
    log.info("evaluating %d rows on %d x %d tokens of %s", len(configs), *windows.shape, args.data)
    extra = None
    if args.tasks:
        from smoothquant.evaluation.harness import headline, run_tasks

        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        limit = (
            None
            if args.task_limit is None
            else (int(args.task_limit) if args.task_limit >= 1 else args.task_limit)
        )

        def extra(row_model):
            scores = run_tasks(row_model, tokenizer, tasks, include_path=args.task_dir, limit=limit)
            return {f"{task}:{h[0]}": h[1] for task, metrics in scores.items() if (h := headline(metrics))}

    results = run(model, configs, windows, calib, progress=not args.no_progress, extra=extra)
    print(format_table(results))
    meta = {
        "model": args.model,
        "data": args.data,
        "seq_len": args.seq_len,
        "windows": windows.shape[0],
        "tokens_scored": results[0].tokens,
        "calibration": None if calib is None else {"data": calib_data, "shape": list(calib.shape)},
        "dtype": dtype,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    for path in (args.json, args.csv):
        if path:
            print(f"wrote {write_results(results, path, meta)}")
    return 0
