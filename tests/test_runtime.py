"""The INT8 runtime: Int8Linear/Int8Norm, ``convert`` on tiny models, and the bench helpers."""

from __future__ import annotations

import pytest
import torch

import smoothquant as sq
from smoothquant.errors import BackendError, QuantizationError
from smoothquant.quantization import FakeQuantLinear
from smoothquant.quantization.scheme import PER_CHANNEL, PER_TENSOR, TENSOR_STATIC, TOKEN_DYNAMIC
from smoothquant.runtime import Int8Linear, Int8Norm, convert, resolve_backend
from smoothquant.runtime.fused import Int8LinearSlice, Int8SiblingGroup
from smoothquant.runtime.mlp import Int8GatedHalf, Int8GatedMLP
from tiny_models import tiny_batches, tiny_model


def _triton_or_skip() -> None:
    pytest.importorskip("triton", reason="the Triton backend needs the triton package")


def _quantized_tiny(family: str, scheme: str, backend: str):
    """A tiny random bf16 model of ``family``, fake-quantized, on the device ``backend`` runs on
    (Triton: the GPU if there is one, else its interpreter on the CPU), and its token ids."""
    if backend == "triton":
        _triton_or_skip()
    dev = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
    model = tiny_model(family, torch.bfloat16).to(dev)
    ids = tiny_batches(2, 12).to(dev)
    sq.quantize_model(model, ids, scheme=scheme, alpha=0.5)
    return model, ids


@pytest.mark.parametrize("family", ["llama", "opt", "falcon-7b"])
@pytest.mark.parametrize("scheme", ["w8a8", "O1", "O3"])
@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_converted_model_logits_equal_fake_quant(family, scheme, backend):
    model, ids = _quantized_tiny(family, scheme, backend)
    with torch.no_grad():
        want = model(ids).logits.float()
        convert(model, backend)
        got = model(ids).logits.float()
    report = model.smoothquant_conversion
    assert not any(isinstance(m, FakeQuantLinear) for m in model.modules())
    runtime = (Int8Linear, Int8LinearSlice, Int8GatedHalf)
    assert len(report.converted) == sum(isinstance(m, runtime) for m in model.modules()) > 0
    # the family table's gated MLPs (llama's; OPT and Falcon have none): gate/up/act in one GEMM
    assert len(report.gated_mlps) == sum(isinstance(m, Int8GatedMLP) for m in model.modules())
    assert (len(report.gated_mlps) > 0) == (family == "llama")
    # folded norms: every block's norms on Triton, none elsewhere; their sibling consumers fused
    assert len(report.folded_norms) == (sum(isinstance(m, Int8Norm) for m in model.modules()))
    assert (len(report.folded_norms) > 0) == (backend == "triton")
    slices = sum(isinstance(m, Int8LinearSlice) for m in model.modules())
    assert slices == sum(map(len, report.fused.values())) and (slices > 0) == (backend == "triton")
    # same integers; the outputs differ by bf16 rounding of intermediate results only
    assert ((got - want).norm() / want.norm()).item() < 2e-2


@pytest.mark.parametrize("scheme", ["O1", "O3"])
@pytest.mark.parametrize(("tokens", "min_rows"), [(5, 1), (24, 1), (24, None)])
def test_o3_down_projection_takes_int8_rows_from_the_gated_epilogue(scheme, tokens, min_rows, monkeypatch):
    # a static per-tensor down projection (O3) reads its input as INT8 rows written by the gate/up
    # GEMM's epilogue (no float pass over [tokens, I]) from INT8_OUT_MIN_ROWS rows on; dynamic
    # schemes keep the float product. Either way the logits stay the fake-quant model's
    from smoothquant.kernels import triton_gemm
    from smoothquant.runtime import mlp

    if min_rows is not None:
        monkeypatch.setattr(mlp, "INT8_OUT_MIN_ROWS", min_rows)
    int8_out = scheme == "O3" and tokens >= mlp.INT8_OUT_MIN_ROWS
    model, ids = _quantized_tiny("llama", scheme, "triton")
    ids = ids.reshape(1, -1)[:, :tokens]
    calls = {"int8_out": 0}
    gemm = triton_gemm.int8_gemm

    def spy_gemm(*args, **kwargs):
        calls["int8_out"] += kwargs.get("out_scale") is not None
        return gemm(*args, **kwargs)

    monkeypatch.setattr(triton_gemm, "int8_gemm", spy_gemm)
    with torch.no_grad():
        want = model(ids).logits.float()
        got = convert(model, "triton")(ids).logits.float()
    assert calls["int8_out"] == (model.config.num_hidden_layers if int8_out else 0)
    assert ((got - want).norm() / want.norm()).item() < 2e-2


