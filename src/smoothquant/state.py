"""What the library has done to a model, recorded on the model object.

Static quantization needs statistics of the *smoothed* model. Each ``smooth`` call stamps the
model with a fresh smoothing id and statistics carry the id of the model they were measured on,
so ``quantize`` can refuse statistics that no longer describe the model instead of silently
producing wrong scales.
"""

from __future__ import annotations

import uuid
from typing import Any

from torch import nn

_ATTR = "_smoothquant_state"
UNSMOOTHED = "unsmoothed"


def _state(model: nn.Module) -> dict[str, Any]:
    state = getattr(model, _ATTR, None)
    if state is None:
        state = {"smoothing_id": UNSMOOTHED, "smoothing": []}
        # plain attribute on the module object: not a parameter, not saved in state_dicts
        object.__setattr__(model, _ATTR, state)
    return state


def smoothing_id(model: nn.Module) -> str:
    return _state(model)["smoothing_id"]


def record_smoothing(model: nn.Module, record: dict[str, Any]) -> str:
    """Stamp a new smoothing id on the model and remember what was applied (for recipes)."""
    state = _state(model)
    state["smoothing_id"] = uuid.uuid4().hex
    state["smoothing"].append(record)
    return state["smoothing_id"]


def smoothing_history(model: nn.Module) -> list[dict[str, Any]]:
    return list(_state(model)["smoothing"])
