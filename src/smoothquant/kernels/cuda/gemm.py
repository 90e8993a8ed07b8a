"""The CUTLASS W8A8 GEMM from Python: load the library (building it on first use), launch a config.

``int8_gemm`` takes the operands the Triton GEMM takes (``kernels/triton_gemm.int8_gemm``):
activation integers ``q [M, K]`` and per-token scales ``scale [M]``, both usually strided views
of packed rows (read in place), the weight ``[N, K]`` int8 with its fp32 ``weight_scale [N]`` and
an optional bias, and returns ``[M, N]`` in ``out_dtype``. :func:`supports` says which problems
it takes (bf16/fp32 output, 16-byte aligned rows and K, N a multiple of 8); the caller falls back
to Triton for the rest.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import torch

from smoothquant.kernels.cuda import build
from smoothquant.kernels.cuda.configs import BY_NAME, CONFIGS, CutlassConfig, plan
from smoothquant.kernels.launch import use_pdl

OUT_DTYPES = {torch.bfloat16: "bf16", torch.float32: "f32"}
_ARGTYPES = [
    ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
    ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
    ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
]  # fmt: skip
STATUS = {1: "CUTLASS cannot implement this problem", 2: "workspace too small", 3: "workspace init failed",
          4: "kernel launch failed"}  # fmt: skip


class CutlassError(RuntimeError):
    pass


class Library:
    """The loaded shared library: one launcher, workspace query and info function per config."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lib = ctypes.CDLL(str(path))
        self.gemm, self.workspace = {}, {}
        for c in CONFIGS:
            f = getattr(self.lib, f"sq_w8a8_gemm_{c.name}")
            f.restype, f.argtypes = ctypes.c_int, _ARGTYPES
            w = getattr(self.lib, f"sq_w8a8_workspace_{c.name}")
            w.restype, w.argtypes = ctypes.c_size_t, [ctypes.c_int] * 5
            self.gemm[c.name], self.workspace[c.name] = f, w

    def info(self, config: CutlassConfig) -> dict[str, int]:
        buf = (ctypes.c_int * 3)()
        getattr(self.lib, f"sq_w8a8_info_{config.name}")(buf)
        return {"smem": buf[0], "threads": buf[1], "stages": buf[2]}


def unavailable_reason(device: torch.device | None = None) -> str | None:
    """Why the CUTLASS backend cannot run here (``None`` when it can); cheap, builds nothing."""
    if os.environ.get("SMOOTHQUANT_CUTLASS", "1") == "0":
        return "SMOOTHQUANT_CUTLASS=0"
    if not torch.cuda.is_available():
        return "no CUDA device"
    index = device.index if device is not None and device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    if (major, minor) != (9, 0):
        return f"compute capability {major}.{minor} (these kernels are built for Hopper, sm_90a)"
    lib = os.environ.get("SMOOTHQUANT_CUTLASS_LIB")
    if lib:
        return None if os.path.isfile(lib) else f"SMOOTHQUANT_CUTLASS_LIB={lib} is not a file"
    try:
        build.find_nvcc()
        build.find_cutlass()
    except build.ToolchainError as e:
        return str(e)
    return None


@functools.lru_cache(maxsize=1)
def library() -> Library:
    """The library from ``$SMOOTHQUANT_CUTLASS_LIB`` or the build cache (built on first use)."""
    path = os.environ.get("SMOOTHQUANT_CUTLASS_LIB")
    return Library(Path(path) if path else build.build())


@functools.lru_cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def supports(q: torch.Tensor, qweight: torch.Tensor, out_dtype: torch.dtype) -> bool:
    """Problems the kernels take: TMA needs 16-byte aligned rows and extents, D rows of 16 bytes."""
    k, n = qweight.shape[1], qweight.shape[0]
    return (
        out_dtype in OUT_DTYPES
        and k % 16 == 0
        and n % 8 == 0
        and q.stride(1) == 1
        and qweight.stride(1) == 1
        and q.stride(0) % 16 == 0
        and qweight.stride(0) % 16 == 0
        and q.data_ptr() % 16 == 0
        and qweight.data_ptr() % 16 == 0
    )


def int8_gemm(
    q: torch.Tensor,
    scale: torch.Tensor,
    qweight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    config: str | None = None,
    pdl: bool | None = None,
    out: torch.Tensor | None = None,
    swizzle: int | None = None,
) -> torch.Tensor:
    """``cast((q @ qweight.T) * scale[:, None] * weight_scale[None, :] + bias)`` on CUTLASS.

    ``config``: a configuration's name and ``swizzle`` its tile grouping (default: both from
    :func:`configs.plan`; a named config alone gets swizzle 1); ``pdl``: programmatic
    dependent launch (default: on Hopper unless ``SMOOTHQUANT_PDL=0``, as the Triton kernels): the
    kernel starts while the previous one finishes and waits for it before reading its inputs; ``out``: a contiguous
    ``[M, N]`` tensor to write (the checks pass a poisoned one)."""
    m, k = q.shape
    n = qweight.shape[0]
    cfg, planned = (BY_NAME[config], 1) if config else plan(m, n, k, OUT_DTYPES[out_dtype])
    swizzle = planned if swizzle is None else swizzle
    lib = library()
    if out is None:
        out = torch.empty((m, n), dtype=out_dtype, device=q.device)
    if m == 0:
        return out
    index = q.device.index if q.device.index is not None else torch.cuda.current_device()
    sms = _sm_count(index)
    ws_bytes = lib.workspace[cfg.name](m, n, k, sms, swizzle)
    ws = torch.empty(ws_bytes, dtype=torch.uint8, device=q.device) if ws_bytes else None
    if pdl is None:
        pdl = use_pdl(q.device)
    if bias is not None and bias.dtype != out_dtype:
        bias = bias.to(out_dtype)
    weight_scale = weight_scale.float().contiguous()
    rc = lib.gemm[cfg.name](
        q.data_ptr(), q.stride(0), qweight.data_ptr(), qweight.stride(0), out.data_ptr(), out.stride(0),
        scale.data_ptr(), scale.stride(0), weight_scale.data_ptr(),
        bias.contiguous().data_ptr() if bias is not None else None, m, n, k,
        ws.data_ptr() if ws is not None else None, ws_bytes, sms, swizzle, int(pdl),
        torch.cuda.current_stream(q.device).cuda_stream,
    )  # fmt: skip
    if rc:
        raise CutlassError(f"{cfg.name} [{m}x{n}x{k}]: " + STATUS.get(rc, f"CUDA error {rc - 1000}"))
    return out