@pytest.mark.parametrize(
    ("family", "backend"), [("llama", "triton"), ("falcon-7b", "triton"), ("llama", "cpu")]
)
@pytest.mark.parametrize("scheme", ["O1", "O3"])
def test_fused_siblings_give_the_unfused_logits(family, backend, scheme):
    import copy

    model, ids = _quantized_tiny(family, scheme, backend)
    other = copy.deepcopy(model)
    with torch.no_grad():
        fused = convert(model, backend)(ids).logits
        unfused = convert(other, backend, fuse_siblings=False)(ids).logits
    report, plain = model.smoothquant_conversion, other.smoothquant_conversion
    assert bool(report.fused) == (backend == "triton") and not plain.fused
    assert bool(report.gated_mlps) == (family == "llama") and not plain.gated_mlps
    # the family table still resolves against the fused model (the benchmark reads its blocks)
    from smoothquant.families import resolve

    assert resolve(model).layers_path == resolve(other).layers_path
    if family == "llama" and backend == "triton":
        # the gated epilogue rounds gate, up and act(gate) to bf16 where the model does; its exp
        # may differ from torch's in the last bit, which can flip a bf16 rounding
        assert ((fused.float() - unfused.float()).norm() / unfused.float().norm()).item() < 1e-2
    else:
        # one GEMM over concatenated weights computes each column as the separate GEMMs do; on
        # the CPU the activation and product run in torch, as unfused
        assert torch.equal(fused, unfused)

    # the weights are stored once: the slices hold no tensors
    def int8_numel(m):
        return sum(b.numel() for b in m.buffers() if b.dtype == torch.int8)

    assert int8_numel(model) == int8_numel(other)


@pytest.mark.parametrize("fuse_max_rows", [2048, 1])
def test_sibling_group_serves_each_member_its_slice_for_any_call_order(monkeypatch, fuse_max_rows):
    _triton_or_skip()
    from smoothquant.runtime import fused

    monkeypatch.setattr(fused, "FUSE_MAX_ROWS", fuse_max_rows)  # 1: members run their own GEMMs
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    linears = [torch.nn.Linear(32, n, bias=b) for n, b in ((16, True), (8, False), (24, True))]
    members = [
        Int8Linear.from_float(lin.to(dev), PER_CHANNEL, TOKEN_DYNAMIC, backend="triton") for lin in linears
    ]
    group = Int8SiblingGroup(members)
    slices = [Int8LinearSlice(group, i, "g") for i in range(3)]
    x, y = (torch.randn(5, 32, generator=g).to(dev) for _ in range(2))
    want = {(i, k): m(t) for i, m in enumerate(members) for k, t in (("x", x), ("y", y))}
    # any order, repeats and interleaved inputs: always the member's own result
    for i, k in [(2, "x"), (0, "x"), (0, "x"), (1, "y"), (1, "x"), (2, "y"), (0, "y")]:
        assert torch.equal(slices[i](x if k == "x" else y), want[i, k])
    assert torch.equal(slices[1].weight_int8, members[1].weight_int8)


@pytest.mark.parametrize("weights", [PER_TENSOR, PER_CHANNEL])
@pytest.mark.parametrize("acts", [TOKEN_DYNAMIC, TENSOR_STATIC])
def test_int8_linear_from_float_and_from_fake_agree_with_fake_quant(weights, acts):
    torch.manual_seed(0)
    lin = torch.nn.Linear(37, 19, bias=True)
    absmax = 3.0 if not acts.dynamic else None
    fake = FakeQuantLinear.from_float(lin, weights, acts, input_absmax=absmax)
    x = torch.randn(2, 5, 37)
    want = fake(x)
    for module in (
        Int8Linear.from_fake(fake, "cpu"),
        Int8Linear.from_float(lin, weights, acts, absmax, "cpu"),
    ):
        assert module.qweight.dtype == torch.int8 and module.qweight.stride(0) % 16 == 0
        assert torch.equal(module.weight_int8, fake.qweight)
        torch.testing.assert_close(module(x), want, rtol=1e-5, atol=1e-5)


