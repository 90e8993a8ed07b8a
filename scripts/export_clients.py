"""How each client computes with an exported checkpoint, against the float model it came from.

    PYTHONPATH=src python scripts/export_clients.py smollm2-135m EXPORT_DIR [--dataset wiki-gensim]

Prints, per client (``smoothquant.load``; transformers + compressed-tensors), on evaluation
windows: perplexity, mean KL(float || client) of next-token distributions, top-1 agreement with
the float model, and load time. vLLM is not measured here (it needs a GPU build of vLLM).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

import smoothquant as sq
from smoothquant.data import eval_windows
from smoothquant.models import load_model


def _logits(model, windows: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(w[None]).logits.float() for w in windows])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="the float model the export was made from")
    p.add_argument("export", help="the exported checkpoint directory")
    p.add_argument("--dataset", default="wiki-gensim")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--max-tokens", type=int, default=4096)
    args = p.parse_args()

    fp_model, tokenizer = load_model(args.model)
    windows = eval_windows(tokenizer, args.dataset, args.seq_len, args.max_tokens)
    fp = _logits(fp_model, windows)
    del fp_model
    targets = windows[:, 1:]

    def row(name: str, logits: torch.Tensor, seconds: float) -> str:
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten())
        kl = F.kl_div(logits.log_softmax(-1), fp.log_softmax(-1), log_target=True, reduction="none").sum(-1)
        top1 = (logits.argmax(-1) == fp.argmax(-1)).float().mean()
        return f"| {name} | {nll.exp():.2f} | {kl.mean():.4f} | {top1:.3f} | {seconds:.1f} |"

    print(f"{windows.shape[0]} windows x {args.seq_len} tokens of {args.dataset} (evaluation split)\n")
    print("| client | ppl | KL vs float | top-1 vs float | load s |\n|---|---|---|---|---|")
    print(row("float", fp, 0.0))
    clients = {
        "smoothquant.load": lambda: sq.load(args.export),
        "transformers + compressed-tensors": lambda: AutoModelForCausalLM.from_pretrained(args.export),
    }
    for name, build in clients.items():
        t = time.perf_counter()
        model = build()
        seconds = time.perf_counter() - t
        print(row(name, _logits(model, windows), seconds))
        del model


if __name__ == "__main__":
    main()
