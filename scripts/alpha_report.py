"""Automatic alpha against single alphas on a real model: the numbers behind docs/auto-alpha.md.

    PYTHONPATH=src python scripts/alpha_report.py --model smollm2-135m --windows 16 \\
        --grid 0.3,0.4,0.5,0.6,0.7,0.8 --json docs/bench/auto-smollm2-135m.json
    python scripts/alpha_report.py --table docs/bench/auto-*.json      # the Markdown summary
    # on a GPU machine, from a copied .gguf, wikitext-2 folder and tokenizer folder (one saved
    # by transformers >= 5.24: 5.17 converts Gemma's GGUF tokenizer wrongly)
    python3 scripts/alpha_report.py --model gemma-3-270m-q4_k_m.gguf --tokenizer gemma-tok \\
        --name gemma3-270m --device cuda --data-dir wikitext-2 --windows 64 \\
        --grid 0.4,0.5,0.6,0.7,0.8 --rounding gptq --auto both --no-flip \\
        --json docs/bench/auto-gemma3-270m-gptq-h200.json

One run evaluates, against one floating-point pass and one calibration (WikiText-2: ``valid`` for
calibration, ``test`` for evaluation, non-overlapping windows): FP, naive W8A8, and for each
scheme every alpha of ``--grid`` (norm-fed groups only for O1 and W8A8, with the linear -> linear
pairs for O3, the settings that work best with one alpha; at 0.5 also the other way round), then
``alpha="auto"`` with and without linear pairs. ``--table`` prints, per model and scheme, the best
single alpha of the grid next to auto and the search's time.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIKITEXT = next(
    (p / "data" / "wikitext-2" for p in (ROOT.parent / "shared", ROOT.parents[1] / "shared") if p.is_dir()),
    ROOT.parent / "shared" / "data" / "wikitext-2",
)
# with one alpha everywhere: linear pairs help per-tensor activations, hurt per-token ones
PAIRS = {"O1": False, "O2": True, "O3": True, "W8A8": False}


def configs(
    schemes: list[str],
    grid: list[float],
    extra: list[str],
    rounding: str,
    auto: str,
    flip: bool = True,
    ranges: str = "absmax",
):
    """``auto``: which auto rows, ``both`` (norm groups only, and with linear pairs) or ``pairs``;
    ``flip``: also alpha 0.5 with the other linear-pairs setting."""
    from smoothquant.evaluation.runner import Config
    from smoothquant.quantization import get_scheme

    out = [Config("FP"), Config("naive", "naive")]
    tag = ("" if rounding == "nearest" else f" {rounding}") + ("" if ranges == "absmax" else f" {ranges}")
    for name in extra:  # more rows for the model's evaluation table, alpha 0.5
        scheme = get_scheme(name).name
        r = rounding if get_scheme(name).migration == "smoothquant" else "nearest"
        rg = ranges if get_scheme(name).migration == "smoothquant" else "absmax"
        out.append(Config(scheme + tag, scheme, 0.5, PAIRS.get(scheme, False), r, rg))
    for name in schemes:
        scheme = get_scheme(name).name
        pairs = PAIRS.get(scheme, False)
        for a in grid:
            out.append(
                Config(
                    f"{scheme} a={a:g}{' pairs' if pairs else ''}{tag}", scheme, a, pairs, rounding, ranges
                )
            )
        if flip and 0.5 in grid:
            out.append(
                Config(
                    f"{scheme} a=0.5{'' if pairs else ' pairs'}{tag}",
                    scheme,
                    0.5,
                    not pairs,
                    rounding,
                    ranges,
                )
            )
        if auto == "both":
            out.append(Config(f"{scheme} auto{tag}", scheme, "auto", False, rounding, ranges))
        out.append(Config(f"{scheme} auto pairs{tag}", scheme, "auto", True, rounding, ranges))
    return out


def measure(args: argparse.Namespace) -> None:
    import torch

    from smoothquant.data import calibration_batches, eval_windows
    from smoothquant.evaluation.runner import format_table, run, write_results
    from smoothquant.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, tokenizer = load_model(args.model, device=args.device)
    if args.tokenizer:  # e.g. one saved by a newer transformers that converts GGUF tokenizers right
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    data = args.data_dir or WIKITEXT
    windows = eval_windows(tokenizer, "wikitext2", args.seq_len, args.windows * args.seq_len, data_dir=data)
    calib = calibration_batches(tokenizer, "wikitext2", args.calib_samples, 512, data_dir=data)
    extra = [e for e in args.extra.split(",") if e]
    grid = [] if args.grid == "none" else [float(a) for a in args.grid.split(",")]
    rows = configs(
        args.schemes.split(","), grid, extra, args.rounding, args.auto, not args.no_flip, args.ranges
    )
    results = run(model, rows, windows, calib, progress=not args.no_progress)
    print(format_table(results))
    meta = {
        "model": args.name or args.model,
        "data": "wikitext2 test",
        "seq_len": args.seq_len,
        "windows": int(windows.shape[0]),
        "calibration": {"data": "wikitext2 valid", "shape": list(calib.shape)},
        "weight_rounding": args.rounding,
        "ranges": args.ranges,
        "machine": (
            torch.cuda.get_device_name()
            if args.device.startswith("cuda")
            else f"{platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} threads"
        ),
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    print(f"wrote {write_results(results, args.json, meta)}")


def table(paths: list[Path]) -> str:
    """Per model and scheme: FP, naive, the best grid alpha, auto without / with pairs."""
    lines = [
        "| model | rounding | tokens | scheme | FP | naive | best single alpha | auto, norm groups "
        "| auto, + linear pairs | search s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        doc = json.loads(path.read_text())
        rows, meta = doc["results"], doc["meta"]
        fp = next(r for r in rows if r["name"] == "FP")["perplexity"]
        naive = next(r for r in rows if r["name"] == "naive")["perplexity"]

        def cell(ppl: float, fp: float = fp) -> str:
            return f"{ppl:.2f} ({100 * (ppl / fp - 1):+.1f}%)"

        schemes = list(dict.fromkeys(r["scheme"] for r in rows if "alpha_search" in r))
        for scheme in schemes:
            mine = [r for r in rows if r["scheme"] == scheme]
            grid = [r for r in mine if "alpha_search" not in r]
            best = min(grid, key=lambda r: r["perplexity"])
            auto = {r["linear_pairs"]: r for r in mine if "alpha_search" in r}
            pairs = " + pairs" if best["linear_pairs"] else ""
            norm = cell(auto[False]["perplexity"]) if False in auto else "-"
            secs = " / ".join(f"{auto[k]['alpha_search']['seconds']:.0f}" for k in (False, True) if k in auto)
            rounding = meta.get("weight_rounding", "nearest")
            if meta.get("ranges", "absmax") != "absmax":
                rounding += f", {meta['ranges']} ranges"
            lines.append(
                f"| {meta['model']} | {rounding} | {meta['windows'] * meta['seq_len']:,} | {scheme} | {fp:.2f} "
                f"| {cell(naive)} | {cell(best['perplexity'])} at {best['alpha']:g}{pairs} "
                f"| {norm} | {cell(auto[True]['perplexity'])} | {secs} |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--schemes", default="O1,O3,w8a8")
    p.add_argument(
        "--grid",
        default="0.3,0.4,0.5,0.6,0.7,0.8",
        help="single alphas to sweep ('none': only the auto rows)",
    )
    p.add_argument("--extra", default="", help="more rows at alpha 0.5, e.g. zeroquant,llm.int8,O2")
    p.add_argument("--windows", type=int, default=16, help="evaluation windows of --seq-len tokens")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--calib-samples", type=int, default=32, help="calibration windows of 512 tokens")
    p.add_argument("--rounding", default="nearest", choices=["nearest", "gptq"], help="weight rounding")
    p.add_argument("--ranges", default="absmax", choices=["absmax", "search"], help="quantization ranges")
    p.add_argument(
        "--auto", default="both", choices=["both", "pairs"], help="auto rows: with and without pairs, or with"
    )
    p.add_argument("--no-flip", action="store_true", help="no alpha-0.5 row with the other pairs setting")
    p.add_argument("--device", default="cpu", help="where the model runs, e.g. cuda")
    p.add_argument("--data-dir", type=Path, help="the wikitext-2 folder (default: ../shared/data/wikitext-2)")
    p.add_argument("--tokenizer", type=Path, help="a tokenizer folder to use instead of the model's")
    p.add_argument("--name", help="the model's name in the results (default: --model)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--json", type=Path, help="write the rows here")
    p.add_argument("--table", type=Path, nargs="+", help="print the summary of these result files")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args()
    if args.table:
        print(table(args.table))
    else:
        if not args.json:
            p.error("--json is required when measuring")
        measure(args)


if __name__ == "__main__":
    main()
