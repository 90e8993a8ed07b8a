"""Turn whatever calibration data the user has into padding-free batches of token ids.

Accepted: a 1-D token stream (cut into ``seq_len`` windows), a 2-D ``[batch, len]`` tensor, a
tokenizer output (dict/BatchEncoding with ``input_ids`` and optional ``attention_mask``), or any
iterable of these. Padded rows are cut back to their real tokens and rows of equal length are
batched together, so padding never reaches the model: its statistics cannot leak in, and
left-padded rows get the same positions as they would alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from smoothquant.errors import CalibrationError

Batches = torch.Tensor | Mapping[str, Any] | Iterable[Any]


def _rows_from_item(item: Any, seq_len: int | None) -> Iterator[torch.Tensor]:
    if isinstance(item, Mapping):  # includes transformers BatchEncoding (a UserDict)
        if "input_ids" not in item:
            raise CalibrationError(f"calibration dict has no 'input_ids' (keys: {list(item.keys())})")
        ids = torch.as_tensor(item["input_ids"])
        mask = item.get("attention_mask")
        if ids.dim() == 1:
            ids = ids[None]
        if mask is not None:
            mask = torch.as_tensor(mask).reshape(ids.shape).bool()
        for r in range(ids.shape[0]):
            row = ids[r] if mask is None else ids[r][mask[r]]
            yield from _split(row, seq_len)
        return
    if isinstance(item, torch.Tensor):
        if item.dtype.is_floating_point or item.dtype == torch.bool:
            raise CalibrationError(f"calibration tensors must hold integer token ids, got {item.dtype}")
        if item.dim() == 1:
            yield from _split(item, seq_len)
        elif item.dim() == 2:
            for row in item:
                yield from _split(row, seq_len)
        else:
            raise CalibrationError(
                f"calibration tensors must be [tokens] or [batch, tokens], got {tuple(item.shape)}"
            )
        return
    if isinstance(item, (list, tuple)) and item and all(isinstance(x, int) for x in item):
        yield from _split(torch.tensor(item), seq_len)
        return
    raise CalibrationError(
        f"cannot use {type(item).__name__} as calibration data: pass token-id tensors, tokenizer "
        "outputs (dicts with input_ids), or a list of them"
    )


def _split(row: torch.Tensor, seq_len: int | None) -> Iterator[torch.Tensor]:
    row = row.reshape(-1).long()
    if row.numel() == 0:
        return
    if seq_len is None or row.numel() <= seq_len:
        yield row
        return
    for start in range(0, row.numel(), seq_len):
        yield row[start : start + seq_len]


def sequences(data: Batches, seq_len: int | None = None) -> list[torch.Tensor]:
    """Every non-empty, unpadded sequence in ``data`` (long sequences cut to ``seq_len``)."""
    if data is None:
        raise CalibrationError("calibration data is empty (None); pass token-id tensors or tokenizer outputs")
    if isinstance(data, (torch.Tensor, Mapping)):
        items: Iterable[Any] = [data]
    elif isinstance(data, (list, tuple)) and data and all(isinstance(x, int) for x in data):
        items = [data]
    else:
        items = data
    rows = [row for item in items for row in _rows_from_item(item, seq_len)]
    if not rows:
        raise CalibrationError(
            "calibration data is empty: no tokens found. Pass at least one non-empty sequence of token ids."
        )
    return rows


def make_batches(rows: list[torch.Tensor], batch_size: int) -> list[torch.Tensor]:
    """Stack equal-length rows into ``[<=batch_size, len]`` batches, keeping first-seen order."""
    if batch_size < 1:
        raise CalibrationError(f"batch_size must be >= 1, got {batch_size}")
    by_len: dict[int, list[torch.Tensor]] = {}
    for row in rows:
        by_len.setdefault(row.numel(), []).append(row)
    batches = []
    for group in by_len.values():
        for i in range(0, len(group), batch_size):
            batches.append(torch.stack(group[i : i + batch_size]))
    return batches
