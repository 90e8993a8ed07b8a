"""The CUTLASS backend on a machine without a GPU: its CUDA sources compile for sm_90a, the library
links and exports every configuration, the configuration table and the backend choice (with its
fallback message) behave, and the split gate+up path's act kernel matches the reference.

The GEMMs themselves run only on a Hopper GPU: scripts/cutlass_check.py checks them there (its
output is docs/bench/h100_cutlass_check.log), and the last tests here run when one is present.
"""

from __future__ import annotations

import ctypes
import logging

import pytest
import torch

from smoothquant.errors import BackendError
from smoothquant.kernels.cuda import build, configs, gemm
from smoothquant.runtime import ops

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


def _toolchain_or_skip() -> None:
    try:
        build.find_nvcc()
    except build.ToolchainError as e:
        pytest.skip(f"CUDA compile check needs nvcc: {e}")
    build.find_cutlass()  # the test extra installs the headers: their absence is a failure, not a skip


@pytest.fixture(scope="module")
def library_path():
    """The library built from the tree's sources (objects cached across runs, keyed by content)."""
    _toolchain_or_skip()
    return build.build()


def test_every_configuration_compiles_links_and_exports_its_functions(library_path):
    lib = ctypes.CDLL(str(library_path))  # static CUDA runtime: loads without a GPU or a driver
    for cfg in configs.CONFIGS:
        info = (ctypes.c_int * 3)()
        getattr(lib, f"sq_w8a8_info_{cfg.name}")(info)
        smem, threads, stages = info
        assert 0 < smem <= 227 * 1024, (cfg.name, smem)  # Hopper's shared memory per CTA
        assert threads in (128, 256, 384), (cfg.name, threads)
        assert stages >= 2, (cfg.name, stages)
        ws = getattr(lib, f"sq_w8a8_workspace_{cfg.name}")
        ws.restype = ctypes.c_size_t
        assert ws(4096, 4096, 4096, 132, 4) < 1 << 30


def test_kernels_do_not_spill_registers(tmp_path):
    """One pingpong and one swap-AB configuration compiled afresh: ptxas reports no spills."""
    _toolchain_or_skip()
    nvcc, cutlass = build.find_nvcc(), build.find_cutlass()
    for name in ("ws_64x64x256_c1x1", "swpp_64x16x256_c1x1"):
        c = build.compile_config(configs.BY_NAME[name], tmp_path, nvcc, cutlass)
        assert c.path.stat().st_size > 10_000
        assert c.registers is not None and c.registers <= 255
        assert c.spills == 0, (name, c.spills)


def test_a_broken_source_fails_the_build_with_the_compilers_error(tmp_path, monkeypatch):
    _toolchain_or_skip()
    src = tmp_path / "w8a8_gemm.cu"
    src.write_text((build.HERE / "w8a8_gemm.cu").read_text() + "\nthis is not C++;\n")
    (tmp_path / "w8a8_gemm.cuh").write_text((build.HERE / "w8a8_gemm.cuh").read_text())
    monkeypatch.setattr(build, "HERE", tmp_path)
    with pytest.raises(build.ToolchainError, match=r"nvcc failed for ws_64x64x256_c1x1.*error"):
        build.compile_config(
            configs.BY_NAME["ws_64x64x256_c1x1"], tmp_path, build.find_nvcc(), build.find_cutlass()
        )


def test_missing_headers_and_compiler_are_named(monkeypatch, tmp_path):
    monkeypatch.setenv("SMOOTHQUANT_CUTLASS_DIR", str(tmp_path))
    with pytest.raises(build.ToolchainError, match="no CUTLASS headers under"):
        build.find_cutlass()
    monkeypatch.setenv("SMOOTHQUANT_NVCC", str(tmp_path / "nvcc"))
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(build.os, "access", lambda p, mode: False)
    with pytest.raises(build.ToolchainError, match="nvcc not found"):
        build.find_nvcc()


def test_the_cache_key_follows_sources_and_configurations(tmp_path, monkeypatch):
    _toolchain_or_skip()
    nvcc, cutlass = build.find_nvcc(), build.find_cutlass()
    k1 = build.cache_key(configs.CONFIGS, nvcc, cutlass)
    assert k1 == build.cache_key(configs.CONFIGS, nvcc, cutlass)
    assert k1 != build.cache_key(configs.CONFIGS[:-1], nvcc, cutlass)
    for name in build.SOURCES:
        (tmp_path / name).write_text((build.HERE / name).read_text())
    (tmp_path / "w8a8_gemm.cuh").write_text((build.HERE / "w8a8_gemm.cuh").read_text() + "// changed\n")
    monkeypatch.setattr(build, "HERE", tmp_path)
    assert build.cache_key(configs.CONFIGS, nvcc, cutlass) != k1


