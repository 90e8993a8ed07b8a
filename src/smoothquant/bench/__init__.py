"""Benchmarks behind ``smoothquant bench``: GEMM level (ours vs cuBLAS bf16, torch._int_mm, fp8)
and model level (prefill latency, decode tokens/s, weight and peak memory)."""
