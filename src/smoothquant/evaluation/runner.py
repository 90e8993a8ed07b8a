"""Compare several quantization configurations of one model against one floating-point pass.

A configuration is a named row that builds a :class:`~smoothquant.recipe.Recipe` (scheme, alpha,
linear pairs...); each is applied to a fresh copy of the floating-point model, evaluated, and dropped before the next, so memory holds the original plus
one quantized copy whatever the number of rows. Calibration statistics are measured once and
shared: smoothing derives the statistics of each smoothed copy from them.
"""

from __future__ import annotations

import copy
import csv
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from smoothquant.calibration import ActStats, calibrate
from smoothquant.evaluation.metrics import EvalResult, Reference, compare, reference_pass
from smoothquant.pipeline import quantize_model
from smoothquant.quantization import get_scheme
from smoothquant.quantization.gptq import check_rounding
from smoothquant.recipe import QuantizationResult, Recipe
from smoothquant.smoothing.smooth import Alpha

FP = "fp"


@dataclass(frozen=True)
class Config:
    """One row: ``scheme`` None is the floating-point reference itself. ``rounding``: weight
    rounding, ``"nearest"`` or ``"gptq"``."""

    name: str
    scheme: str | None = None
    alpha: Alpha | str = 0.5
    linear_pairs: bool = False
    rounding: str = "nearest"
    ranges: str = "absmax"
    check_alphas: tuple[float, ...] = ()  # with alpha "auto": the single alphas it is checked against

    def __post_init__(self) -> None:
        self.recipe()  # a bad row fails here, before any model work

    def recipe(self) -> Recipe | None:
        """What the row builds (None: the floating-point reference)."""
        if self.scheme is None:
            return None
        return Recipe(
            self.scheme,
            self.alpha,
            linear_pairs=self.linear_pairs,
            weight_rounding=self.rounding,
            ranges=self.ranges,
            check_alphas=self.check_alphas,
        )

    @property
    def smoothed(self) -> bool:
        return self.scheme is not None and get_scheme(self.scheme).migration != "none"

    def describe(self) -> dict:
        if self.scheme is None:
            return {"scheme": FP}
        info: dict = {"scheme": get_scheme(self.scheme).name}
        if self.smoothed:
            alpha = self.alpha
            info |= {"alpha": alpha if isinstance(alpha, (int, float, str)) else dict(alpha)}
            info["linear_pairs"] = self.linear_pairs
        if self.rounding != "nearest":
            info["weight_rounding"] = self.rounding
        if self.ranges != "absmax":
            info["ranges"] = self.ranges
        if self.check_alphas:
            info["check_alphas"] = list(self.check_alphas)
        return info


def parse_configs(
    names: Sequence[str],
    alpha: Alpha | str = 0.5,
    linear_pairs: bool | str = False,
    rounding: str = "nearest",
    ranges: str = "absmax",
    check_alphas: tuple[float, ...] = (),
) -> list[Config]:
    """Configs from scheme names (``fp`` for the reference), sharing one alpha.

    ``linear_pairs``: True / ``"all"`` for every row, or a comma-separated list of the schemes
    that also smooth linear -> linear pairs (``"O2,O3"``). ``rounding`` applies to the SmoothQuant
    rows; baselines (naive, ZeroQuant, LLM.int8()) keep round-to-nearest, as published, and
    ``ranges`` (``"absmax"`` or ``"search"``) likewise. ``check_alphas``: with alpha ``"auto"``,
    the single alphas the SmoothQuant rows' search is checked against."""
    check_rounding(rounding)
    if isinstance(linear_pairs, str):
        wanted = {n.strip().lower() for n in linear_pairs.split(",") if n.strip()}
        every = "all" in wanted
        pairs = set() if every else {get_scheme(n).name for n in wanted}
    else:
        every, pairs = bool(linear_pairs), set()
    out = []
    for name in names:
        if name.strip().lower() in (FP, "fp32", "float"):
            out.append(Config("FP"))
        else:
            scheme = get_scheme(name)  # validates early, before any model work
            pairs_here = every or scheme.name in pairs
            ours = scheme.migration == "smoothquant"
            out.append(
                Config(
                    scheme.name,
                    scheme.name,
                    alpha,
                    pairs_here,
                    rounding if ours else "nearest",
                    ranges if ours else "absmax",
                    tuple(check_alphas) if ours else (),
                )
            )
    return out


