"""Head to head with llm-compressor: its standard W8A8 recipes and ours on the same float model, the
same calibration windows and the same evaluation windows; every checkpoint read back through
transformers + compressed-tensors and measured by one loop (``smoothquant.evaluation.metrics``).

llm-compressor lives in its own virtual environment (it pins other transformers and
compressed-tensors versions than ours); this script installs nothing. Set it up once:

    python3 -m venv /work/peer/venv-llmc
    /work/peer/venv-llmc/bin/pip install torch==2.13.0          # first: the CPU build, never an unpinned torch
    /work/peer/venv-llmc/bin/pip install llmcompressor==0.14.0.1

then (2-core CPU: about an hour at the full protocol; ``--calib 16 --windows 8`` for a quick one)

    PYTHONPATH=src nice -n 10 python scripts/peer_llmcompressor.py --peer-python /work/peer/venv-llmc/bin/python \\
        --model smollm2-135m --data /work/shared/data/wikitext-2 --work /tmp/peer-smollm2

Protocol (issue 20): WikiText-2, calibration ``--calib`` x ``--seq-len`` windows of ``valid``
(``smoothquant.data.calibration_batches``), evaluation the first ``--windows`` windows of ``test``.
The float model is written once as a safetensors folder; both tools quantize that folder. Each
quantization runs in its own process, whose wall time and peak RSS (``wait4``) are reported; a
finished row is kept in ``WORK/rows`` and not rerun. The peer side (``--peer-worker``) imports only
the standard library, torch, transformers, datasets and llmcompressor.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

# llm-compressor's standard W8A8 recipes: SmoothQuant (its default strength 0.8) then round to
# nearest, or then GPTQ; int8 per-channel weights, dynamic per-token int8 activations
PEER_RECIPES = {
    "rtn": "QuantizationModifier",
    "gptq": "GPTQModifier",
}
PEER_DEFAULT = ("0.8/rtn", "0.8/gptq")
OURS_DEFAULT = ("w8a8/0.5/nearest", "w8a8/auto/nearest", "w8a8/0.5/gptq", "w8a8/auto/gptq")


def peer_recipe(spec: str) -> str:
    """``"ALPHA/rtn|gptq"`` -> an llm-compressor recipe (YAML, which ``oneshot`` accepts as a string)."""
    alpha, rounding = spec.split("/")
    return (
        "quant_stage:\n  quant_modifiers:\n"
        f"    SmoothQuantModifier:\n      smoothing_strength: {float(alpha)}\n"
        f"    {PEER_RECIPES[rounding]}:\n      targets: [Linear]\n      scheme: W8A8\n      ignore: [lm_head]\n"
    )


def ours_command(model_dir: Path, out: Path, data: Path, calib: int, seq_len: int, spec: str) -> list[str]:
    """Our side, through the one stable interface (the CLI): ``"SCHEME/ALPHA/ROUNDING[/RANGES]"``.

    The only place that knows our flag names; adapt it when they change."""
    scheme, alpha, rounding, *ranges = spec.split("/")
    return [
        sys.executable, "-m", "smoothquant", "quantize", str(model_dir), "-o", str(out),
        "--scheme", scheme, "--alpha", alpha, "--rounding", rounding, "--ranges", (ranges or ["absmax"])[0],
        "--calib", str(data), "--num-samples", str(calib), "--seq-len", str(seq_len), "--force",
    ]  # fmt: skip


def peer_command(python: str, model_dir: Path, out: Path, calib_file: Path, spec: str) -> list[str]:
    job = {"model": str(model_dir), "out": str(out), "calib": str(calib_file), "recipe": peer_recipe(spec)}
    return [python, str(Path(__file__).resolve()), "--peer-worker", json.dumps(job)]


def peer_worker(job: dict) -> None:
    """Runs in the peer's environment: the float folder, the windows, ``oneshot``, a checkpoint."""
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = load_file(job["calib"])["input_ids"]
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(job["model"])
    oneshot(
        model=model,
        tokenizer=tokenizer,
        dataset=dataset,
        recipe=job["recipe"],
        num_calibration_samples=ids.shape[0],
        max_seq_length=ids.shape[1],
        shuffle_calibration_samples=False,
        output_dir=job["out"],
    )
    tokenizer.save_pretrained(job["out"])


def timed(cmd: list[str], log: Path) -> tuple[float, int]:
    """Run ``cmd`` (output to ``log``); its wall seconds and peak RSS in bytes (this process alone)."""
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-5:]
        raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}), see {log}:\n" + "\n".join(tail))
    return time.perf_counter() - start, usage.ru_maxrss * 1024


