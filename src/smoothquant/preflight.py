"""Pre-flight checks: everything about a ``quantize`` run that can fail, checked before it starts.

Loading and calibrating a model takes a minute on a laptop and hours for a large one; a mistake
found afterwards (an unwritable output, a typo in ``--calib``, a window longer than the model's
positions) wastes all of it. :func:`check_quantize` looks only at paths and file headers, in
seconds, and raises the first problem as one :class:`~smoothquant.errors.SmoothQuantError` line
that names it and the fix. The same checks also run where the work happens, so API callers that
skip this function still get the same messages, only later.
"""

from __future__ import annotations

import os
from pathlib import Path

from smoothquant.errors import ArgumentError

# Beyond this a forward pass is one attention op of many seconds per layer on a CPU, and a
# quantization range is no better measured than on 512-2048 tokens.
SANE_SEQ_LEN = 32768


def check_seq_len(seq_len: int, positions: int | None, model: str) -> None:
    """``seq_len`` is at least 2 and within the model's positions (when known)."""
    if seq_len < 2:
        raise ArgumentError(f"--seq-len must be at least 2, got {seq_len}")
    if positions is not None and seq_len > positions:
        raise ArgumentError(
            f"--seq-len {seq_len} is longer than {model}'s {positions} positions (max_position_embeddings): "
            f"use --seq-len {min(positions, 512)} (or up to {positions})"
        )
    if positions is None and seq_len > SANE_SEQ_LEN:
        raise ArgumentError(
            f"--seq-len {seq_len} is far longer than calibration needs (and than most models' positions): "
            "use --seq-len 512"
        )


def check_quantize(
    model_src: str,
    out_dir: str | os.PathLike,
    calib: str,
    seq_len: int,
    force: bool = False,
    *,
    dtype: str = "float32",
) -> None:
    """The checks ``smoothquant quantize`` runs first, cheapest first: output location (a
    writable directory or creatable in one; stale temporaries of killed runs removed), the
    calibration source, the model's files (installed, not truncated, not already quantized, hub
    reachable), ``seq_len`` against the model's positions, and the free space against the
    checkpoint's estimated size (``dtype``: what the float leftovers are saved in). The free space
    is checked again with the exact size just before writing."""
    from smoothquant.data.sources import check_source as check_calibration
    from smoothquant.export.atomic import check_free_space, check_output
    from smoothquant.models.load import check_source as check_model

    target = Path(out_dir).absolute()
    check_output(target, force)
    check_calibration(calib)
    check_seq_len(seq_len, check_model(model_src), model_src)
    estimate = estimate_checkpoint_bytes(model_src, FLOAT_BYTES.get(dtype, 4))
    if estimate is not None:
        check_free_space(target.parent, estimate)


FLOAT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def estimate_checkpoint_bytes(model_src: str, float_bytes: int = 4) -> int | None:
    """The quantized checkpoint's size from the source's file headers (safetensors or GGUF): int8
    weights and one fp32 scale per row for the decoder blocks' matrices, ``float_bytes`` per value
    for everything else. None where the headers are not on this machine (a hub id)."""
    from smoothquant.models.checks import checkpoint_bytes
    from smoothquant.models.load import tensor_shapes

    shapes = tensor_shapes(model_src)
    return checkpoint_bytes(shapes, float_bytes) if shapes else None


def check_output_folder(out: str | os.PathLike) -> None:
    """A folder that results are written into (created if missing): not a file, and writable
    where it is or would be created. One line naming the problem otherwise."""
    from smoothquant.export.atomic import check_parent

    path = Path(out).absolute()
    if path.exists() and not path.is_dir():
        raise ArgumentError(f"--out {out} is a file, not a folder: choose another --out")
    check_parent(path / "results.json" if path.is_dir() else path)