def build(
    model: nn.Module, config: Config, calibration: torch.Tensor | None, stats: ActStats | None
) -> QuantizationResult:
    """A quantized copy of ``model`` following ``config`` (``model`` itself is not modified), in
    ``.model`` of the result, which also says what was chosen (alphas, search) and what it took."""
    return quantize_model(copy.deepcopy(model), calibration, config.recipe(), stats=stats, progress=False)


def run(
    model: nn.Module,
    configs: Sequence[Config],
    windows: torch.Tensor,
    calibration: torch.Tensor | None = None,
    *,
    stats: ActStats | None = None,
    reference: Reference | None = None,
    progress: bool = True,
    extra: Callable[[nn.Module], dict[str, float]] | None = None,
) -> list[EvalResult]:
    """Evaluate every config on ``windows``; ``seconds`` of a row = building + evaluating it.

    Calibrates once (unless ``stats`` are given) if any config needs it. ``extra(model)`` adds
    more scores per row (lm-eval tasks, say) to ``info["tasks"]`` while the row's model exists."""
    needs_calib = any(c.scheme is not None and get_scheme(c.scheme).needs_calibration for c in configs)
    if needs_calib and stats is None:
        stats = calibrate(model, calibration, progress=progress)
    reference = reference or reference_pass(model, windows, progress=progress)
    results = []
    for config in tqdm(configs, desc="configurations", unit="cfg", disable=not progress):
        start = time.perf_counter()
        if config.scheme is None:
            row_model, result = model, reference.result(config.name)
        else:
            built = build(model, config, calibration, stats)
            row_model = built.model
            result = compare(row_model, reference, config.name, progress=progress)
            result.seconds = time.perf_counter() - start
        result.info = config.describe()
        if config.scheme is not None:
            result.info["quantize_seconds"] = round(sum(built.seconds.values()), 2)
            if built.search is not None:
                result.info["alpha_search"] = {
                    "seconds": round(built.search.seconds, 2),
                    "alpha": built.alpha,
                }
            if built.check is not None:
                result.info["model_check"] = built.check.to_recipe()
        if extra is not None:
            result.info["tasks"] = extra(row_model)
        del row_model
        results.append(result)
    return results


# ---- output ------------------------------------------------------------------------------------
def format_table(results: Sequence[EvalResult], fp_perplexity: float | None = None) -> str:
    """A fixed-width table; ``vs FP`` is the perplexity change relative to ``fp_perplexity``."""
    if fp_perplexity is None:
        fp_perplexity = next((r.perplexity for r in results if r.info.get("scheme") == FP), None)
    tasks = list(dict.fromkeys(t for r in results for t in r.info.get("tasks", {})))
    header = f"{'configuration':24s} {'perplexity':>10s} {'vs FP':>8s} {'KL(FP||Q)':>10s} {'top-1':>7s} {'seconds':>8s}"
    header += "".join(f" {t[:14]:>14s}" for t in tasks)
    lines = [header, "-" * len(header)]
    for r in results:
        delta = f"{100 * (r.perplexity / fp_perplexity - 1):+7.1f}%" if fp_perplexity else ""
        line = f"{r.name:24s} {r.perplexity:10.3f} {delta:>8s} {r.kl:10.4f} {100 * r.top1:6.1f}% {r.seconds:8.1f}"
        scores = r.info.get("tasks", {})
        lines.append(line + "".join(f" {scores[t]:14.4f}" if t in scores else f" {'':14s}" for t in tasks))
    return "\n".join(lines)


def write_results(results: Sequence[EvalResult], path: str | Path, meta: dict | None = None) -> Path:
    """``.json`` (rows plus ``meta``: model, data, protocol) or ``.csv`` (rows only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [r.as_dict() for r in results]
    if path.suffix.lower() == ".csv":
        keys = list(dict.fromkeys(k for row in rows for k in row))
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(
                {k: json.dumps(v) if isinstance(v, dict) else v for k, v in row.items()} for row in rows
            )
    else:
        path.write_text(json.dumps({"meta": meta or {}, "results": rows}, indent=2) + "\n")
    return path