def disk_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def prepare(args: argparse.Namespace) -> tuple[Path, Path, object]:
    """The float folder, the calibration windows file and the evaluation windows, in ``args.work``."""
    import torch
    from safetensors.torch import save_file

    from smoothquant.data import calibration_batches, eval_windows
    from smoothquant.models import load_model

    model_dir, calib_file = args.work / "fp", args.work / "calib.safetensors"
    model, tokenizer = load_model(args.model, dtype=torch.float32)
    if not (model_dir / "config.json").is_file():
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    calib = calibration_batches(tokenizer, str(args.data), args.calib, args.seq_len)
    save_file({"input_ids": calib.contiguous()}, calib_file)
    windows = eval_windows(tokenizer, str(args.data), args.seq_len, args.windows * args.seq_len)
    return model_dir, calib_file, windows


def quantize_rows(args: argparse.Namespace, model_dir: Path, calib_file: Path) -> dict[str, dict]:
    """Each recipe quantized in its own process (a finished one is kept); name -> its measurements."""
    rows = {}
    jobs = [(f"llm-compressor SQ {s.replace('/', ' + ')}", "peer", s) for s in args.peer]
    jobs += [(f"ours {s.replace('/', ' ')}", "ours", s) for s in args.ours]
    for name, side, spec in jobs:
        out = args.work / "rows" / re.sub(r"[^A-Za-z0-9.-]+", "_", name)
        record, log = out.parent / f"{out.name}.json", out.parent / f"{out.name}.log"
        if record.is_file():
            rows[name] = json.loads(record.read_text())
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        if side == "peer":
            cmd = peer_command(args.peer_python, model_dir, out, calib_file, spec)
        else:
            cmd = ours_command(model_dir, out, args.data, args.calib, args.seq_len, spec)
        print(f"quantizing: {name}", flush=True)
        seconds, rss = timed(cmd, log)
        rows[name] = {"dir": str(out), "seconds": seconds, "peak_rss": rss, "disk": disk_bytes(out)}
        record.write_text(json.dumps(rows[name]))
    return rows


def evaluate(model_dir: Path, windows, rows: dict[str, dict]) -> list[dict]:
    """FP and every checkpoint, each loaded by transformers (+ compressed-tensors), one loop."""
    import torch
    from transformers import AutoModelForCausalLM

    from smoothquant.evaluation.metrics import compare, reference_pass

    def load(folder: str):
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    reference = reference_pass(load(str(model_dir)), windows, progress=False)
    table = [reference.result("FP").as_dict() | {"disk": disk_bytes(model_dir)}]
    for name, row in rows.items():
        table.append(compare(load(row["dir"]), reference, name, progress=False).as_dict() | row)
    return table


def format_table(table: list[dict]) -> str:
    fp = table[0]["perplexity"]
    lines = [
        "| recipe | perplexity | vs FP | KL vs FP | top-1 vs FP | quantize s | peak RSS GiB | disk MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        quant = "" if "peak_rss" not in r else f"{r['seconds']:.0f} | {r['peak_rss'] / 2**30:.2f}"
        lines.append(
            f"| {r['name']} | {r['perplexity']:.3f} | {(r['perplexity'] / fp - 1) * 100:+.2f}% | "
            f"{r['kl']:.4f} | {r['top1'] * 100:.1f}% | {quant or ' | '} | {r['disk'] / 2**20:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peer-worker", help=argparse.SUPPRESS)
    p.add_argument("--peer-python", help="python of the venv with llmcompressor (none: our rows only)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument(
        "--data", type=Path, default=Path("/work/shared/data/wikitext-2"), help="WikiText-2 folder"
    )
    p.add_argument("--work", type=Path, required=False, help="folder for the float model and the checkpoints")
    p.add_argument("--calib", type=int, default=64, help="calibration windows (default 64)")
    p.add_argument("--windows", type=int, default=32, help="evaluation windows (default 32)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument(
        "--peer", nargs="*", default=list(PEER_DEFAULT), help="ALPHA/rtn|gptq (default 0.8/rtn 0.8/gptq)"
    )
    p.add_argument("--ours", nargs="*", default=list(OURS_DEFAULT), help="SCHEME/ALPHA/ROUNDING[/RANGES]")
    p.add_argument("--json", type=Path, help="also write the table's rows here")
    args = p.parse_args(argv)
    if args.peer_worker:
        peer_worker(json.loads(args.peer_worker))
        return []
    if args.work is None:
        p.error("--work is required")
    if not args.peer_python:
        args.peer = []
    args.work.mkdir(parents=True, exist_ok=True)
    model_dir, calib_file, windows = prepare(args)
    table = evaluate(model_dir, windows, quantize_rows(args, model_dir, calib_file))
    print(f"{args.model}: calibration {args.calib} x {args.seq_len} of valid, evaluation {windows.shape[0]} x "
          f"{args.seq_len} of test ({args.data})")  # fmt: skip
    print(format_table(table))
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))
    return table


if __name__ == "__main__":
    main()
