"""Hidden states between decoder blocks, one tensor per calibration batch.

Every block's outputs are written to a raw file as they are computed (the inputs of the next
block; an interrupted run resumes from it) and either kept in memory as well, or, when they do
not fit (``offload``), read back by the next block from that file through a memory map, so only
the batch being computed occupies memory. Files hold the tensors' bytes back to back; their shapes,
dtype and SHA-256 are recorded in the run's manifest. Each tensor starts at a multiple of 64 bytes,
the alignment of PyTorch's own allocations: CPU kernels may round differently on unaligned inputs.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ALIGN = 64


def _padding(offset: int) -> int:
    return -offset % ALIGN


@dataclass
class Stream:
    """One activation file as the manifest records it."""

    file: str
    sha256: str
    shapes: list[list[int]]
    dtype: str

    def to_json(self) -> dict:
        return asdict(self)


class Writer:
    """Appends tensors to ``path`` (through a temporary name until :meth:`close`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tmp = path.with_name(path.name + ".tmp")
        self._file = self._tmp.open("wb")
        self._hash = hashlib.sha256()
        self._shapes: list[list[int]] = []
        self._dtype: torch.dtype | None = None
        self._offset = 0

    def append(self, t: torch.Tensor) -> None:
        self._dtype = t.dtype
        self._shapes.append(list(t.shape))
        data = t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
        for chunk in (bytes(_padding(self._offset)), data):
            self._file.write(chunk)
            self._hash.update(chunk)
            self._offset += len(chunk)

    def close(self) -> Stream:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.path)
        dtype = str(self._dtype).removeprefix("torch.")
        return Stream(self.path.name, self._hash.hexdigest(), self._shapes, dtype)


def write(path: Path, tensors: list[torch.Tensor]) -> Stream:
    """All of ``tensors`` in one file."""
    writer = Writer(path)
    for t in tensors:
        writer.append(t)
    return writer.close()


def read(directory: Path, stream: Stream, device: torch.device, mapped: bool) -> list[torch.Tensor]:
    """The tensors of ``stream``: views of a memory map of its file (``mapped``), or copies on
    ``device``."""
    dtype = getattr(torch, stream.dtype)
    size = torch.empty((), dtype=dtype).element_size()
    spans, end = [], 0
    for shape in stream.shapes:
        start = end + _padding(end)
        end = start + math.prod(shape) * size
        spans.append((start, end, shape))
    flat = torch.from_file(str(directory / stream.file), shared=False, size=end, dtype=torch.uint8)
    views = [flat[a:b].view(dtype).reshape(shape) for a, b, shape in spans]
    return views if mapped else [v.to(device, copy=True) for v in views]
