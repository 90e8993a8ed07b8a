"""O3 with and without ``float_outliers``: the numbers behind "O3" in docs/peer.md.

One float reference, one calibration, one smoothing (``--alpha`` + linear pairs), one pass for
the GPTQ Hessians (and, with ``--ranges search``, one for the input ranges); then the model is
quantized once per ``--ratios`` entry ('none': off) with ``Scheme.float_outliers`` at that ratio,
and each is measured against the float model (perplexity, KL, top-1), with the linears kept in
floating point. ``quantize`` drops the Hessians and ranges of the kept linears, so every row
shares the passes.

    PYTHONPATH=src python scripts/o3_outliers.py --model smollm2-135m --calib 64 --windows 32 \
        --alpha 0.5 --rounding gptq --ratios none,300

Protocol of issue 20: calibration ``--calib`` x 512 windows of WikiText-2 ``valid``, evaluation the
first ``--windows`` x 512 of ``test``.
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import replace
from pathlib import Path

import torch

WIKITEXT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext-2"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--rounding", default="gptq", choices=["nearest", "gptq"])
    p.add_argument("--ranges", default="absmax", choices=["absmax", "search"])
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--windows", type=int, default=32)
    p.add_argument("--ratios", default="none,300", help="comma-separated float_outliers ratios ('none': off)")
    p.add_argument("--data-dir", type=Path, default=WIKITEXT)
    args = p.parse_args()

    from smoothquant.calibration import calibrate, collect_hessians, search_input_clip
    from smoothquant.data import calibration_batches, eval_windows
    from smoothquant.evaluation.metrics import compare, reference_pass
    from smoothquant.models import load_model
    from smoothquant.quantization import get_scheme, quantization_targets, quantize
    from smoothquant.smoothing import smooth

    start = time.perf_counter()
    model, tokenizer = load_model(args.model)
    windows = eval_windows(tokenizer, "wikitext2", 512, args.windows * 512, data_dir=args.data_dir)
    calib = calibration_batches(tokenizer, "wikitext2", args.calib, 512, data_dir=args.data_dir)
    reference = reference_pass(model, windows, progress=False)
    fp = reference.result("FP").perplexity
    smoothed = smooth(model, calibrate(model, calib, progress=False), args.alpha, linear_pairs=True)
    targets = quantization_targets(model)
    clip = (
        search_input_clip(model, calib, targets, smoothed, progress=False) if args.ranges == "search" else {}
    )
    hessians = collect_hessians(model, calib, targets, progress=False) if args.rounding == "gptq" else None
    print(
        f"{args.model} O3, alpha {args.alpha:g} + pairs, {args.rounding}, ranges {args.ranges}; FP {fp:.3f}"
    )
    print(f"(float reference, calibration, smoothing and passes: {time.perf_counter() - start:.0f} s)")
    print("| float_outliers | perplexity | vs FP | KL | top-1 | linears in float |")
    print("|---|---|---|---|---|---|")
    for ratio in args.ratios.split(","):
        scheme = get_scheme("O3")
        if ratio.strip() != "none":
            scheme = replace(scheme, float_outliers=float(ratio))
        m = copy.deepcopy(model)
        quantize(
            m,
            scheme,
            smoothed,
            hessians=hessians,
            search_weight_scales=bool(clip) and hessians is not None,
            input_clip=clip,
        )
        kept = [
            n.removeprefix("model.layers.") for n in targets if type(m.get_submodule(n)) is torch.nn.Linear
        ]
        r = compare(m, reference, "O3", progress=False)
        print(
            f"| {ratio} | {r.perplexity:.3f} | {100 * (r.perplexity / fp - 1):+.1f}% | {r.kl:.4f} | "
            f"{100 * r.top1:.1f}% | {len(kept)}: {', '.join(kept) or '-'} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
