"""The INT8 KV cache: exact quantization of written rows, the decode kernel (Triton's interpreter on
CPU) against float64 attention over the dequantized cache, and greedy generation of tiny models."""

from __future__ import annotations

import inspect

import pytest
import torch

from smoothquant.errors import KVCacheError
from smoothquant.kernels.packing import KV_PACK_ALIGN, unpack
from smoothquant.quantization.quantizer import quantize_activation
from smoothquant.quantization.scheme import TOKEN_DYNAMIC
from smoothquant.runtime import Int8DynamicCache, Int8StaticCache, enable_int8_kv_cache, kv_ops
from smoothquant.runtime.kv_cache import int8_kv_attention
from tiny_models import tiny_model

triton = pytest.importorskip("triton", reason="the Triton kernels need the triton package")

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # Triton runs in its interpreter on CPU


def _kv(b: int, h: int, s: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # rows of very different magnitudes (per-token scales matter) and a few outlier channels
    x = torch.randn(b, h, s, d, generator=g) * torch.logspace(-1, 1, s)[:, None]
    x[..., : max(1, d // 16)] *= 8
    return x.to(DEV)


def _ints_and_scales(packed: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    q, s = unpack(packed, d, KV_PACK_ALIGN)
    return q.reshape(*packed.shape[:-1], d), s.reshape(packed.shape[:-1])


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [64, 37])
def test_cache_rows_are_the_quantizer_integers(backend, dtype, d):
    if backend == "cpu" and DEV == "cuda":
        pytest.skip("the torch path is exercised on the CPU")
    b, h, s, length, start = 2, 3, 5, 11, 4
    k, v = _kv(b, h, s, d, 1).to(dtype), _kv(b, h, s, d, 2).to(dtype)
    width = kv_ops.kv_width(d)
    kc = torch.zeros(b, h, length, width, dtype=torch.int8, device=DEV)
    vc = torch.zeros_like(kc)
    # value_states reach the cache as a transposed view: non-contiguous input
    v_view = v.transpose(1, 2).contiguous().transpose(1, 2)
    kv_ops.write_kv(kc, vc, k, v_view, torch.tensor(start, device=DEV), backend)
    for x, cache in ((k, kc), (v, vc)):
        q_ref, s_ref = quantize_activation(x.float(), TOKEN_DYNAMIC)
        q, scale = _ints_and_scales(cache, d)
        assert torch.equal(q[:, :, start : start + s], q_ref.to(torch.int8))
        assert torch.equal(scale[:, :, start : start + s], s_ref[..., 0])
        assert not cache[:, :, :start].any() and not cache[:, :, start + s :].any()  # other rows untouched
    kq, vq = kv_ops.quantize_kv(k, v, backend)
    assert torch.equal(kq, kc[:, :, start : start + s]) and torch.equal(vq, vc[:, :, start : start + s])
    deq = kv_ops.dequantize_kv(kq, d, torch.float32)
    q, scale = _ints_and_scales(kq, d)
    assert torch.equal(deq, q.float() * scale[..., None])


def _reference_attention(q, kc, vc, mask, scale):
    """float64 attention over the dequantized cache; GQA by repeating kv heads. -> [B, S, Hq, D]"""
    d = q.shape[-1]
    k = kv_ops.dequantize_kv(kc, d, torch.float64)
    v = kv_ops.dequantize_kv(vc, d, torch.float64)
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    scores = (q.double() @ k.transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)


# (head_dim, GQA ratio, queries, cache length, slices): lengths are no multiple of the 64-key block
CASES = [
    (64, 1, 1, 37, 1),
    (64, 4, 1, 150, 3),
    (80, 1, 3, 150, None),
    (80, 4, 2, 101, 2),
    (64, 4, 5, 70, 1),
    (80, 1, 1, 150, 3),  # one row per KV head: the row kernel, padded head size, slices
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize(("d", "g", "s", "length", "splits"), CASES)
def test_decode_kernel_matches_float64_attention(d, g, s, length, splits, padded, dtype):
    b, hkv = 2, 2
    q = _kv(b, hkv * g, s, d, 3).to(dtype)
    kc, vc = kv_ops.quantize_kv(_kv(b, hkv, length, d, 4), _kv(b, hkv, length, d, 5), "cpu")
    kc, vc = kc.to(DEV), vc.to(DEV)
    # what transformers hands over for a static cache: causal over the filled part (the queries
    # are its last s positions), padding at the front of the second sequence
    filled = length - 7
    pos = torch.arange(length, device=DEV)
    qpos = filled - s + torch.arange(s, device=DEV)
    mask = (pos[None, :] <= qpos[:, None])[None, None].expand(b, 1, s, length).clone()
    if padded:
        mask[1, :, :, :5] = False
    elif s == 1:
        mask, kc, vc = None, kc[:, :, :filled], vc[:, :, :filled]  # dynamic cache: no mask
    scale = d**-0.5
    ref = _reference_attention(q, kc, vc, mask, scale)
    for kernel in ("tile", "row") if g * s == 1 else ("tile",):  # "auto" picks by batch x heads
        out = kv_ops.decode_attention(q, kc, vc, mask, scale, num_splits=splits, kernel=kernel)
        err = (out.double() - ref).abs().max() / ref.abs().max()
        # fp32: float32 sums of exact products, ~1e-6. bf16: the output is rounded to bf16 once
        # (2**-8 relative on the GPU, 2**-7 in the interpreter, which truncates) and, on the GPU,
        # the probabilities times the value scales too before their product with V (2**-8): 2**-6
        assert err < (1e-4 if dtype == torch.float32 else 2**-6), (kernel, err)


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize(("g", "s"), [(2, 2), (1, 1)])  # the tile kernel; the row kernel
def test_decode_kernel_skips_masked_rows_anywhere(splits, g, s):
    # holes inside the attended range, a fully masked head of the cache, a query with one key
    b, hkv, d, length = 2, 2, 32, 150
    q = _kv(b, hkv * g, s, d, 9)
    kc, vc = kv_ops.quantize_kv(_kv(b, hkv, length, d, 10), _kv(b, hkv, length, d, 11), "cpu")
    gen = torch.Generator().manual_seed(12)
    mask = torch.rand(b, hkv * g, s, length, generator=gen) < 0.3
    mask[..., :40] = False
    mask[0, 1 % (hkv * g), 0] = False
    mask[0, 1 % (hkv * g), 0, 77] = True
    mask = mask.to(DEV)
    kernel = "row" if g * s == 1 else "tile"
    out = kv_ops.decode_attention(q, kc.to(DEV), vc.to(DEV), mask, d**-0.5, num_splits=splits, kernel=kernel)
    ref = _reference_attention(q, kc.to(DEV), vc.to(DEV), mask, d**-0.5)
    assert (out.double() - ref).abs().max() < 1e-4 * ref.abs().max()


def test_decode_kernel_is_causal_without_mask_for_several_queries():
    q = _kv(1, 2, 4, 64, 6)
    kc, vc = kv_ops.quantize_kv(_kv(1, 2, 4, 64, 7), _kv(1, 2, 4, 64, 8), "cpu")
    out = kv_ops.decode_attention(q, kc.to(DEV), vc.to(DEV), None, 0.125)
    mask = torch.ones(4, 4, dtype=torch.bool, device=DEV).tril()[None, None]
    ref = _reference_attention(q, kc.to(DEV), vc.to(DEV), mask, 0.125)
    assert (out.double() - ref).abs().max() < 1e-4 * ref.abs().max()


def _generate(model, ids, cache=None, steps=6):
    kw = {}
    if cache is not None:  # transformers 5.24 renamed past_key_values to cache
        kw["cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"] = cache
    out = model.generate(
        ids, max_new_tokens=steps, do_sample=False, output_logits=True, return_dict_in_generate=True,
        pad_token_id=0, **kw,
    )  # fmt: skip
    return out.sequences, torch.stack(out.logits)


def _check_generation(name, backend, cache_cls):
    model = tiny_model(name, torch.float32).to(DEV)
    ids = torch.randint(1, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0)).to(
        DEV
    )
    ref_tokens, ref_logits = _generate(model, ids)  # float (fp32) cache, SDPA
    enable_int8_kv_cache(model, backend)
    args = (model.config, 32) if cache_cls is Int8StaticCache else (model.config,)
    tokens, logits = _generate(model, ids, cache_cls(*args, backend=backend))
    # per-token int8 K/V err by at most half a step (absmax / 254, 0.4% of the row's absmax);
    # attention outputs are convex combinations of V rows, the K error moves the probabilities by
    # about the same relative amount: 2% of the logits' range leaves a 5x margin for the
    # propagation through two layers
    err = (logits - ref_logits).abs().max() / ref_logits.abs().max()
    assert err < 2e-2, err
    # same tokens up to the first step whose top-2 margin is within the error (a flip is allowed there)
    top2 = ref_logits.topk(2, dim=-1).values
    clear = ((top2[..., 0] - top2[..., 1]) > 2 * err * ref_logits.abs().max()).cumprod(0).sum(0)
    new = tokens[:, ids.shape[1] :]
    for row, steps in enumerate(clear.tolist()):
        assert torch.equal(new[row, :steps], ref_tokens[row, ids.shape[1] : ids.shape[1] + steps])
    assert clear.sum() >= 4, (clear, err)  # the comparison was not vacuous
    return logits


@pytest.mark.parametrize("name", ["llama", "qwen3", "opt", "gpt2", "phi3"])
@pytest.mark.parametrize("cache_cls", [Int8StaticCache, Int8DynamicCache])
def test_greedy_generation_with_int8_cache_is_close_to_float(name, cache_cls):
    if DEV == "cuda":
        pytest.skip("the torch fallback is exercised on the CPU")
    _check_generation(name, "cpu", cache_cls)


@pytest.mark.parametrize("cache_cls", [Int8StaticCache, Int8DynamicCache])
def test_generation_through_the_decode_kernel(cache_cls):
    calls = []
    real = kv_ops.decode_attention
    try:
        kv_ops.decode_attention = lambda *a, **k: calls.append(1) or real(*a, **k)
        kernel = _check_generation("llama", "triton", cache_cls)
    finally:
        kv_ops.decode_attention = real
    assert calls  # the decode steps ran on the kernel
    if DEV == "cpu":  # same integers, fp32 math either way: the torch fallback agrees closely
        fallback = _check_generation("llama", "cpu", cache_cls)
        assert (kernel - fallback).abs().max() < 1e-4 * fallback.abs().max()


def test_float_cache_still_uses_plain_sdpa():
    model = tiny_model("llama", torch.float32).to(DEV)
    ids = torch.randint(1, 128, (2, 9), generator=torch.Generator().manual_seed(1)).to(DEV)
    ref = _generate(model, ids)
    enable_int8_kv_cache(model)
    out = _generate(model, ids)  # no int8 cache passed: a float DynamicCache
    # SDPA again, given an explicit all-true mask for one-token steps instead of none: fp32 rounding
    assert torch.equal(out[0], ref[0]) and (out[1] - ref[1]).abs().max() < 1e-5 * ref[1].abs().max()


@pytest.mark.parametrize("name", ["mistral", "gemma2", "falcon-7b"])
def test_unsupported_models_are_refused(name):
    model = tiny_model(name, torch.float32)
    with pytest.raises(KVCacheError):
        enable_int8_kv_cache(model)
    if name != "falcon-7b":
        with pytest.raises(KVCacheError, match="full-attention"):
            Int8StaticCache(model.config, 16)


def test_unserved_attention_variants_are_refused():
    model = tiny_model("llama", torch.float32)
    attn = model.model.layers[0].self_attn
    kc, vc = kv_ops.quantize_kv(_kv(1, 2, 4, 16).cpu(), _kv(1, 2, 4, 16).cpu(), "cpu")
    q = torch.randn(1, 4, 1, 16)
    with pytest.raises(KVCacheError, match="sliding_window"):
        int8_kv_attention(attn, q, kc, vc, None, sliding_window=8, backend="cpu")
    with pytest.raises(KVCacheError, match="head size"):
        int8_kv_attention(attn, torch.randn(1, 4, 1, 32), kc, vc, None, backend="cpu")
    with pytest.raises(KVCacheError, match="unknown backend"):
        enable_int8_kv_cache(model, "cuda")


def test_bench_times_decode_with_both_caches_on_cpu():
    from smoothquant.bench import model as bench_model

    if DEV == "cuda":
        pytest.skip("CPU smoke test")
    model = tiny_model("llama", torch.float32)
    res = bench_model.measure(model, "fp32", [], [(2, 8)], reps=1, kv_caches=("float", "int8"))
    assert res.decode_tok_s["b2@8"] > 0 and res.decode_tok_s["b2@8 kv8"] > 0
    # head size 16: 16 int8 + a 4-byte scale, padded to 16 bytes, per row against 16 fp32 values
    assert res.kv_cache_gb["b2@8 kv8"] / res.kv_cache_gb["b2@8"] == pytest.approx(32 / 64)
    assert model.config._attn_implementation == "sdpa"  # restored after the INT8-cache run
    table = bench_model.format_table([res])
    assert "decode b2@8 kv8 tok/s" in table and "KV b2@8 kv8 GB" in table


def test_bench_cli_rejects_unknown_kv_cache(capsys):
    from smoothquant.cli import main

    assert main(["bench", "model", "--device", "cpu", "--kv-cache", "fp8"]) == 2
    assert "--kv-cache" in capsys.readouterr().err


def test_row_and_tile_kernels_agree_on_one_row_per_head():
    q = _kv(3, 4, 1, 128, 13)
    kc, vc = kv_ops.quantize_kv(_kv(3, 4, 200, 128, 14), _kv(3, 4, 200, 128, 15), "cpu")
    kc, vc = kc.to(DEV), vc.to(DEV)
    mask = (torch.arange(200, device=DEV) < 180)[None, None, None].expand(3, 1, 1, 200)
    from smoothquant.kernels import triton_kv

    row = triton_kv.decode_attention(q, kc, vc, mask, 128**-0.5, kernel="row", num_splits=2)
    tile = triton_kv.decode_attention(q, kc, vc, mask, 128**-0.5, kernel="tile", num_splits=2)
    assert (row - tile).abs().max() < 1e-4 * tile.abs().max()
    with pytest.raises(ValueError, match="'auto', 'row' or 'tile'"):
        triton_kv.decode_attention(q, kc, vc, mask, 0.1, kernel="rows")
    with pytest.raises(ValueError, match="one query row"):
        triton_kv.decode_attention(_kv(3, 8, 1, 128, 16), kc, vc, None, 0.1, kernel="row")
