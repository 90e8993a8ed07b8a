"""How noisy is the model-level check's score? Paired per-token calibration losses of candidates.

    PYTHONPATH=src python scripts/check_noise_probe.py        # smollm2-135m, O1, 2-core CPU: ~17 min

Builds smollm2-135m O1 (GPTQ, searched ranges) with the searched alphas and with single alphas 0.4
and 0.5, scores each on the check's calibration sequences (WikiText-2 ``valid``, 32 x 512), and
prints the mean and standard error of the paired per-token loss differences: the yardstick for
``smoothquant.search.check.MARGIN`` (docs/auto-alpha.md).
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import smoothquant as sq
from smoothquant.calibration.batches import sequences
from smoothquant.data import calibration_batches
from smoothquant.models import load_model

WIKITEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2"


@torch.no_grad()
def per_token(model: torch.nn.Module, rows: list[torch.Tensor]) -> torch.Tensor:
    out = []
    for r in rows:
        logits = model(input_ids=r[None], use_cache=False).logits[0, :-1].float()
        out.append(F.cross_entropy(logits, r[1:], reduction="none"))
    return torch.cat(out)


def main() -> None:
    model, tokenizer = load_model("smollm2-135m")
    calib = calibration_batches(tokenizer, "wikitext2", 32, 512, data_dir=WIKITEXT)
    rows = sequences(calib, 512)
    stats = sq.calibrate(model, calib, progress=False)
    losses = {}
    for name, alpha, pairs in (("searched", "auto", True), ("0.4", 0.4, False), ("0.5", 0.5, False)):
        start = time.perf_counter()
        built = sq.quantize_model(
            copy.deepcopy(model),
            calib,
            "O1",
            alpha,
            linear_pairs=pairs,
            stats=stats,
            weight_rounding="gptq",
            ranges="search",
            progress=False,
        )
        losses[name] = per_token(built.model, rows)
        print(
            f"{name}: calibration perplexity {math.exp(losses[name].mean()):.4f} ({time.perf_counter() - start:.0f} s)"
        )
    for name in ("0.4", "0.5"):
        d = losses["searched"] - losses[name]
        se = float(d.std()) / math.sqrt(d.numel())
        print(
            f"searched - {name}: mean {float(d.mean()):+.5f} nats, per-token sd {float(d.std()):.4f}, "
            f"SE {se:.5f} nats ({100 * math.expm1(se):.2f}% of perplexity), z {float(d.mean()) / se:+.2f}, "
            f"{d.numel()} tokens"
        )


if __name__ == "__main__":
    main()