def test_int8_linear_keeps_scales_fp32_when_cast():
    fake = FakeQuantLinear.from_float(torch.nn.Linear(16, 8), PER_TENSOR, TENSOR_STATIC, input_absmax=2.0)
    module = Int8Linear.from_fake(fake, "cpu").to(torch.bfloat16)
    assert module.weight_scale.dtype == torch.float32 and module.input_scale.dtype == torch.float32
    assert module.bias.dtype == torch.bfloat16 and module.out_dtype == torch.bfloat16
    assert module(torch.randn(3, 16, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_unsupported_schemes_stay_fake_quant():
    model = tiny_model("llama", torch.float32)
    sq.quantize(model, "zeroquant")
    convert(model, "cpu")
    report = model.smoothquant_conversion
    assert not report.converted and len(report.kept) == 14
    assert "group-wise weight scales" in next(iter(report.kept.values()))
    assert "kept as fake-quant" in report.summary()


def test_convert_errors():
    model = tiny_model("llama", torch.float32)
    with pytest.raises(QuantizationError, match="quantize first"):
        convert(model)
    with pytest.raises(BackendError, match="unknown backend"):
        resolve_backend("tpu", torch.device("cpu"))
    with pytest.raises(BackendError, match="CPU tensors"):
        resolve_backend("cpu", torch.device("meta"))


def test_triton_backend_on_cpu_needs_the_interpreter(monkeypatch):
    _triton_or_skip()
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendError, match="TRITON_INTERPRET"):
        resolve_backend("triton", torch.device("cpu"))
    assert resolve_backend("auto", torch.device("cpu")) == "cpu"


def test_norm_fold_refuses_a_norm_it_does_not_understand():
    class ScaledNorm(torch.nn.Module):  # an RMSNorm with an extra factor 2: not a standard norm
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(8))
            self.eps = 1e-6

        def forward(self, x):
            return 2 * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

    assert isinstance(Int8Norm.from_norm(ScaledNorm(), 0.0, TOKEN_DYNAMIC, None), str)
    assert isinstance(Int8Norm.from_norm(torch.nn.LayerNorm(8), 0.0, TOKEN_DYNAMIC, None), Int8Norm)


def test_bench_measure_runs_on_cpu():
    from smoothquant.bench import model as bench_model

    model = tiny_model("llama", torch.float32)
    fp = bench_model.measure(model, "fp32", [(1, 8)], [(1, 8)], reps=1)
    sq.quantize(model, "w8a8")
    convert(model, "cpu")
    q = bench_model.measure(model, "w8a8", [(1, 8)], [(1, 8)], reps=1)
    assert q.block_weight_gb < fp.block_weight_gb / 3  # int8 instead of fp32
    assert fp.prefill_ms["1x8"] > 0 and q.decode_tok_s["b1@8"] > 0
    table = bench_model.format_table([fp, q])
    assert table.count("\n") == 3 and "w8a8" in table


def test_bench_cli_without_gpu_is_a_clear_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from smoothquant.cli import main

    assert main(["bench", "gemm"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize("act", [None, "silu"])
def test_bench_gemm_case_checks_ours_against_the_reference(act):
    _triton_or_skip()
    from smoothquant.bench import gemm

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    case = gemm._Case(5, 64, 96, dev, act)
    assert gemm._check(case).startswith("ints equal")
    ours, bf16 = case.fn("ours")(), case.fn("bf16")()
    assert ours.shape == bf16.shape == (5, 48 if act else 96)
    # W8A8 against the bf16 computation it replaces: int8 rounding error only
    assert ((ours.float() - bf16.float()).norm() / bf16.float().norm()).item() < 0.05


def test_gated_mlp_activation_is_recognised_numerically_not_by_name():
    from smoothquant.runtime.mlp import activation_kind

    cpu = torch.device("cpu")
    assert activation_kind(torch.nn.SiLU(), cpu) == "silu"
    assert activation_kind(torch.nn.GELU(approximate="tanh"), cpu) == "gelu_tanh"
    assert activation_kind(torch.nn.GELU(), cpu) is None  # exact GELU: within 5e-4, still refused
    assert activation_kind(torch.nn.ReLU(), cpu) is None and activation_kind(None, cpu) is None


def test_gated_mlp_is_not_built_for_an_activation_the_kernel_lacks():
    model = tiny_model("llama", torch.float32)
    for layer in model.model.layers:
        layer.mlp.act_fn = torch.nn.GELU()  # exact GELU: the epilogue implements tanh-GELU only
    ids = tiny_batches(2, 12)
    sq.quantize_model(model, ids, scheme="w8a8", alpha=0.5)
    with torch.no_grad():
        want = model(ids).logits
        convert(model, "cpu")
        got = model(ids).logits
    report = model.smoothquant_conversion
    assert not report.gated_mlps and all("activation" in why for why in report.not_gated.values())
    assert ((got - want).norm() / want.norm()).item() < 2e-2
