"""Weight layouts chosen for the kernels at load time (pure torch).

A gated MLP computes ``act(x @ gate.T) * (x @ up.T)``. Its two GEMMs read the same input, so
they run as one over both weights; if every output tile of that GEMM holds whole (gate, up)
pairs of columns, the epilogue can apply ``act(gate) * up`` itself and write half the columns,
never materialising gate and up outputs. The rows are therefore stored interleaved in blocks of
``PAIR``: ``gate[0:16], up[0:16], gate[16:32], up[16:32], ...``; any tile width that is a
multiple of ``2 * PAIR`` then holds whole pairs.
"""

from __future__ import annotations

import torch

PAIR = 16


def interleave_gate_up(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Rows ``[gate[0:16]; up[0:16]; gate[16:32]; up[16:32]; ...]`` (dim 0), the layout the gated
    epilogue reads: every output tile holds whole (gate, up) pairs of rows. Works for weights
    ``[I, K]`` and per-row vectors ``[I]``; ``I`` must be a multiple of 16."""
    i = gate.shape[0]
    if i % PAIR or up.shape != gate.shape:
        raise ValueError(
            f"gate and up need one shape with rows in multiples of {PAIR}: {gate.shape}, {up.shape}"
        )
    pairs = torch.stack([gate.reshape(i // PAIR, PAIR, -1), up.reshape(i // PAIR, PAIR, -1)], dim=1)
    return pairs.reshape(2 * i, *gate.shape[1:])


def split_gate_up(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of :func:`interleave_gate_up` along dim 0."""
    two_i = rows.shape[0]
    pairs = rows.reshape(two_i // (2 * PAIR), 2, PAIR, *rows.shape[1:])
    return pairs[:, 0].reshape(two_i // 2, *rows.shape[1:]), pairs[:, 1].reshape(two_i // 2, *rows.shape[1:])
