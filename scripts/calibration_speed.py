"""Calibration wall and CPU time with and without computing the logits, on the same loaded model.

    nice -n 10 python scripts/calibration_speed.py [--model smollm2-135m] [--samples 8] [--rounds 3]

The two variants run alternately (A B A B ...) so that other load on the machine hits both alike;
the statistics of the two are compared bit for bit. "full" is the pass as it was before
calibration skipped the logits (``forward=`` a plain ``model(input_ids)`` call).
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import time

import torch

from smoothquant.calibration import calibrate
from smoothquant.data import calibration_batches
from smoothquant.models import load_model

calibrate_module = importlib.import_module("smoothquant.calibration.calibrate")  # the function shadows it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model, tokenizer = load_model(args.model)
    batches = calibration_batches(tokenizer, "wiki-gensim", num_samples=args.samples, seq_len=args.seq_len)
    variants = {"full": calibrate_module._full_forward, "skip-logits": None}
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    stats = {}
    for _ in range(args.rounds):
        for name, forward in variants.items():
            wall, cpu = time.perf_counter(), time.process_time()
            stats[name] = calibrate(model, batches, progress=False, forward=forward)
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    full, fast = stats["full"], stats["skip-logits"]
    same = all(
        torch.equal(getattr(full, kind)[n], getattr(fast, kind)[n])
        for kind in ("inputs", "outputs")
        for n in getattr(full, kind)
    )
    print(
        f"{args.model}, {args.samples} x {args.seq_len} tokens, {torch.get_num_threads()} threads, "
        f"load {os.getloadavg()[0]:.2f}; statistics bit-identical: {same}"
    )
    for name, runs in times.items():
        walls, cpus = [w for w, _ in runs], [c for _, c in runs]
        print(
            f"{name:12s} wall {statistics.median(walls):6.2f} s (runs {', '.join(f'{w:.2f}' for w in walls)}), "
            f"CPU {statistics.median(cpus):6.2f} s"
        )


if __name__ == "__main__":
    main()
