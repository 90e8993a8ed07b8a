"""Model-level benchmark: prefill latency, decode tokens/s, weight and peak memory.

On CUDA every forward is captured in a CUDA graph (as a serving loop would run it) and timed with
events; prefill returns only the last position's logits (what generation needs). Decode uses a
``StaticCache`` filled to the context length, then times single-token steps. On CPU the wall
clock times eager calls. With ``kv_caches=("float", "int8")`` every decode point is also timed
with the INT8 KV cache (``runtime/kv_cache.py``; keys ``"b1@1024 kv8"``). W8A8 models are built
the way users build them: ``quantize`` (fake quant) then ``runtime.convert``; smoothing is
skipped, since speed does not depend on the values.
"""

from __future__ import annotations

import copy
import gc
import inspect
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from smoothquant.bench.timing import cpu_time_ms, cuda_time_ms
from smoothquant.calibration import calibrate
from smoothquant.quantization import get_scheme, quantize
from smoothquant.runtime import Int8StaticCache, convert, enable_int8_kv_cache
from smoothquant.runtime.kv_cache import cache_bytes

KV_CACHES = ("float", "int8")

LLAMA_2_7B = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    vocab_size=32000,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
)


@dataclass
class ModelResult:
    label: str
    weight_gb: float
    block_weight_gb: float  # decoder blocks only: what W8A8 quantizes
    prefill_ms: dict[str, float] = field(default_factory=dict)  # "1x512" -> ms
    peak_gb: dict[str, float] = field(default_factory=dict)  # "1x512" -> GB (weights + activations)
    # "b1@1024" (float cache), "b1@1024 kv8" (INT8 cache) -> tokens/s
    decode_tok_s: dict[str, float] = field(default_factory=dict)
    kv_cache_gb: dict[str, float] = field(default_factory=dict)  # same keys -> GB of K/V held (static cache)
    notes: list[str] = field(default_factory=list)


def random_llama_2_7b(device: str | torch.device, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    from transformers import AutoModelForCausalLM, LlamaConfig

    with torch.device(device):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**LLAMA_2_7B), dtype=dtype)
    return model.eval()


def load_model(spec: str, device: str, dtype: torch.dtype) -> nn.Module:
    """``random:llama-2-7b``, a ``.gguf`` file, or a Hugging Face model directory."""
    from transformers import AutoModelForCausalLM

    if spec == "random:llama-2-7b":
        return random_llama_2_7b(device, dtype)
    path = Path(spec)
    if path.suffix == ".gguf":
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.to(device).eval()


def _bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is not None and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def weight_bytes(module: nn.Module) -> int:
    return _bytes([*module.parameters(), *module.buffers()])


def _blocks(model: nn.Module) -> nn.Module:
    from smoothquant.families import resolve

    return model.get_submodule(resolve(model).layers_path)


def _time(fn, device: torch.device, reps: int, result: ModelResult) -> float:
    if device.type != "cuda":
        return cpu_time_ms(fn, reps=reps)
    try:
        return cuda_time_ms([fn], reps=reps, warmup=2)
    except Exception as e:  # a model path that cannot be captured: time it eagerly and say so
        note = f"eager timing (graph capture failed: {type(e).__name__})"
        if note not in result.notes:
            result.notes.append(note)
        return cuda_time_ms([fn], reps=reps, warmup=1, graph=False)


@torch.no_grad()
def measure(
    model: nn.Module,
    label: str,
    prefill: list[tuple[int, int]],
    decode: list[tuple[int, int]],
    reps: int = 10,
    kv_caches: tuple[str, ...] = ("float",),
) -> ModelResult:
    from transformers import StaticCache

    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    # transformers renamed past_key_values to cache (5.24); accept both
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    res = ModelResult(label, weight_bytes(model) / 1e9, weight_bytes(_blocks(model)) / 1e9)
    for b, s in prefill:
        ids = torch.randint(0, vocab, (b, s), device=device)

        def fn(ids=ids):
            return model(input_ids=ids, use_cache=False, logits_to_keep=1)

        if device.type == "cuda":
            torch.cuda.synchronize()
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            res.peak_gb[f"{b}x{s}"] = (torch.cuda.max_memory_allocated() - base) / 1e9 + res.weight_gb
        res.prefill_ms[f"{b}x{s}"] = _time(fn, device, reps, res)
    attn = model.config._attn_implementation
    for kind, (b, ctx) in [(k, bc) for k in kv_caches for bc in decode]:
        steps = reps + 8  # every step advances the cache: leave room for warm-up and capture
        if kind == "int8":
            enable_int8_kv_cache(model)
            cache = Int8StaticCache(model.config, max_cache_len=ctx + steps + 8)
        else:
            model.set_attn_implementation(attn)
            cache = StaticCache(config=model.config, max_cache_len=ctx + steps + 8)
        fill = torch.randint(0, vocab, (b, ctx), device=device)
        model(input_ids=fill, use_cache=True, logits_to_keep=1, **{cache_kw: cache})
        tok = torch.randint(0, vocab, (b, 1), device=device)

        def step(tok=tok, cache=cache):
            return model(input_ids=tok, use_cache=True, **{cache_kw: cache})

        ms = _time(step, device, reps, res)
        key = f"b{b}@{ctx}" + (" kv8" if kind == "int8" else "")
        res.decode_tok_s[key] = b / ms * 1e3
        res.kv_cache_gb[key] = cache_bytes(cache) / 1e9
        del cache
    model.set_attn_implementation(attn)
    return res


