"""lm-evaluation-harness tasks (LAMBADA, HellaSwag, PIQA, WinoGrande...) on an in-memory model.

Quantized models here are ordinary ``transformers`` models whose linears are ``FakeQuantLinear``,
so the harness's own Hugging Face wrapper runs them once handed the object instead of a name.
The harness is optional (``pip install smoothquant[lm-eval]``) and its public tasks download
their data from the hub; offline, tasks defined in local YAML files (``include_path``) over local
data files work.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from smoothquant.errors import SmoothQuantError

# metrics reported per task, in order of preference (the first one a task has is used)
PREFERRED_METRICS = ("acc_norm,none", "acc,none", "exact_match,none", "word_perplexity,none")


class HarnessError(SmoothQuantError):
    """lm-evaluation-harness is missing, or a task cannot be found or run."""


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise HarnessError(
            f"lm-evaluation-harness is not installed ({e}); pip install 'smoothquant[lm-eval]'"
        ) from e
    return lm_eval, HFLM, TaskManager


@functools.cache
def _task_manager(include_path: str | None, defaults: bool) -> Any:
    """Indexing the harness's thousands of built-in task files takes most of a minute on a small
    CPU: local tasks are looked up without them first, and managers are reused."""
    _, _, TaskManager = _lm_eval()
    return TaskManager(include_path=include_path, include_defaults=defaults)


def harness_model(
    model: nn.Module, tokenizer: Any, *, batch_size: int = 1, max_length: int | None = None
) -> Any:
    """The harness's ``LM`` interface around an in-memory (possibly quantized) model."""
    _, HFLM, _ = _lm_eval()
    device = str(next(model.parameters()).device)
    return HFLM(
        pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length, device=device
    )


def run_tasks(
    model: nn.Module,
    tokenizer: Any,
    tasks: Sequence[str],
    *,
    include_path: str | Path | None = None,
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    batch_size: int = 1,
) -> dict[str, dict[str, float]]:
    """Run harness ``tasks`` on ``model``; returns ``{task: {metric: value}}`` (stderr dropped).

    ``include_path``: a folder of task YAML files (for example a task over a local .jsonl file).
    ``limit``: examples per task (a number or a fraction), for quick checks."""
    lm_eval, _, _ = _lm_eval()
    manager = (
        _task_manager(str(include_path) if include_path else None, defaults=False) if include_path else None
    )
    if manager is None or not all(manager.match_tasks([t]) for t in tasks):
        manager = _task_manager(str(include_path) if include_path else None, defaults=True)
    unknown = [t for t in tasks if not manager.match_tasks([t])]
    if unknown:
        raise HarnessError(
            f"unknown lm-eval task(s) {', '.join(unknown)}; list them with `lm-eval ls tasks`, or pass "
            "a folder of task YAML files as include_path"
        )
    try:
        out = lm_eval.simple_evaluate(
            model=harness_model(model, tokenizer, batch_size=batch_size),
            tasks=list(tasks),
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=manager,
            log_samples=False,
            bootstrap_iters=0,
        )
    except (OSError, ConnectionError) as e:  # hub downloads of task data
        raise HarnessError(
            f"lm-eval could not load its task data ({e}); public tasks need the network"
        ) from e
    return {
        task: {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and "stderr" not in k}
        for task, metrics in out["results"].items()
    }


def headline(metrics: dict[str, float]) -> tuple[str, float] | None:
    """The one number to show for a task: its first metric in :data:`PREFERRED_METRICS`."""
    for key in PREFERRED_METRICS:
        if key in metrics:
            return key.split(",")[0], metrics[key]
    return None
