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
    model_src: str, out_dir: str | os.PathLike, calib: str, seq_len: int, force: bool = False
) -> None:
    """The checks ``smoothquant quantize`` runs first, cheapest first: output location (a
    writable directory or creatable in one; stale temporaries of killed runs removed), the
    calibration source, the model's files (installed, not truncated, not already quantized, hub
    reachable) and ``seq_len`` against the model's positions. The free space is checked again
    with the exact size just before writing."""
    from smoothquant.data.sources import check_source as check_calibration
    from smoothquant.export.atomic import check_output
    from smoothquant.models.load import check_source as check_model

    check_output(Path(out_dir).absolute(), force)
    check_calibration(calib)
    check_seq_len(seq_len, check_model(model_src), model_src)
