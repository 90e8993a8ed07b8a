"""Probe: does a floating-point attention-sink prefix (PrefixQuant-style) rescue static schemes?

The first token of every window becomes an attention sink with massive activations (smollm2-135m:
~3,000 at layer 11's down_proj input against a median of 1.35), and O3's one static scale per
tensor has to cover it. Here a fixed prefix (``--prefix``, token ids) is run through the
*smoothed, unquantized* model first and handed to the quantized model as its KV cache, so the
sink lives in the prefix and never reaches a quantized linear. Calibration sees the windows
behind the same prefix, so the static scales exclude it too. Perplexity is scored on the window
tokens only, against the floating-point model with the same prefix.

    PYTHONPATH=src python scripts/sink_prefix_probe.py --prefix 0 --alpha 0.6 --rounding gptq

This is a measurement, not a library feature: the block-by-block alpha search, the INT8 runtime
and the exporters do not know about a prefix cache.
"""

from __future__ import annotations

import argparse
import copy
import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WIKITEXT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext-2"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prefix", default="0", help="comma-separated token ids ('' for none)")
    p.add_argument("--scheme", default="O3")
    p.add_argument("--alpha", type=float, default=0.6)
    p.add_argument("--rounding", default="nearest", choices=["nearest", "gptq"])
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--calib", type=int, default=16)
    p.add_argument("--attribute", action="store_true", help="also: down_proj weights / inputs in float")
    args = p.parse_args()

    from smoothquant.calibration import calibrate
    from smoothquant.calibration.hessians import hessian_hooks, hessians_of
    from smoothquant.data import calibration_batches, eval_windows
    from smoothquant.models import load_model
    from smoothquant.quantization import FakeQuantLinear, get_scheme, quantization_targets, quantize
    from smoothquant.smoothing import smooth

    model, tokenizer = load_model(args.model)
    windows = eval_windows(tokenizer, "wikitext2", 512, args.windows * 512, data_dir=WIKITEXT)
    calib = calibration_batches(tokenizer, "wikitext2", args.calib, 512, data_dir=WIKITEXT)
    prefix = [int(t) for t in args.prefix.split(",") if t.strip()]

    def runner(prefix_model: nn.Module) -> Callable[[nn.Module, torch.Tensor], object]:
        """``forward(model, ids)``: ``ids`` behind the prefix, whose KV ``prefix_model`` computes."""

        def forward(m: nn.Module, ids: torch.Tensor) -> object:
            if not prefix:
                return m(input_ids=ids, use_cache=False)
            cache = prefix_model(input_ids=torch.tensor([prefix] * ids.shape[0]), use_cache=True)
            return m(input_ids=ids, past_key_values=cache.past_key_values, use_cache=True)

        return forward

    @torch.no_grad()
    def perplexity(m: nn.Module, forward: Callable) -> float:
        nll, n = 0.0, 0
        for ids in windows.split(4):
            logits = forward(m, ids).logits[:, :-1].float()
            nll += float(F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="sum"))
            n += ids[:, 1:].numel()
        return math.exp(nll / n)

    stats = calibrate(model, calib, progress=False, forward=runner(copy.deepcopy(model)))
    quantized = copy.deepcopy(model)
    smoothed_stats = smooth(quantized, stats, alpha=args.alpha, linear_pairs=True)
    # the prefix cache must come from the smoothed model: v -> o smoothing rescales V
    smoothed = copy.deepcopy(quantized).eval()
    forward = runner(smoothed)
    hessians = None
    if args.rounding == "gptq":
        apart = runner(copy.deepcopy(smoothed))  # the prefix pass must not reach the hooks
        with torch.no_grad(), hessian_hooks(smoothed, list(quantization_targets(smoothed))) as obs:
            for ids in calib.split(1):
                apart(smoothed, ids)
        hessians = hessians_of(obs)
    quantize(quantized, get_scheme(args.scheme), smoothed_stats, hessians=hessians)

    fp = perplexity(smoothed, forward)
    print(f"{args.model}, {args.windows} x 512 WikiText-2 test tokens, prefix {prefix or 'none'}")
    print(f"| row | perplexity |\n|---|---|\n| FP (same prefix) | {fp:.2f} |")

    def row(name: str, m: nn.Module) -> None:
        ppl = perplexity(m, forward)
        print(f"| {name} | {ppl:.2f} ({100 * (ppl / fp - 1):+.1f}%) |", flush=True)

    row(f"{args.scheme} alpha {args.alpha:g} + pairs, {args.rounding}", quantized)
    if not args.attribute:
        return
    for label in ("down_proj weights in float", "down_proj inputs in float"):
        m = copy.deepcopy(quantized)
        for name, mod in m.named_modules():
            if isinstance(mod, FakeQuantLinear) and name.endswith("down_proj"):
                if label.startswith("down_proj weights"):
                    w = smoothed.get_submodule(name).weight.detach()
                    mod.dequantized_weight = lambda dtype, w=w: w.to(dtype)
                else:
                    mod.forward = lambda x, mod=mod: F.linear(x, mod.dequantized_weight(x.dtype), mod.bias)
        row(label, m)


if __name__ == "__main__":
    main()
