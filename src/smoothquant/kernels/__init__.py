"""Raw INT8 kernels: Triton (activation quantization, fused norm + quantization, W8A8 GEMM) and the
CPU path through ``torch._int_mm``. Import the Triton modules only where Triton is installed; the
functional layer in ``smoothquant.runtime`` chooses among them."""
