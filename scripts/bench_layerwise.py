"""Peak memory and time of layer-by-layer quantization, one fresh process per checkpoint.

    python scripts/make_random_checkpoint.py /tmp/l4 --layers 4
    python scripts/bench_layerwise.py /tmp/l4 /tmp/l8 /tmp/l32 --samples 8 --seq-len 512

Each checkpoint is quantized (``smoothquant.quantize_checkpoint``, w8a8, alpha 0.5, random token
ids) in its own process, so that process's peak RSS (``getrusage``; it includes the ~0.5 GiB of
Python, torch and transformers) is the run's own; the output is deleted afterwards unless
``--keep``. Prints one Markdown table row per checkpoint: depth, weights on disk, peak RSS, peak
device memory, seconds per layer, total. ``--compare`` also runs the in-memory path
(``quantize_model`` + ``save_quantized``) on the first checkpoint and checks every tensor is equal.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

CHILD = "--child"


def _ids(vocab: int, samples: int, seq_len: int):
    import torch

    return torch.randint(0, vocab, (samples, seq_len), generator=torch.Generator().manual_seed(0))


def _rss_now() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def child(args: argparse.Namespace) -> None:
    """Runs in the fresh process: one quantization, a JSON line on stdout."""
    import torch

    import smoothquant as sq
    from smoothquant.layerwise.run import peak_rss

    src = Path(args.checkpoints[0])
    config = json.loads((src / "config.json").read_text())
    ids = _ids(config["vocab_size"], args.samples, args.seq_len)
    dtype = getattr(torch, args.dtype)
    baseline = _rss_now()
    start = time.perf_counter()
    if args.mode == "memory":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype)
        result = sq.quantize_model(model, ids, "w8a8", 0.5, seq_len=args.seq_len)
        sq.save_quantized(result, args.out)
        row = {}
    else:
        summary = sq.quantize_checkpoint(
            src,
            args.out,
            ids,
            "w8a8",
            0.5,
            dtype=dtype,
            device=args.device,
            seq_len=args.seq_len,
            offload_activations=args.offload,
        )
        row = {
            "layers": summary.num_layers,
            "per_layer": sorted(summary.layer_seconds.values()),
            "peak_device": summary.peak_device,
            "activations": summary.activation_bytes,
            "output": summary.output_bytes,
            "source": summary.source_bytes,
        }
    row |= {"seconds": time.perf_counter() - start, "peak_rss": peak_rss(), "baseline": baseline}
    print(json.dumps(row), flush=True)


def _spawn(args: argparse.Namespace, src: Path, out: Path, mode: str) -> dict:
    cmd = [
        sys.executable, __file__, str(src), CHILD, "--mode", mode, "--out", str(out), "--samples",
        str(args.samples), "--seq-len", str(args.seq_len), "--dtype", args.dtype, "--device", args.device,
    ]  # fmt: skip
    if args.offload:
        cmd.append("--offload")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _same_tensors(a: Path, b: Path) -> bool:
    import torch
    from safetensors import safe_open

    def tensors(path: Path):
        for file in sorted(path.glob("*.safetensors")):
            with safe_open(file, framework="pt") as f:
                for key in f.keys():  # noqa: SIM118
                    yield key, file

    left, right = dict(tensors(a)), dict(tensors(b))
    if left.keys() != right.keys():
        return False
    for key in left:  # one tensor at a time: the 7B-shaped outputs are large
        with safe_open(left[key], framework="pt") as f, safe_open(right[key], framework="pt") as g:
            x, y = f.get_tensor(key), g.get_tensor(key)
        if x.dtype != y.dtype or not torch.equal(x, y):
            print(f"differs: {key}", file=sys.stderr)
            return False
    return True


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--samples", type=int, default=8, help="calibration sequences (random token ids)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--offload", action="store_true", help="activations between layers in a file")
    p.add_argument("--work", type=Path, default=Path("/tmp"), help="where the outputs go (deleted)")
    p.add_argument("--keep", action="store_true", help="keep the outputs")
    p.add_argument("--compare", action="store_true", help="check the first against the in-memory path")
    p.add_argument(CHILD, action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="layerwise", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return 0
    gib = 2**30
    print(
        f"w8a8, alpha 0.5, {args.samples} x {args.seq_len} random token ids, compute {args.dtype} on "
        f"{args.device}, activations {'offloaded' if args.offload else 'in memory'}; {os.cpu_count()} CPUs"
    )
    print("| layers | weights on disk | peak RSS | peak device | activations | s/layer (median) | total |")
    print("|---|---|---|---|---|---|---|")
    for src in args.checkpoints:
        out = args.work / f"bench-layerwise-{src.name}"
        shutil.rmtree(out, ignore_errors=True)
        row = _spawn(args, src, out, "layerwise")
        per = row["per_layer"]
        device = f"{row['peak_device'] / gib:.2f} GiB" if row["peak_device"] else "-"
        print(
            f"| {row['layers']} | {row['source'] / gib:.2f} GiB | {row['peak_rss'] / gib:.2f} GiB | {device} | "
            f"{row['activations'] / 2**20:.0f} MiB | {per[len(per) // 2]:.1f} | {row['seconds'] / 60:.1f} min |",
            flush=True,
        )
        if args.compare and src == args.checkpoints[0]:
            ref = args.work / f"bench-memory-{src.name}"
            shutil.rmtree(ref, ignore_errors=True)
            mem = _spawn(args, src, ref, "memory")
            same = _same_tensors(out, ref)
            print(
                f"in-memory path on {src.name}: peak RSS {mem['peak_rss'] / gib:.2f} GiB, "
                f"{mem['seconds'] / 60:.1f} min; every tensor identical: {same}",
                flush=True,
            )
            shutil.rmtree(ref, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
