"""Build the CUTLASS W8A8 GEMM library: nvcc for sm_90a, one process per configuration, cached.

The library is a plain shared object with a C ABI (no torch headers, static CUDA runtime), so it
is built with nvcc directly rather than through ``torch.utils.cpp_extension``: one build then
serves every torch version, CI compiles exactly the objects the GPU runs, and a build made on a
machine without a GPU can be carried to one. The cache key is the hash of the sources, the flags,
the configurations and nvcc's version; a finished library is renamed into place atomically, so
concurrent builders and readers never see a partial file.

Ahead of time: ``python -m smoothquant.kernels.cuda.build [--jobs N] [--out DIR]`` (prints each
configuration's compile time, registers and spills). CUTLASS's headers come from the PyPI wheel
``nvidia-cutlass==4.2.0.0`` (install it with ``--no-deps``: its Python dependencies are not needed).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from smoothquant.kernels.cuda.configs import CONFIGS, CutlassConfig

HERE = Path(__file__).resolve().parent
SOURCES = ("w8a8_gemm.cu", "w8a8_gemm.cuh")
CUTLASS_WHEEL = "nvidia-cutlass==4.2.0.0"
log = logging.getLogger(__name__)
LIB_NAME = "libsq_w8a8.so"
FLAGS = (
    "-std=c++17", "-O3", "-DNDEBUG", "-gencode=arch=compute_90a,code=sm_90a", "--expt-relaxed-constexpr",
    "-Xcompiler=-fPIC", "-DCUTLASS_ENABLE_GDC_FOR_SM90", "-Xptxas=-v",
)  # fmt: skip


class ToolchainError(RuntimeError):
    """nvcc or CUTLASS's headers are missing, or a compilation failed; the message says which."""


def find_nvcc() -> Path:
    """nvcc from ``$SMOOTHQUANT_NVCC``, ``$CUDA_HOME``, the PATH, or /usr/local/cuda."""
    candidates = [os.environ.get("SMOOTHQUANT_NVCC")]
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "bin", "nvcc"))
    candidates += [shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return Path(c)
    raise ToolchainError("nvcc not found (set CUDA_HOME or SMOOTHQUANT_NVCC, or put nvcc on the PATH)")


def find_cutlass() -> Path:
    """The folder holding CUTLASS's ``include/`` and ``tools/util/include/``."""
    env = os.environ.get("SMOOTHQUANT_CUTLASS_DIR")
    if env:
        root = Path(env)
    else:
        spec = importlib.util.find_spec("cutlass_library")  # located, not imported (its imports are heavy)
        if spec is None or not spec.submodule_search_locations:
            raise ToolchainError(
                f"CUTLASS headers not found: pip install --no-deps {CUTLASS_WHEEL} (or set SMOOTHQUANT_CUTLASS_DIR)"
            )
        root = Path(spec.submodule_search_locations[0]) / "source"
    if not (root / "include" / "cute" / "tensor.hpp").is_file():
        raise ToolchainError(f"no CUTLASS headers under {root}/include (expected cute/tensor.hpp)")
    return root


def nvcc_version(nvcc: Path) -> str:
    out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, check=False).stdout
    return out.strip().splitlines()[-1] if out.strip() else "unknown"


def _flags(cutlass: Path) -> list[str]:
    return [*FLAGS, f"-I{cutlass / 'include'}", f"-I{cutlass / 'tools' / 'util' / 'include'}", f"-I{HERE}"]


def _source_hash(nvcc: Path, cutlass: Path) -> hashlib._Hash:
    h = hashlib.sha256()
    for name in SOURCES:
        h.update((HERE / name).read_bytes())
    h.update(" ".join(FLAGS).encode() + nvcc_version(nvcc).encode() + str(cutlass).encode())
    return h


def cache_key(configs: Sequence[CutlassConfig], nvcc: Path, cutlass: Path) -> str:
    h = _source_hash(nvcc, cutlass)
    h.update(repr([c.macros() for c in configs]).encode())
    return h.hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get("SMOOTHQUANT_CACHE", Path.home() / ".cache" / "smoothquant")) / "cutlass"


