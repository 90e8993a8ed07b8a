"""What can be known about a model source from its files alone, before anything is loaded.

Reading a checkpoint folder means parsing ``config.json`` and the safetensors headers (a few KB,
no torch): enough to refuse a truncated shard, an already-quantized folder, or a sequence length
beyond the model's positions in one line, instead of a traceback from deep inside transformers
after the expensive part has started.
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path
from typing import Any

from smoothquant.errors import ModelLoadError

RECIPE_FILE = "smoothquant_recipe.json"  # what save_quantized writes beside the weights
_HEADER_LIMIT = 100 * 2**20  # safetensors' own cap on the JSON header


def check_safetensors_file(path: Path) -> None:
    """Raise one line naming ``path`` unless its header parses and the data it announces is there."""
    _header(path)


def _header(path: Path) -> dict[str, Any]:
    """The tensors a safetensors file announces (name -> dtype, shape, offsets), after checking
    that they are all there."""
    fix = "re-download or re-save the checkpoint"
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise ModelLoadError(f"{path} is truncated ({size} bytes, no safetensors header): {fix}")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(_HEADER_LIMIT, size - 8):
                raise ModelLoadError(
                    f"{path} is truncated or not a safetensors file (header of {length} bytes in a "
                    f"{size}-byte file): {fix}"
                )
            header = json.loads(f.read(length))
    except OSError as e:
        raise ModelLoadError(f"cannot read {path}: {e.strerror}") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path} has a corrupt safetensors header ({e}): {fix}") from e
    ends = [
        int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
    ]
    end = 8 + length + max(ends, default=0)
    if end > size:
        raise ModelLoadError(
            f"{path} is truncated: its tensors end at byte {end}, the file has {size}: {fix}"
        )
    return {k: v for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}


# A tensor inside a numbered decoder block (HF ``model.layers.3.``, GPT-2 ``h.3.``, GGUF ``blk.3.``).
_BLOCK = re.compile(r"(?:^|\.)(?:layers|h|blocks|block|blk)\.\d+\.")


def safetensors_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape from the folder's safetensors headers (a few KB read per file)."""
    return {
        name: tuple(int(d) for d in info["shape"])
        for shard in sorted(folder.glob("*.safetensors"))
        for name, info in _header(shard).items()
    }


def checkpoint_bytes(shapes: dict[str, tuple[int, ...]], float_bytes: int) -> int:
    """What a quantized checkpoint of these tensors takes: the decoder blocks' matrices as int8
    with one fp32 scale per output row, everything else (embeddings, norms, biases, head) as
    floats of ``float_bytes``. Matrices that stay in floating point inside a block (MoE routers,
    ``keep_float``) count as int8: an underestimate of a few MB that the caller's margin covers,
    so that a run is never refused for space it does not need."""
    total = 0
    for name, shape in shapes.items():
        numel = math.prod(shape)
        if len(shape) == 2 and name.endswith("weight") and _BLOCK.search(name):
            total += numel + 4 * shape[0]
        else:
            total += numel * float_bytes
    return total


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ModelLoadError(f"cannot read {path}: {e.strerror}") from e
    except ValueError as e:
        raise ModelLoadError(f"{path} is not valid JSON ({e}); re-download or re-save the checkpoint") from e
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path} is not a model config (a JSON object)")
    return config


def check_model_folder(folder: Path) -> dict[str, Any]:
    """The folder's config, after checking every safetensors file in it; one line on failure."""
    config = read_config(folder)
    for shard in sorted(folder.glob("*.safetensors")):
        check_safetensors_file(shard)
    return config


def check_not_quantized(folder: Path, config: dict[str, Any]) -> None:
    """Refuse a checkpoint that is already quantized: quantizing it again would smooth and
    round already-rounded weights (and the summary would compare int8 with int8)."""
    quant = config.get("quantization_config")
    recipe = folder / RECIPE_FILE
    if quant is None and not recipe.is_file():
        return
    method = quant.get("quant_method", "quantized") if isinstance(quant, dict) else "quantized"
    source = None
    if recipe.is_file():
        try:
            source = json.loads(recipe.read_text()).get("source_model")
        except (OSError, ValueError, AttributeError):
            source = None
    original = f" (its recipe names {source})" if source else ""
    raise ModelLoadError(
        f"{folder} is already quantized ({method} quantization_config"
        f"{', ' + RECIPE_FILE if recipe.is_file() else ''}): quantize the original float model{original} "
        "instead; to run or evaluate this one, use smoothquant.load or vLLM"
    )


def max_positions(config: dict[str, Any]) -> int | None:
    """``max_position_embeddings`` of a config (or of its text part, for multimodal configs)."""
    for part in (config, config.get("text_config") or {}):
        value = part.get("max_position_embeddings") or part.get("n_positions")
        if isinstance(value, int) and value > 0:
            return value
    return None
