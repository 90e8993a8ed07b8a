"""CUDA C++ kernels built on CUTLASS 3.x for Hopper: the W8A8 GEMM at the tensor cores' rate.

``w8a8_gemm.cu`` is compiled once per :data:`configs.CONFIGS` entry (``build.py``: nvcc for
sm_90a, JIT on first use and cached, or ahead of time with ``python -m
smoothquant.kernels.cuda.build``) into one shared library with a C ABI, which ``gemm.py`` loads
with ctypes. The library links no torch, so one build serves any torch version (built on a CPU
machine, run on a GPU one). Importing this package loads nothing.
"""