def run(
    model_spec: str = "random:llama-2-7b",
    schemes: tuple[str, ...] = ("O1", "O3", "w8a8"),
    device: str = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    prefill: list[tuple[int, int]] = ((1, 512), (4, 2048)),
    decode: list[tuple[int, int]] = ((1, 1024), (16, 1024)),
    baselines: tuple[torch.dtype, ...] = (),
    quantize_lm_head: bool = False,
    reps: int = 10,
    kv_caches: tuple[str, ...] = ("float",),
    unfused: bool = False,
    log=print,
    backends: tuple[str, ...] = ("auto",),
) -> list[ModelResult]:
    """Measure the floating-point model (``dtype`` and any ``baselines`` dtypes), then each scheme;
    decode with each of ``kv_caches`` ("float": the model's dtype, "int8"). ``unfused`` also times
    each scheme with its sibling linears (q/k/v, gate/up) as separate GEMMs, as transformers'
    floating-point model runs them (label ``+unfused``). ``backends``: INT8 runtime backends to time
    each scheme on (label ``+triton`` etc. for all but ``auto``)."""
    base = load_model(model_spec, device, dtype)
    results = [measure(base, str(dtype).removeprefix("torch."), list(prefill), list(decode), reps, kv_caches)]
    log(format_result(results[-1]))
    for bdtype in baselines:
        other = copy.deepcopy(base).to(bdtype)
        label = str(bdtype).removeprefix("torch.")
        results.append(measure(other, label, list(prefill), list(decode), reps, kv_caches))
        log(format_result(results[-1]))
        del other
    stats = None
    if any(not get_scheme(s).inputs.dynamic for s in schemes):
        ids = torch.randint(0, base.config.vocab_size, (2, 128), device=base.device)
        stats = calibrate(base, ids)
    fusions = (False, True) if unfused else (True,)
    runs = [(s, fuse, b) for s in schemes for fuse in fusions for b in backends]
    for i, (scheme, fuse, backend) in enumerate(runs):
        # the last run quantizes the base model itself: one copy fewer (16@4096 with a bf16
        # cache does not fit beside two copies of a 7B model on an 80 GB GPU)
        last = i == len(runs) - 1
        q = quantize(base, scheme, stats, quantize_lm_head=quantize_lm_head, inplace=last)
        convert(q, backend, fuse_siblings=fuse)
        label = scheme + ("+head" if quantize_lm_head else "") + ("" if fuse else "+unfused")
        label += "" if backend == "auto" else f"+{backend}"
        results.append(measure(q, label, list(prefill), list(decode), reps, kv_caches))
        log(format_result(results[-1]))
        del q
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return results


def format_result(r: ModelResult) -> str:
    pre = " ".join(f"prefill {k} {v:.2f} ms" for k, v in r.prefill_ms.items())
    dec = " ".join(f"decode {k} {v:.1f} tok/s" for k, v in r.decode_tok_s.items())
    peak = " ".join(f"peak {k} {v:.2f} GB" for k, v in r.peak_gb.items())
    notes = f" [{'; '.join(r.notes)}]" if r.notes else ""
    return f"{r.label:8s} weights {r.weight_gb:.2f} GB (blocks {r.block_weight_gb:.2f}) {pre} {dec} {peak}{notes}"


def format_table(results: list[ModelResult]) -> str:
    """Markdown table, speedups and memory ratios against the first row (decode with the INT8 KV
    cache against the first row's float cache: the speed-up over the plain floating-point model)."""
    ref = results[0]
    keys_p, keys_d = list(ref.prefill_ms), list(ref.decode_tok_s)
    head = ["model", "weights GB", "blocks GB"]
    head += [f"prefill {k} ms" for k in keys_p] + [f"decode {k} tok/s" for k in keys_d]
    head += [f"peak {k} GB" for k in ref.peak_gb]
    kv8 = any(k.endswith(" kv8") for k in keys_d)
    if kv8:
        head += [f"KV {k} GB" for k in keys_d]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r.label, f"{r.weight_gb:.2f} ({ref.weight_gb / r.weight_gb:.2f}x)"]
        cells.append(f"{r.block_weight_gb:.2f} ({ref.block_weight_gb / r.block_weight_gb:.2f}x)")
        cells += [f"{r.prefill_ms[k]:.1f} ({ref.prefill_ms[k] / r.prefill_ms[k]:.2f}x)" for k in keys_p]
        cells += [
            f"{r.decode_tok_s[k]:.1f} ({r.decode_tok_s[k] / ref.decode_tok_s[k.removesuffix(' kv8')]:.2f}x)"
            for k in keys_d
        ]
        cells += [f"{r.peak_gb[k]:.2f} ({ref.peak_gb[k] / r.peak_gb[k]:.2f}x)" for k in ref.peak_gb]
        if kv8:
            cells += [f"{r.kv_cache_gb[k]:.2f}" for k in keys_d]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
