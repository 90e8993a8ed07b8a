"""Automatic alpha against single alphas on a real model: the numbers behind docs/auto-alpha.md.

    PYTHONPATH=src python scripts/alpha_report.py --model smollm2-135m --windows 16 \\
        --grid 0.3,0.4,0.5,0.6,0.7,0.8 --json docs/bench/auto-smollm2-135m.json
    python scripts/alpha_report.py --table docs/bench/auto-*.json      # the Markdown summary
    # auto checked against single alphas on the calibration data (quantize_model(check_alphas=...))
    python3 scripts/alpha_report.py ... --grid none --auto pairs --check 0.4,0.5,0.6,0.7,0.8
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
    check: tuple[float, ...] = (),
):
    """``auto``: which auto rows, ``both`` (norm groups only, and with linear pairs) or ``pairs``;
    ``flip``: also alpha 0.5 with the other linear-pairs setting; ``check``: the auto rows keep
    their searched alphas only where these single alphas do not beat them on the calibration data
    (``quantize_model(check_alphas=...)``)."""
    from smoothquant.evaluation.runner import Config
    from smoothquant.quantization import get_scheme

    out = [Config("FP"), Config("naive", "naive")]
    tag = ("" if rounding == "nearest" else f" {rounding}") + ("" if ranges == "absmax" else f" {ranges}")
    atag = tag + (" checked" if check else "")
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
            out.append(Config(f"{scheme} auto{atag}", scheme, "auto", False, rounding, ranges, check))
        out.append(Config(f"{scheme} auto pairs{atag}", scheme, "auto", True, rounding, ranges, check))
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
    check = tuple(grid if args.check == "grid" else [float(a) for a in args.check.split(",") if a])
    rows = configs(
        args.schemes.split(","), grid, extra, args.rounding, args.auto, not args.no_flip, args.ranges, check
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
    """Per model and scheme: FP, naive, the best grid alpha, auto without / with pairs, and auto
    with pairs checked against single alphas. Files of one model are merged (grid rows from one
    run, checked auto rows from another: the pipeline gives the same numbers on H100 and H200)."""
    lines = [
        "| model | rounding | tokens | scheme | FP | naive | best single alpha | auto, norm groups "
        "| auto, + linear pairs | auto + pairs, checked | search / check s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    models: dict[str, tuple[dict, list[dict]]] = {}
    for path in paths:
        doc = json.loads(path.read_text())
        meta, rows = models.setdefault(doc["meta"]["model"], (doc["meta"], []))
        names = {r["name"] for r in rows}
        rows.extend(r for r in doc["results"] if r["name"] not in names)
    for meta, rows in models.values():
        fp = next(r for r in rows if r["name"] == "FP")["perplexity"]
        naive = next(r for r in rows if r["name"] == "naive")["perplexity"]

        def cell(row: dict | None, fp: float = fp) -> str:
            if row is None:
                return "-"
            return f"{row['perplexity']:.2f} ({100 * (row['perplexity'] / fp - 1):+.1f}%)"

        schemes = list(dict.fromkeys(r["scheme"] for r in rows if "alpha_search" in r))
        for scheme in schemes:
            mine = [r for r in rows if r["scheme"] == scheme]
            grid = [r for r in mine if "alpha_search" not in r]
            best = min(grid, key=lambda r: r["perplexity"]) if grid else None
            auto = {(r["linear_pairs"], "model_check" in r): r for r in mine if "alpha_search" in r}
            checked = auto.get((True, True))
            secs = " / ".join(
                f"{r['alpha_search']['seconds']:.0f}"
                + (f" + {r['model_check']['seconds']:.0f}" if "model_check" in r else "")
                for r in auto.values()
            )
            rounding = meta.get("weight_rounding", "nearest")
            if meta.get("ranges", "absmax") != "absmax":
                rounding += f", {meta['ranges']} ranges"
            single = (
                f"{cell(best)} at {best['alpha']:g}{' + pairs' if best['linear_pairs'] else ''}"
                if best
                else "-"
            )
            kept = f" (kept {checked['model_check']['chosen']})" if checked else ""
            lines.append(
                f"| {meta['model']} | {rounding} | {meta['windows'] * meta['seq_len']:,} | {scheme} | {fp:.2f} "
                f"| {cell({'perplexity': naive})} | {single} | {cell(auto.get((False, False)))} "
                f"| {cell(auto.get((True, False)))} | {cell(checked)}{kept} | {secs} |"
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
    p.add_argument(
        "--check",
        default="",
        help="auto rows: single alphas to check the searched ones against on the calibration data "
        "('grid': those of --grid; default: no check)",
    )
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