@dataclass(frozen=True)
class Compiled:
    config: CutlassConfig
    path: Path
    seconds: float
    registers: int | None
    spills: int | None


def compile_config(config: CutlassConfig, out_dir: Path, nvcc: Path, cutlass: Path) -> Compiled:
    """One object file (kept if already there: an interrupted build resumes); raises
    :class:`ToolchainError` with the compiler's first errors."""
    obj = out_dir / f"{config.name}.o"
    if obj.is_file():
        return Compiled(config, obj, 0.0, None, None)
    tmp = out_dir / f".{config.name}.{os.getpid()}.o"
    cmd = [str(nvcc), *_flags(cutlass), *config.macros(), "-c", str(HERE / "w8a8_gemm.cu"), "-o", str(tmp)]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t
    log = r.stdout + r.stderr
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        errors = [line for line in log.splitlines() if "error" in line][:5]
        raise ToolchainError(f"nvcc failed for {config.name}: " + " | ".join(errors or log.splitlines()[-5:]))
    os.replace(tmp, obj)
    regs = [int(x) for x in re.findall(r"Used (\d+) registers", log)]
    spills = [int(x) for x in re.findall(r"(\d+) bytes spill stores", log)]
    return Compiled(config, obj, seconds, max(regs, default=None), max(spills, default=None))


def compile_all(configs: Sequence[CutlassConfig], out_dir: Path, jobs: int | None = None) -> list[Compiled]:
    """Object files for ``configs`` in ``out_dir``, ``jobs`` nvcc processes at a time; every
    configuration is attempted before the first failure is raised."""
    nvcc, cutlass = find_nvcc(), find_cutlass()
    out_dir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        futures = [pool.submit(compile_config, c, out_dir, nvcc, cutlass) for c in configs]
    failed = [f.exception() for f in futures if f.exception() is not None]
    if failed:
        raise ToolchainError(" || ".join(str(e) for e in failed))
    return [f.result() for f in futures]


def build(
    configs: Sequence[CutlassConfig] = CONFIGS, jobs: int | None = None, out: Path | None = None,
    verbose: bool = False,
) -> Path:  # fmt: skip
    """The shared library for ``configs``, built unless the cache (or ``out``) already has it.
    Objects are cached per source version, so changing the list recompiles only new entries."""
    nvcc, cutlass = find_nvcc(), find_cutlass()
    final = (out or cache_root() / cache_key(configs, nvcc, cutlass)) / LIB_NAME
    if final.is_file():
        return final
    objects = (out or cache_root()) / f"obj-{_source_hash(nvcc, cutlass).hexdigest()[:16]}"
    # a first use compiles for minutes: say so, once, rather than look hung
    log.warning(
        "smoothquant: building the CUTLASS GEMMs once (%d configurations, ~30 s of one core each) into %s",
        len(configs), final.parent,
    )  # fmt: skip
    compiled = compile_all(configs, objects, jobs)
    if verbose:
        for c in compiled:
            print(f"  {c.config.name:28s} {c.seconds:6.1f} s  registers {c.registers}  spills {c.spills} B")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{LIB_NAME}.{os.getpid()}")
    r = subprocess.run(
        [str(nvcc), "-shared", "-o", str(tmp), *(str(c.path) for c in compiled)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise ToolchainError(f"linking {LIB_NAME} failed: {r.stderr.strip()[-300:]}")
    os.replace(tmp, final)
    return final


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m smoothquant.kernels.cuda.build", description=__doc__.split("\n")[0]
    )
    p.add_argument("--jobs", type=int, default=None, help="parallel nvcc processes (default: all cores)")
    p.add_argument("--out", type=Path, default=None, help="folder for the library (default: the cache)")
    args = p.parse_args(argv)
    t = time.perf_counter()
    try:
        path = build(jobs=args.jobs, out=args.out, verbose=True)
    except ToolchainError as e:
        print(f"smoothquant: error: {e}", file=sys.stderr)
        return 2
    print(f"{path} ({len(CONFIGS)} configurations, {time.perf_counter() - t:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
