"""INT8 KV cache on a CUDA GPU: the decode kernel against float64 attention at Llama-2-7B sizes,
then attention-level timings (bf16 SDPA over a bf16 cache vs the kernel over int8 rows).

``PYTHONPATH=src python scripts/kv_gpu_check.py`` (the model-level numbers come from
``smoothquant bench model --kv-cache int8``). Every timing rotates over several caches, so no
cache is timed out of L2; bytes are the K/V rows attended to (what the kernel must read).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from smoothquant.bench.timing import cuda_time_ms
from smoothquant.kernels import triton_kv
from smoothquant.kernels.packing import pack
from smoothquant.quantization.quantizer import quantize_activation
from smoothquant.quantization.scheme import TOKEN_DYNAMIC

H, D, SLACK = 32, 128, 26  # Llama-2-7B heads; the bench's static cache is ctx + 26 long


def packed(x: torch.Tensor, align: int) -> torch.Tensor:
    q, s = quantize_activation(x.reshape(-1, D).float(), TOKEN_DYNAMIC)
    return pack(q.to(torch.int8), s.reshape(-1), align).reshape(*x.shape[:-1], -1)


def check(b: int, hq: int, hkv: int, s: int, ctx: int, align: int) -> float:
    g = torch.Generator(device="cuda").manual_seed(b * 1000 + ctx + s)
    length = ctx + SLACK
    q = torch.randn(b, hq, s, D, device="cuda", generator=g).bfloat16()
    k = torch.randn(b, hkv, length, D, device="cuda", generator=g) * 2
    v = torch.randn(b, hkv, length, D, device="cuda", generator=g)
    kc, vc = packed(k, align), packed(v, align)
    pos = torch.arange(length, device="cuda")
    mask = (pos[None, :] <= (ctx - s + torch.arange(s, device="cuda"))[:, None])[None, None].expand(
        b, 1, s, length
    )
    out = triton_kv.decode_attention(q, kc, vc, mask, D**-0.5, align=align)
    # dequantize by hand: the scale sits right after the D integers for either alignment (D = 128)
    kd, vd = (
        (c[..., :D].double() * c[..., D : D + 4].contiguous().view(torch.float32).double()) for c in (kc, vc)
    )
    rep = hq // hkv
    sc = (q.double() @ kd.repeat_interleave(rep, 1).transpose(-1, -2)) * D**-0.5
    ref = (sc.masked_fill(~mask, float("-inf")).softmax(-1) @ vd.repeat_interleave(rep, 1)).transpose(1, 2)
    return ((out.double() - ref).norm() / ref.norm()).item()


def main() -> None:
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for b, hq, hkv, s, ctx, align in [  # row kernel (b16), tile kernel (b1, GQA), 4-byte rows
        (16, 32, 32, 1, 1024, 16), (1, 32, 32, 1, 4096, 16), (3, 32, 8, 4, 1000, 16), (16, 32, 32, 1, 1024, 4),
    ]:  # fmt: skip
        try:
            err = check(b, hq, hkv, s, ctx, align)
        except Exception as e:  # keep going: the timings below still say something
            print(
                f"FAIL decode b{b} Hq{hq} Hkv{hkv} S{s} ctx{ctx} align{align}: {type(e).__name__}: {e}"[:300]
            )
            continue
        print(
            f"{'OK  ' if err < 1e-2 else 'FAIL'} decode b{b} Hq{hq} Hkv{hkv} S{s} ctx{ctx} align{align}: rel err {err:.2e}"
        )
    rows = []
    for b, ctx in [(1, 1024), (16, 1024), (1, 4096), (16, 4096)]:
        length = ctx + SLACK
        n = max(2, min(8, int(6e9 // (b * H * length * D * 2 * 2))))  # caches rotated through
        q = torch.randn(b, H, 1, D, device="cuda").bfloat16()
        mask = (torch.arange(length, device="cuda") <= ctx)[None, None, None].expand(b, 1, 1, length)
        kvs = [
            (torch.randn(b, H, length, D, device="cuda"), torch.randn(b, H, length, D, device="cuda"))
            for _ in range(n)
        ]
        bf = [(k.bfloat16(), v.bfloat16()) for k, v in kvs]
        i8 = {a: [(packed(k, a), packed(v, a)) for k, v in kvs] for a in (4, 16)}
        del kvs
        sdpa = [
            lambda q=q, k=k, v=v, m=mask: F.scaled_dot_product_attention(q, k, v, attn_mask=m) for k, v in bf
        ]
        t = cuda_time_ms(sdpa, reps=20)
        rows.append((b, ctx, "bf16 SDPA", t, b * H * (ctx + 1) * D * 2 * 2 / t / 1e6))
        del bf
        base = triton_kv.default_splits(b * H, length, 64, q.device)
        variants = [  # (kernel, align, keys per block, warps, slices, stages); None: the default
            ("auto", 16, None, 4, None, None),
            ("tile", 16, 64, 4, None, 2),
            ("row", 16, 32, 4, None, 3),
            ("row", 16, 32, 4, None, 2),
            ("row", 16, 64, 4, None, 3),
            ("row", 16, 32, 8, None, 3),
            ("row", 16, 32, 4, 2 * base, 3),
            ("tile", 4, 64, 4, None, 2),
        ]
        for kern, align, bn, nw, sp, st in variants:
            kw = dict(align=align, block_n=bn, num_warps=nw, num_splits=sp, num_stages=st, kernel=kern)
            fns = [
                lambda q=q, k=k, v=v, m=mask, kw=kw: triton_kv.decode_attention(q, k, v, m, D**-0.5, **kw)
                for k, v in i8[align]
            ]
            try:
                t = cuda_time_ms(fns, reps=20)
            except Exception as e:  # a variant this Triton cannot build: keep the others
                print(f"variant {kern} n{bn} w{nw} s{st}: {type(e).__name__}: {e}"[:200])
                continue
            w = D + align
            label = f"{kern} a{align} n{bn} w{nw} s{st} splits {sp or base}"
            rows.append((b, ctx, label, t, b * H * (ctx + 1) * w * 2 / t / 1e6))
        del i8
        torch.cuda.empty_cache()
    print(f"{'b':>3} {'ctx':>5} {'variant':32s} {'us':>8} {'GB/s':>7}")
    for b, ctx, label, t, gbs in rows:
        print(f"{b:3d} {ctx:5d} {label:32s} {t * 1e3:8.1f} {gbs:7.0f}")


if __name__ == "__main__":
    main()