def test_configuration_table():
    names = [c.name for c in configs.CONFIGS]
    assert len(names) == len(set(names))
    for m in (1, 2, 16, 17, 32, 33, 64, 65, 128, 129, 512, 2048, 8192):
        for n in (4096, 11008, 22016):
            cfg = configs.choose(m, n, 4096)
            assert cfg in configs.CONFIGS and cfg.out == "bf16"
    assert configs.choose(1, 4096, 4096).swap  # one token: swap-AB
    assert configs.choose(4096, 4096, 4096, "f32").out == "f32"
    with pytest.raises(ValueError, match="unknown schedule"):
        configs.CutlassConfig("nope", (64, 64, 64))
    macros = configs.BY_NAME["swpp_64x16x256_c1x1"].macros()
    assert "-DSQ_SWAP=1" in macros and "-DSQ_SCHED=Pingpong" in macros and "-DSQ_TN=16" in macros
    assert "-DSQ_SCHED=CooperativeStreamK" in configs.BY_NAME["sk_128x128x128_c1x1"].macros()


def test_auto_falls_back_to_triton_with_one_line_saying_why(caplog):
    ops._say_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="smoothquant.runtime.ops"):
        assert (
            ops.choose_gpu_backend("compute capability 8.0 (these kernels are built for Hopper, sm_90a)")
            == "triton"
        )
        assert (
            ops.choose_gpu_backend("compute capability 8.0 (these kernels are built for Hopper, sm_90a)")
            == "triton"
        )
        assert ops.choose_gpu_backend(None) == "cutlass"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert (
        "CUTLASS GEMMs unavailable (compute capability 8.0" in lines[0]
        and "using the Triton GEMMs" in lines[0]
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without a GPU")
def test_reasons_without_a_gpu(monkeypatch):
    assert gemm.unavailable_reason() == "no CUDA device"
    monkeypatch.setenv("SMOOTHQUANT_CUTLASS", "0")
    assert gemm.unavailable_reason() == "SMOOTHQUANT_CUTLASS=0"
    with pytest.raises(BackendError, match=r"backend 'cutlass' cannot run here .*use 'auto' or 'triton'"):
        ops.resolve_backend("cutlass", torch.device("cpu"))
    assert ops.resolve_backend("auto", torch.device("cpu")) == "cpu"


def test_supports_only_what_tma_can_load():
    q = torch.zeros(3, 4112, dtype=torch.int8)[:, :4096]  # a packed row stride
    w = torch.zeros(4104, 4096, dtype=torch.int8)
    assert gemm.supports(q, w, torch.bfloat16)
    assert gemm.supports(q, w, torch.float32)
    assert not gemm.supports(q, w, torch.float16)
    assert not gemm.supports(q, torch.zeros(4100, 4096, dtype=torch.int8), torch.bfloat16)  # N % 8
    odd_k = torch.zeros(3, 1016, dtype=torch.int8)[:, :1000]
    assert not gemm.supports(odd_k, torch.zeros(4104, 1008, dtype=torch.int8)[:, :1000], torch.bfloat16)


def test_gated_act_kernel_matches_the_reference():
    pytest.importorskip("triton", reason="the act kernel is Triton")
    from smoothquant.kernels import triton_gemm
    from smoothquant.kernels.layout import interleave_gate_up, split_gate_up

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    gate, up = (torch.randn(5, 96, generator=g) * 4 for _ in range(2))
    y = interleave_gate_up(gate.t(), up.t()).t().contiguous().to(dev, torch.bfloat16)
    for act in ("silu", "gelu_tanh"):
        got = triton_gemm.gated_act(y, act)
        ga, ua = (t.t() for t in split_gate_up(y.t()))
        want = ops.ACTIVATIONS[act](ga) * ua
        assert got.shape == (5, 96)
        if act == "silu":  # the formula torch uses: bit-identical
            assert torch.equal(got.cpu(), want.cpu())
        else:  # tanh-GELU as x / (1 + exp(-2y)), the gated epilogue's form: within a bf16 rounding
            torch.testing.assert_close(got.cpu().float(), want.cpu().float(), rtol=2**-7, atol=1e-5)


@pytest.mark.skipif(not HOPPER, reason="CUDA-only: the CUTLASS kernels run on a Hopper GPU (sm_90a)")
def test_cutlass_linear_matches_the_reference_on_hopper():
    from smoothquant.quantization.scheme import TOKEN_DYNAMIC

    for m in (1, 37, 600):
        x = torch.randn(m, 4096, device="cuda", dtype=torch.bfloat16)
        qw = torch.randint(-127, 128, (4104, 4096), dtype=torch.int8, device="cuda")
        sw = torch.rand(4104, device="cuda") * 0.01
        got = ops.w8a8_linear(x, qw, sw, None, TOKEN_DYNAMIC, None, "cutlass").float()
        want = ops.w8a8_linear(x, qw, sw, None, TOKEN_DYNAMIC, None, "reference").float()
        assert torch.isfinite(got).all()
        assert ((got - want).abs() <= want.abs() * 2**-7 + 1e-6).all()
    assert ops.resolve_backend("auto", torch.device("cuda")) == "cutlass"


def test_the_sweep_becomes_a_table_that_choose_follows(tmp_path, monkeypatch):
    """``bench gemm --sweep-cutlass --write-table`` picks per M and N class the config with the
    lowest relative time; ``load_table`` makes ``choose`` follow it (synthetic timings)."""
    from smoothquant.bench.gemm import GemmRow, cutlass_table

    def row(m, n, layer, times, ours_gemm=1.0):
        r = GemmRow("m", layer, m, 4096, n, ms={"ours_gemm": ours_gemm})
        r.configs = {f"cutlass:{k}": v for k, v in times.items()}
        return r

    a, b = "swpp_64x16x256_c1x1", "pp_128x128x128_c2x1"
    rows = [
        row(1, 4096, "o", {a: 1.0, b: 2.0}), row(1, 11008, "up", {a: 3.0, b: 1.0}),
        row(2048, 4096, "o", {a: 5.0, b: 1.0, "ws_64x64x256_c1x1": float("nan")}),
        row(2048, 11008, "up", {a: 9.0, b: 4.0, f"{b}@s4": 3.5}),
        row(1, 22016, "gate+up+act", {a: 1.0, b: 5.0}, ours_gemm=0.5),
        row(2048, 22016, "gate+up+act", {a: 9.0, b: 2.0, f"{b}@s4": 2.0}, ours_gemm=3.0),
    ]  # fmt: skip
    table = cutlass_table(rows)
    assert table["rules"] == [
        {"m_max": 1, "n_min": 8192, "config": b, "swizzle": 1},
        {"m_max": 1, "n_min": 0, "config": a, "swizzle": 1},
        {"m_max": 1 << 62, "n_min": 8192, "config": b, "swizzle": 4},
        {"m_max": 1 << 62, "n_min": 0, "config": b, "swizzle": 1},
    ]  # fmt: skip
    assert table["gated_min_rows"] == 2048  # split path loses at M = 1 (1.0 vs 0.5), wins at 2048
    assert table["max_rows"] == 1  # at 2048 rows CUTLASS takes 1.0 + 3.5 against Triton's 1.0 + 1.0
    path = tmp_path / "table.json"
    path.write_text(__import__("json").dumps(table))
    monkeypatch.setattr(configs, "RULES", configs.RULES)
    monkeypatch.setattr(configs, "GATED_MIN_ROWS", configs.GATED_MIN_ROWS)
    monkeypatch.setattr(configs, "MAX_ROWS", configs.MAX_ROWS)
    configs.load_table(path)
    assert configs.MAX_ROWS == 1
    assert configs.choose(1, 4096, 4096).name == a and configs.choose(1, 11008, 4096).name == b
    assert configs.choose(700, 4096, 4096).name == b and configs.GATED_MIN_ROWS == 2048
    assert configs.plan(700, 11008, 4096) == (configs.BY_NAME[b], 4)
    assert configs.plan(700, 4096, 4096) == (configs.BY_NAME[b], 1)
    path.write_text('{"rules": [{"m_max": 1, "n_min": 0, "config": "nope"}]}')
    with pytest.raises(ValueError, match="unknown or no CUTLASS configurations"):
        configs.load_table(path)


def test_reasons_on_a_gpu_are_named(monkeypatch, tmp_path):
    """Capability and a missing prebuilt library are reasons too (a GPU simulated by patching)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (8, 0))
    assert "compute capability 8.0" in gemm.unavailable_reason()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))
    monkeypatch.setenv("SMOOTHQUANT_CUTLASS_LIB", str(tmp_path / "missing.so"))
    assert gemm.unavailable_reason() == f"SMOOTHQUANT_CUTLASS_LIB={tmp_path / 'missing.so'} is not a file"
    (tmp_path / "missing.so").write_bytes(b"")
    assert gemm.unavailable_reason() is None


def test_sweep_times_swizzles_only_for_persistent_configs_on_large_grids():
    from smoothquant.bench.gemm import _cutlass_kwargs, sweep_keys

    small, large = sweep_keys(16), sweep_keys(2048)
    assert not any("@s" in k for k in small)
    assert len(small) == sum(c.out == "bf16" for c in configs.CONFIGS)
    assert "pp_128x128x128_c2x1@s4" in large and "co_256x128x128_c2x1@s8" in large
    assert "sk_128x128x128_c1x1@s2" in large
    assert not any(k.startswith("ws_") and "@s" in k for k in large)  # one tile per CTA: no raster
    assert _cutlass_kwargs("pp_128x128x128_c2x1@s4") == {"config": "pp_128x128x128_c2x1", "swizzle": 4}
    assert _cutlass_kwargs("ws_64x64x256_c1x1") == {"config": "ws_64x64x256_c1x1", "swizzle": 1}
    assert _cutlass_kwargs(None) == {}
