"""Raw INT8 kernels: Triton (activation quantization, fused norm + quantization, W8A8 GEMM) and the
exact CPU int8 GEMM (``cpu.py``). Import the Triton modules only where Triton is installed; the
functional layer in ``smoothquant.runtime`` chooses among them."""
