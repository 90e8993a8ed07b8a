"""What a run has finished, so an interrupted one continues where it stopped.

The run writes into a fixed directory beside the target (``.NAME.partial``). After each decoder
block, its shard and the inputs of the next block are on disk (fsynced) before the manifest, which
is replaced atomically, records them with their SHA-256. A rerun of the same job (same checkpoint,
calibration data, scheme, alpha, dtype, device type and library versions) verifies every recorded
file and continues after the last block; anything unrecorded is leftover of an interrupted write
and is deleted. A different job, or a file that fails verification, starts again from the first
block: the inputs of earlier blocks are not kept, so they cannot be recomputed in isolation.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from smoothquant.cache import file_sha256
from smoothquant.errors import ExportError
from smoothquant.layerwise.activations import Stream

log = logging.getLogger("smoothquant")

MANIFEST = "layerwise-manifest.json"
LOCK = ".lock"
FORMAT = "smoothquant-layerwise/1"


def _fresh() -> dict[str, Any]:
    return {"outside": {}, "layers": [], "activations": None}


class Manifest:
    """The manifest of one partial output directory, held locked while the run lasts."""

    def __init__(self, directory: Path, job: dict[str, Any]) -> None:
        self.directory = directory
        self.job = json.loads(json.dumps(job))  # as it reads back from disk
        self.state = _fresh()
        directory.mkdir(exist_ok=True)
        self._lock = (directory / LOCK).open("w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise ExportError(
                f"another run is writing {directory}; wait for it to finish (or stop it) first"
            ) from None
        self._resume()

    # ---- state -------------------------------------------------------------------------------
    @property
    def layers(self) -> list[dict[str, Any]]:
        return self.state["layers"]

    @property
    def outside(self) -> dict[str, dict[str, Any]]:
        """Shards of the tensors outside the blocks, by part (embeddings, head)."""
        return self.state["outside"]

    def activations(self) -> dict[str, Stream] | None:
        streams = self.state["activations"]
        return None if streams is None else {k: Stream(**v) for k, v in streams.items()}

    def finish_outside(self, part: str, record: dict[str, Any]) -> None:
        """Record a shard of tensors outside the blocks (its hash is taken here)."""
        self.outside[part] = {**record, "sha256": file_sha256(self.directory / record["file"])}
        self._save()

    def finish_layer(self, record: dict[str, Any], activations: dict[str, Stream] | None) -> None:
        """Record a finished block (its shard's hash is taken here) and the next block's inputs."""
        record = {**record, "sha256": file_sha256(self.directory / record["file"])}
        self.layers.append(record)
        self.record_inputs(activations)

    def record_inputs(self, activations: dict[str, Stream] | None) -> None:
        """Record the files holding the inputs of the next block to compute (and delete the
        previous ones, no longer needed)."""
        old = self.activations() or {}
        self.state["activations"] = (
            None if activations is None else {k: s.to_json() for k, s in activations.items()}
        )
        self._save()
        for stream in old.values():
            (self.directory / stream.file).unlink(missing_ok=True)

    def close(self, *, remove: bool) -> None:
        """Release the lock; ``remove`` deletes the manifest, lock and activation files (the
        directory is about to become the checkpoint)."""
        if remove:
            for stream in (self.activations() or {}).values():
                (self.directory / stream.file).unlink(missing_ok=True)
            (self.directory / MANIFEST).unlink(missing_ok=True)
            (self.directory / LOCK).unlink(missing_ok=True)
        self._lock.close()

    def _save(self) -> None:
        path = self.directory / MANIFEST
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w") as f:
            json.dump({"format": FORMAT, "job": self.job, **self.state}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    # ---- resuming ----------------------------------------------------------------------------
    def _resume(self) -> None:
        path = self.directory / MANIFEST
        saved: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            saved = json.loads(path.read_text())
        if saved.get("format") == FORMAT and saved.get("job") == self.job:
            self.state = {k: saved.get(k, v) for k, v in _fresh().items()}
            self._verify()
        elif saved:
            log.info("%s holds the partial output of another job; starting afresh", self.directory)
            self.state = _fresh()
        self._clean()
        self._save()

    def _ok(self, file: str, sha256: str) -> bool:
        path = self.directory / file
        return path.is_file() and file_sha256(path) == sha256

    def _verify(self) -> None:
        for part, record in list(self.outside.items()):
            if not self._ok(record["file"], record["sha256"]):
                log.warning("%s failed verification; writing it again", record["file"])
                del self.outside[part]
        bad = next((r["file"] for r in self.layers if not self._ok(r["file"], r["sha256"])), None)
        streams = self.activations() or {}
        if bad is None:
            bad = next((s.file for s in streams.values() if not self._ok(s.file, s.sha256)), None)
        if bad is None and self.layers and len(self.layers) < self.job["num_layers"] and not streams:
            bad = "the next block's inputs"
        if bad is not None:
            log.warning("%s failed verification; starting again from the first block", bad)
            self.state["layers"], self.state["activations"] = [], None
        elif self.layers:
            log.info("resuming after block %d of %d (verified)", len(self.layers), self.job["num_layers"])

    def _clean(self) -> None:
        """Delete everything the manifest does not record (leftovers of interrupted writes)."""
        keep = {MANIFEST, LOCK}
        keep |= {r["file"] for r in self.layers}
        keep |= {s.file for s in (self.activations() or {}).values()}
        keep |= {r["file"] for r in self.outside.values()}
        for path in self.directory.iterdir():
            if path.name not in keep:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
