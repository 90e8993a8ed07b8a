"""Where downloaded and assembled files live between runs.

``$SMOOTHQUANT_CACHE`` if set, else ``$XDG_CACHE_HOME/smoothquant`` (``~/.cache/smoothquant``).
Files appear there only complete: writers go through :func:`atomic_path`, so an interrupted run
never leaves a truncated file that a later run would trust.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    root = os.environ.get("SMOOTHQUANT_CACHE")
    if root:
        base = Path(root).expanduser()
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "smoothquant"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``target``; rename it onto ``target`` only on success."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 16 MiB blocks (multi-GB shards and model files)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()
