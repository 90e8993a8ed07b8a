"""Where a scheme's perplexity loss comes from: put one kind of linear back in floating point (or
quantize it differently) and see how much of the loss goes away. The numbers behind "Where the
error is" in docs/auto-alpha.md.

    PYTHONPATH=src python scripts/error_attribution.py --scheme O1 --alpha 0.5
    PYTHONPATH=src python scripts/error_attribution.py --scheme O3 --alpha 0.6 --pairs --rounding gptq
    PYTHONPATH=src python scripts/error_attribution.py --scheme O1 --alpha 0.5 --per-layer down_proj

smollm2-135m, WikiText-2: ``--windows`` x 512 tokens of ``test``, calibration ``--calib`` x 512 of
``valid``. Rows: the scheme as is; each kind of linear in floating point; each kind with per-token
dynamic inputs (static schemes) or per-channel weights (per-tensor schemes); with
``--per-layer KIND``, that kind in floating point in one layer at a time.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from torch import nn

ROOT = Path(__file__).resolve().parents[1]
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2"
KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--scheme", default="O1")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--pairs", action="store_true", help="also smooth linear -> linear pairs")
    p.add_argument("--rounding", default="nearest", choices=["nearest", "gptq"])
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--calib", type=int, default=16)
    p.add_argument("--per-layer", metavar="KIND", help="also: KIND in floating point, one layer at a time")
    args = p.parse_args()

    from smoothquant.calibration import calibrate, collect_hessians
    from smoothquant.data import calibration_batches, eval_windows
    from smoothquant.evaluation.metrics import compare, reference_pass
    from smoothquant.models import load_model
    from smoothquant.quantization import (
        FakeQuantLinear,
        WeightQuant,
        get_scheme,
        quantization_targets,
        quantize,
    )
    from smoothquant.quantization.scheme import TOKEN_DYNAMIC
    from smoothquant.smoothing import smooth

    model, tokenizer = load_model(args.model)
    windows = eval_windows(tokenizer, "wikitext2", 512, args.windows * 512, data_dir=WIKITEXT)
    calib = calibration_batches(tokenizer, "wikitext2", args.calib, 512, data_dir=WIKITEXT)
    stats = calibrate(model, calib, progress=False)
    reference = reference_pass(model, windows, progress=False)
    fp = reference.result("FP").perplexity
    scheme = get_scheme(args.scheme)

    float_model = copy.deepcopy(model)  # smoothed, not quantized: what the rows put back
    smoothed = smooth(float_model, stats, alpha=args.alpha, linear_pairs=args.pairs)
    quantized = copy.deepcopy(float_model)
    hessians = None
    if args.rounding == "gptq":
        names = quantization_targets(float_model)
        hessians = collect_hessians(float_model, calib, names, progress=False)
    quantize(quantized, scheme, smoothed, hessians=hessians)

    def row(name: str, m: nn.Module) -> None:
        r = compare(m, reference, name, progress=False)
        print(
            f"| {name} | {r.perplexity:.2f} ({100 * (r.perplexity / fp - 1):+.1f}%) | {r.kl:.4f} |",
            flush=True,
        )

    def swapped(pick, make) -> nn.Module:
        m = copy.deepcopy(quantized)
        for name, mod in list(m.named_modules()):
            if isinstance(mod, FakeQuantLinear) and pick(name):
                parent, _, child = name.rpartition(".")
                setattr(m.get_submodule(parent), child, make(float_model.get_submodule(name), mod))
        return m

    def as_float(f: nn.Module, q: FakeQuantLinear) -> nn.Module:
        return copy.deepcopy(f)

    def token_dynamic(f: nn.Module, q: FakeQuantLinear) -> nn.Module:
        new = FakeQuantLinear.from_float(f, q.weight_quant, TOKEN_DYNAMIC)
        new.qweight.copy_(q.qweight)  # the same (possibly GPTQ) integers
        return new

    def per_channel(f: nn.Module, q: FakeQuantLinear) -> nn.Module:
        static = None if q.input_scale is None else float(q.input_scale) * 127
        return FakeQuantLinear.from_float(f, WeightQuant("channel"), q.input_quant, input_absmax=static)

    tag = f"{scheme.name} alpha {args.alpha:g}{' + pairs' if args.pairs else ''}, {args.rounding}"
    print(f"{args.model}, {args.windows} x 512 WikiText-2 test tokens, FP perplexity {fp:.2f}")
    print("| row | perplexity | KL |\n|---|---|---|")
    row(tag, quantized)
    variants = [("in floating point", as_float)]
    if scheme.static_inputs:
        variants.append(("per-token dynamic inputs", token_dynamic))
    if scheme.weights.granularity == "tensor":
        variants.append(("per-channel weights", per_channel))
    for label, make in variants:
        for kind in KINDS:
            row(f"{kind} {label}", swapped(lambda n, k=kind: n.endswith(k), make))
    if args.per_layer:
        for i in range(len(model.model.layers)):
            pick = lambda n, i=i: f".layers.{i}." in n and n.endswith(args.per_layer)  # noqa: E731
            row(f"layer {i} {args.per_layer} in floating point", swapped(pick, as_float))


if __name__ == "__main__":
    main()
