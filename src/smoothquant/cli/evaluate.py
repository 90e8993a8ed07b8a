"""``smoothquant eval``: perplexity and fidelity of several quantization configurations.

All rows share one calibration and one floating-point pass; the table is printed at the end and
can be written as JSON or CSV.
"""

from __future__ import annotations

import argparse
import logging
import platform
import time

log = logging.getLogger("smoothquant")

DEFAULT_SCHEMES = "fp,naive,O1,O2,O3,w8a8"


def parse_alpha(text: str) -> float | str | dict[str, float | None]:
    """``0.5``, ``auto``, or group patterns ``'*.mlp_out=0.85,*=0.5'`` (``none`` skips a group)."""
    from smoothquant.errors import ArgumentError

    text = text.strip()
    if "=" not in text:
        try:
            return float(text)
        except ValueError:
            return text  # a named strategy such as "auto"; smooth() validates it
    mapping: dict[str, float | None] = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        try:
            mapping[key.strip()] = None if value.strip().lower() == "none" else float(value)
        except ValueError as e:
            raise ArgumentError(f"alpha {item!r}: expected PATTERN=NUMBER or PATTERN=none") from e
    return mapping


def add_check_alphas(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--check-alphas",
        nargs="?",
        const="0.4,0.5,0.6,0.7,0.8",
        default=None,
        metavar="ALPHAS",
        help="with --alpha auto: also quantize with each of these single alphas (default 0.4,...,0.8) and keep "
        "a single alpha instead of the searched ones where it lowers the calibration perplexity by over "
        "0.25%% (one full quantization per candidate)",
    )


def parse_check_alphas(text: str | None, alpha: object) -> tuple[float, ...]:
    """``--check-alphas``: () when absent; refused unless alpha is ``auto``."""
    from smoothquant.errors import ArgumentError
    from smoothquant.search.check import check_grid

    if text is None:
        return ()
    if alpha != "auto":
        raise ArgumentError("--check-alphas checks the result of --alpha auto; add --alpha auto or drop it")
    try:
        values = [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise ArgumentError(f"--check-alphas must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise ArgumentError("--check-alphas needs at least one alpha (or none after it: 0.4,...,0.8)")
    return check_grid(values)  # the library's own range check


def add_model_args(p: argparse.ArgumentParser, default_data: str) -> None:
    from smoothquant.models import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL, help="embedded name, local folder, .gguf file or hub id")
    p.add_argument(
        "--data", default=default_data, help="evaluation text: wiki-gensim, wikitext2, austen, or a file"
    )
    p.add_argument("--data-dir", help="local WikiText-2 folder for --data wikitext2 (test.txt, valid.txt)")
    p.add_argument("--calib-data", help="calibration text (default: the calibration split of --data)")
    p.add_argument("--calib-samples", type=int, default=64, help="calibration windows (default 64)")
    p.add_argument("--calib-seq-len", type=int, default=512, help="calibration window length (default 512)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
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
        "--alpha", default="0.5", help="migration strength: 0.5, 'auto', or '*.mlp_out=0.85,*=0.5'"
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
    p.add_argument(
        "--rounding",
        default="nearest",
        choices=["nearest", "gptq"],
        help="weight rounding of the SmoothQuant rows (baselines keep nearest): nearest (default) or gptq",
    )
    p.add_argument(
        "--ranges",
        default="absmax",
        choices=["absmax", "search"],
        help="quantization ranges of the SmoothQuant rows: calibrated absmax (default) or search (see quantize)",
    )
    add_check_alphas(p)
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

    alpha = parse_alpha(args.alpha)
    check = parse_check_alphas(args.check_alphas, alpha)
    configs = parse_configs(
        args.schemes.split(","), alpha, args.linear_pairs, args.rounding, args.ranges, check
    )
    start = time.perf_counter()
    model, tokenizer = load_model(args.model, dtype=torch_dtype(args.dtype))
    windows = eval_windows(tokenizer, args.data, args.seq_len, args.max_tokens, data_dir=args.data_dir)
    calib = None
    if any(c.scheme is not None for c in configs):
        calib = calibration_batches(
            tokenizer,
            args.calib_data or args.data,
            args.calib_samples,
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
        "calibration": None
        if calib is None
        else {"data": args.calib_data or args.data, "shape": list(calib.shape)},
        "dtype": args.dtype,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    for path in (args.json, args.csv):
        if path:
            print(f"wrote {write_results(results, path, meta)}")
    return 0
