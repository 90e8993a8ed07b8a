"""The Triton kernels (CPU interpreter in CI) and the CPU backend against the reference math.

Shapes are small and odd on purpose: M, N and K are not multiples of any tile, so masks, padded
row strides and out-of-range TMA boxes are all exercised.
"""

from __future__ import annotations

import pytest
import torch

from smoothquant.kernels.packing import pack, unpack
from smoothquant.quantization.quantizer import quantize_activation
from smoothquant.quantization.scheme import TENSOR_DYNAMIC, TENSOR_STATIC, TOKEN_DYNAMIC
from smoothquant.runtime import ops

triton = pytest.importorskip("triton", reason="the Triton kernels need the triton package")
import triton.language as tl  # noqa: E402

from smoothquant.kernels import triton_gemm  # noqa: E402
from smoothquant.kernels.triton_quant import _round_to_bf16  # noqa: E402

# the Triton kernels run where Triton does: the GPU if there is one, else the interpreter on the CPU
DEV = "cuda" if torch.cuda.is_available() else "cpu"
SPECS = [(TOKEN_DYNAMIC, None), (TENSOR_DYNAMIC, None), (TENSOR_STATIC, torch.tensor([0.05], device=DEV))]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _x(m: int, k: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # rows of very different magnitudes, so per-token and per-tensor scales differ
    return (torch.randn(m, k, generator=g) * torch.logspace(-2, 2, m)[:, None]).to(DEV, dtype)


def _weight(n: int, k: int) -> torch.Tensor:
    """int8 [n, k] stored with a 16-byte row stride, as Int8Linear stores it."""
    g = torch.Generator().manual_seed(1)
    kp = -(-k // 16) * 16
    buf = torch.zeros(n, kp, dtype=torch.int8, device=DEV)
    buf[:, :k] = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    return buf[:, :k]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("spec", "static"), SPECS)
@pytest.mark.parametrize(("m", "k"), [(1, 7), (5, 37), (3, 5000)])
def test_quantize_rows_gives_the_reference_integers(m, k, dtype, spec, static):
    x = _x(m, k, dtype)
    q, scale = ops.quantize_rows(x, spec, static, "triton")
    q_ref, s_ref = quantize_activation(x.float(), spec, static)
    assert q.dtype == torch.int8 and q.shape == (m, k)
    assert torch.equal(q.float(), q_ref)
    assert torch.equal(scale, s_ref.reshape(-1).expand(m))


@pytest.mark.parametrize(("m", "k", "block_k"), [(3, 37, 16), (2, 9000, None), (2, 9000, 4096)])
def test_quantize_rows_row_blocks_give_the_reference_integers(m, k, block_k):
    # rows wider than one block take the two-loop path; few wide rows stay in registers
    from smoothquant.kernels import triton_quant
    from smoothquant.kernels.packing import unpack

    x = _x(m, k, torch.bfloat16)
    q, scale = unpack(triton_quant.quantize_rows(x, None, block_k=block_k), k)
    q_ref, s_ref = quantize_activation(x.float(), TOKEN_DYNAMIC, None)
    assert torch.equal(q.float(), q_ref) and torch.equal(scale, s_ref.reshape(-1))


def test_quantize_rows_rounds_half_to_even_and_clamps():
    x = torch.tensor([[0.5, 1.5, 2.5, -0.5, -2.5, 126.5, 300.0, -300.0, 0.0]], device=DEV)
    q, _ = ops.quantize_rows(x, TENSOR_STATIC, torch.tensor([1.0], device=DEV), "triton")
    assert q.tolist() == [[0, 2, 2, 0, -2, 126, 127, -127, 0]]


def test_quantize_rows_divides_exactly_at_ties_and_clamps_huge_quotients():
    # the kernels divide with an fma-corrected reciprocal: at (j + 0.5) * scale and one ulp either
    # side it must give the correctly rounded quotient (else round-half-even lands elsewhere), and
    # quotients that overflow fp32 must still clamp to +-127 with their sign
    g = torch.Generator().manual_seed(3)
    scale = (torch.rand(1, generator=g) * 0.37 + 0.01).float()
    ties = (torch.arange(-127, 127).float() + 0.5) * scale
    huge = torch.tensor([3e38, -3e38, 1e30, -1e30, 257 * scale.item(), -257 * scale.item()])
    x = torch.cat([ties, ties.nextafter(torch.tensor(1e9)), ties.nextafter(torch.tensor(-1e9)), huge])
    for s in (scale, torch.tensor([1e-10])):
        q, _ = ops.quantize_rows(x[None].to(DEV), TENSOR_STATIC, s.to(DEV), "triton")
        q_ref, _ = quantize_activation(x[None], TENSOR_STATIC, s)
        assert torch.equal(q.cpu().float(), q_ref)
    assert q[0, -6:].tolist() == [127, -127, 127, -127, 127, -127]


def test_nonfinite_rows_get_nan_scales():
    x = _x(4, 33, torch.float32)
    x[1, 3] = float("nan")
    x[2, 0] = float("inf")
    for spec, static in SPECS:
        _, scale = ops.quantize_rows(x, spec, static, "triton")
        if spec is TENSOR_DYNAMIC:  # one scale for all rows
            assert scale.isnan().all()
        else:
            assert scale[1:3].isnan().all() and scale[[0, 3]].isfinite().all()


def test_packed_rows_roundtrip():
    q = torch.randint(-127, 128, (3, 21), dtype=torch.int8)
    s = torch.rand(3)
    packed = pack(q, s)
    assert packed.shape == (3, 32 + 16) and packed.stride(0) % 16 == 0
    q2, s2 = unpack(packed, 21)
    assert torch.equal(q2, q) and torch.equal(s2, s)


@pytest.mark.parametrize(
    ("rms", "offset", "bias"), [(True, 0.0, False), (True, 1.0, False), (False, 0.0, True)]
)
@pytest.mark.parametrize(("spec", "static"), [SPECS[0], SPECS[2]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norm_quantize_equals_norm_then_quantize(rms, offset, bias, spec, static, dtype):
    k = 45
    x = (3 * _x(6, k, torch.float32)).to(dtype)
    w = (1 + 0.3 * torch.randn(k)).to(DEV, dtype)
    b = (0.1 * torch.randn(k)).to(DEV, dtype) if bias else None
    got = ops.norm_quantize(x, w, b, 1e-5, rms, offset, spec, static, "triton")
    want = ops.norm_quantize(x, w, b, 1e-5, rms, offset, spec, static, "reference")
    qg, sg = unpack(got, k)
    qw, sw = unpack(want, k)
    if dtype == torch.bfloat16:  # the bf16 rounding of the norm output absorbs fp32 noise
        assert torch.equal(qg, qw) and torch.equal(sg, sw)
    else:  # fp32: the reduction order may move the norm by an ulp, an integer by at most one
        assert (qg.int() - qw.int()).abs().max() <= 1 and (qg != qw).float().mean() < 0.01
        torch.testing.assert_close(sg, sw, rtol=1e-6, atol=0)


GEMM_CONFIGS = [
    None,  # the heuristic choice
    triton_gemm.GemmConfig(16, 16, 32, 4, 2),
    triton_gemm.GemmConfig(32, 16, 64, 4, 2, group_m=2, persistent=True),
    triton_gemm.GemmConfig(16, 32, 32, 4, 2, split_k=3),
    triton_gemm.GemmConfig(16, 16, 32, 4, 2, persistent=True, subtile=True),
]


@pytest.mark.parametrize("config", GEMM_CONFIGS, ids=str)
@pytest.mark.parametrize(("m", "n", "k"), [(5, 37, 70), (33, 24, 129), (1, 40, 33)])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_int8_gemm_matches_reference(m, n, k, config, out_dtype):
    q, s = ops.quantize_rows(_x(m, k, torch.float32), TOKEN_DYNAMIC, None, "triton")
    w = _weight(n, k)
    ws = torch.rand(n, device=DEV) + 0.1
    bias = torch.randn(n).to(DEV, out_dtype)
    got = triton_gemm.int8_gemm(q, s, w, ws, bias, out_dtype, config)
    want = ops.int8_matmul(q, s, w, ws, bias, torch.float64, "reference")
    # fp32 epilogue: within fp32 rounding; bf16: within one bf16 rounding (the interpreter
    # truncates instead of rounding to nearest, so allow a full ulp)
    tol = 1e-6 if out_dtype == torch.float32 else 2**-7
    assert got.dtype == out_dtype and got.shape == (m, n)
    torch.testing.assert_close(got.double(), want.double(), rtol=tol, atol=tol * want.abs().max().item())


@pytest.mark.parametrize(("spec", "static"), SPECS)
def test_cpu_backend_equals_reference(spec, static):
    x, static = _x(9, 70, torch.bfloat16).cpu(), None if static is None else static.cpu()
    w, ws, bias = _weight(23, 70).cpu(), torch.rand(23) + 0.1, torch.randn(23).bfloat16()
    q_cpu, s_cpu = ops.quantize_rows(x, spec, static, "cpu")
    q_ref, s_ref = ops.quantize_rows(x, spec, static, "reference")
    assert torch.equal(q_cpu, q_ref) and torch.equal(s_cpu, s_ref)
    got = ops.w8a8_linear(x, w, ws, bias, spec, static, "cpu")
    want = ops.w8a8_linear(x, w, ws, bias, spec, static, "reference")
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=2**-8, atol=1e-3)


@pytest.mark.parametrize("k", [1, 1024, 1025, 2500])
def test_cpu_int8_accumulation_is_exact_on_both_paths(k, monkeypatch):
    """The chunked fp32 path (CPUs without int8 dot products) gives the int64 result exactly, also
    at the worst case: every product 127 * 127, K past the 1024-channel chunk."""
    from smoothquant.kernels import cpu

    g = torch.Generator().manual_seed(k)
    a = torch.randint(-127, 128, (5, k), generator=g, dtype=torch.int8)
    b = torch.randint(-127, 128, (7, k), generator=g, dtype=torch.int8)
    a[0], b[0] = 127, 127  # the largest possible sum
    exact = a.to(torch.int64) @ b.to(torch.int64).t()
    for has_dot in (False, True):
        monkeypatch.setattr(cpu, "has_int8_dot", lambda v=has_dot: v)
        got = cpu.int8_accumulate(a, b)
        assert got.dtype == torch.int32 and torch.equal(got.to(torch.int64), exact)


@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("m", "i", "k", "split"), [(5, 48, 70, False), (33, 32, 129, False), (3, 64, 40, True)]
)
def test_gated_gemm_equals_the_unfused_mlp(m, i, k, split, out_dtype, act):
    # gate and up interleaved in one GEMM with act(gate) * up in the epilogue == each GEMM on the
    # reference backend, then the activation and the product in torch, in the model dtype
    from smoothquant.kernels.layout import interleave_gate_up, split_gate_up

    cfg = triton_gemm.GemmConfig(16, 32, 32, 4, 2, split_k=2) if split else None
    g = torch.Generator().manual_seed(m + i)
    rows = interleave_gate_up(_weight(i, k), _weight(i, k))
    assert torch.equal(interleave_gate_up(*split_gate_up(rows)), rows)
    w = torch.zeros(2 * i, -(-k // 16) * 16, dtype=torch.int8, device=DEV)  # 16-byte row stride
    w[:, :k] = rows
    w = w[:, :k]
    ws = interleave_gate_up(torch.rand(i, generator=g), torch.rand(i, generator=g)).to(DEV) * 1e-3
    bias = torch.randn(2 * i, generator=g).to(out_dtype).to(DEV)
    q, s = ops.quantize_rows(_x(m, k, torch.float32), TOKEN_DYNAMIC, None, "triton")
    got = triton_gemm.int8_gemm(q, s, w, ws, bias, out_dtype, cfg, act=act)
    want = ops.int8_matmul(q, s, w, ws, bias, out_dtype, "reference", act=act)
    assert got.shape == (m, i) and got.dtype == out_dtype
    diff = (got.float() - want.float()).abs()
    if out_dtype == torch.float32:  # exp and division in another order (torch's GELU cancels in 1 + tanh)
        assert diff.max() < 1e-5 * want.abs().max()
    else:  # every value rounded to bf16 where the model rounds it: rarely a flipped last bit
        # (GELU of large negative inputs: torch's 1 + tanh cancels to 0 where ours keeps ~1e-11)
        assert (diff <= 2**-7 * want.float().abs() + 1e-6 * want.float().abs().max()).all()
        assert (diff > 0).float().mean() < 0.05


@pytest.mark.parametrize("act", [None, "silu"])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("m", "split"), [(5, False), (33, False), (3, True)])
def test_gemm_writes_int8_rows_at_a_static_scale(m, split, out_dtype, act):
    # out_scale: the epilogue quantizes its result (rounded to the model dtype first) as the next
    # linear's static input quantization would, and writes packed rows: the same bytes as the
    # float result run through quantize_rows
    from smoothquant.kernels import triton_quant

    k, n = 70, 64
    cfg = triton_gemm.GemmConfig(16, 32, 32, 4, 2, split_k=2) if split else None
    q, s = ops.quantize_rows(_x(m, k, torch.float32), TOKEN_DYNAMIC, None, "triton")
    s = s.clone()
    s[1] = float("nan")  # a row that turns non-finite: its scale slot must say so
    w, ws = _weight(n, k), torch.rand(n, device=DEV) * 1e-2
    bias = torch.randn(n).to(DEV, out_dtype)
    static = torch.tensor([0.004], device=DEV)
    if act:  # the gated epilogue rounds every step to out_dtype itself
        floats = triton_gemm.int8_gemm(q, s, w, ws, bias, out_dtype, cfg, act=act)
    else:  # fp32 epilogue, rounded to out_dtype by torch (the interpreter's casts truncate)
        floats = triton_gemm.int8_gemm(q, s, w, ws, bias.float(), torch.float32, cfg).to(out_dtype)
    want = triton_quant.quantize_rows(floats, static)
    got = triton_gemm.int8_gemm(q, s, w, ws, bias, out_dtype, cfg, act=act, out_scale=static)
    assert got.dtype == torch.int8 and got.shape == want.shape
    qg, sg = unpack(got, floats.shape[1])
    qw, sw = unpack(want, floats.shape[1])
    assert sg[1].isnan() and torch.equal(sg[[0, *range(2, m)]], sw[[0, *range(2, m)]])
    keep = [0, *range(2, m)]
    assert torch.equal(qg[keep], qw[keep])
    assert (qw[keep].float().abs() == 127).any() and (
        qw[keep] != 0
    ).float().mean() > 0.5  # clamps, not all zero


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_int8_matmul_out_scale_is_the_same_on_every_backend(backend):
    q, s = ops.quantize_rows(_x(6, 48, torch.float32), TOKEN_DYNAMIC, None, "reference")
    w, ws = _weight(64, 48), torch.rand(64, device=DEV) * 1e-2
    static = torch.tensor([0.004], device=DEV)
    args = (q, s, w, ws, None, torch.bfloat16)
    want = ops.int8_matmul(*args, "triton", out_scale=static)
    cpu_args = [t.cpu() if isinstance(t, torch.Tensor) else t for t in args]
    got = ops.int8_matmul(*cpu_args, backend, out_scale=static.cpu())
    assert got.dtype == torch.int8 and got.shape == want.shape
    for a, b in zip(unpack(got, 64), unpack(want.cpu(), 64), strict=True):  # padding bytes aside
        assert torch.equal(a, b)


@triton.jit
def _round_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, _round_to_bf16(tl.load(x_ptr + offs)))


def test_bf16_rounding_keeps_nan_and_inf():
    # the kernels' integer-op rounding to bf16; the GPU's canonical NaN (0x7FFFFFFF) once
    # overflowed into the sign bit and came out as -0.0, hiding a NaN row from the NaN-scale rule
    bits = [0x7FFFFFFF, 0x7FC00000, 0xFFFFFFFF, 0x7F800000, 0xFF800000, 0x7F7FFFFF, 0x3F800000, 0x3F808000]
    x = torch.tensor(bits, dtype=torch.int64).to(torch.int32).view(torch.float32).to(DEV)
    out = torch.empty_like(x)
    _round_kernel[(1,)](x, out, BLOCK=8)
    out = out.cpu()
    assert out[:3].isnan().all()
    assert out[3] == float("inf") and out[4] == float("-inf") and out[5] == float("inf")  # max fp32 rounds up
    assert out[6] == 1.0 and out[7] == 1.0  # 1 + 2**-8: a tie, to even
