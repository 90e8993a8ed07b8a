"""The demo's experiment: SmoothQuant against naive W8A8 and floating point on one real model.

One calibration pass and one floating-point pass are shared by every row (each row quantizes a
fresh copy, see :mod:`smoothquant.evaluation.runner`); then the paper's two figures: the worst
layer's channel magnitudes before and after smoothing (Figure 4, no forward pass) and perplexity
versus alpha (Figure 10, one short evaluation per point). The outputs (``results.json`` and the
two figures) are written together at the end, through a temporary folder, so an interrupted demo
leaves nothing half-written in ``out``.

Three modes, because tokens are what costs time on a CPU (timings: README):

- ``short`` (the default): FP, naive W8A8 and the four SmoothQuant schemes at fixed alphas, on
  a few windows; a three-point sweep on one window for Figure 10. No alpha search, no GPTQ.
- ``full``: adds the ZeroQuant and LLM.int8() baselines, O3 with the automatic alpha, GPTQ
  rounding and searched ranges (minutes of search on 2 cores), more tokens, a six-point sweep.
- ``quick``: a smoke test, one evaluation window and two calibration windows.
"""

from __future__ import annotations

import copy
import os
import platform
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from smoothquant.calibration import ActStats, calibrate
from smoothquant.data import calibration_batches, eval_windows
from smoothquant.evaluation import plots
from smoothquant.evaluation.metrics import EvalResult, Reference, compare, reference_pass
from smoothquant.evaluation.runner import Config, build, format_table, run, write_results
from smoothquant.models import load_model
from smoothquant.nn_utils import weight_oi
from smoothquant.quantization import quantization_targets
from smoothquant.smoothing import smooth
from smoothquant.smoothing.smooth import check_alpha
from smoothquant.tmpdirs import temp_name

# How each SmoothQuant row of the full table migrates outliers. ``alpha`` is a float, a mapping
# of groups ({"*.mlp_out": 0.6, "*": 0.5}) or "auto"; ``linear_pairs`` also smooths
# up_proj -> down_proj and v_proj -> o_proj. On smollm2-135m the worst outlier (a ~1500x
# channel) is the input of down_proj, which no norm precedes: with one activation scale per tensor
# (O2, O3) it flattens every other channel unless that pair is smoothed. The automatic search
# takes minutes per row on 2 cores, so the full table runs it where it gains most (O3, with GPTQ
# rounding and searched ranges, which its per-tensor scales need most: docs/auto-alpha.md).
# ``rounding``/``ranges`` are optional keys (default nearest/absmax).
SMOOTHING: dict[str, dict[str, Any]] = {
    "O1": {"alpha": 0.4, "linear_pairs": False},
    "O2": {"alpha": 0.5, "linear_pairs": True},
    "O3": {"alpha": "auto", "linear_pairs": True, "rounding": "gptq", "ranges": "search"},
    "w8a8": {"alpha": 0.5, "linear_pairs": False},
}
FIXED_ALPHA = 0.5  # what the short and quick modes use where SMOOTHING says "auto"

# (row name, scheme preset; None is the floating-point model)
ROWS = (
    ("FP", None),
    ("naive W8A8", "naive"),
    ("ZeroQuant", "zeroquant"),
    ("LLM.int8()", "llm.int8"),
    ("SmoothQuant-O1", "O1"),
    ("SmoothQuant-O2", "O2"),
    ("SmoothQuant-O3", "O3"),
    ("SmoothQuant-W8A8", "w8a8"),
)
BASELINES = ("zeroquant", "llm.int8")  # the rows the short mode leaves to --full
SWEEP_SCHEMES = ("O3", "w8a8")


@dataclass(frozen=True)
class Size:
    """How much work the demo does (tokens are what costs time on a CPU)."""

    calib_samples: int  # calibration windows
    calib_seq_len: int
    eval_windows: int  # evaluation windows of seq_len tokens
    seq_len: int
    sweep_alphas: tuple[float, ...]
    sweep_windows: int  # the alpha sweep uses the first windows of the evaluation set


@dataclass(frozen=True)
class Mode:
    """A size, the rows it prints, and whether it runs the expensive settings (search, GPTQ)."""

    name: str
    size: Size
    rows: tuple[tuple[str, str | None], ...] = ROWS
    searched: bool = True  # False: "auto" becomes FIXED_ALPHA, rounding nearest, ranges absmax

    def smoothing(self, alpha: object = None) -> dict[str, dict[str, Any]]:
        """Each SmoothQuant scheme's settings in this mode; ``alpha`` (parsed, checked here)
        overrides them all."""
        if alpha is not None:
            check_alpha(alpha)
        out = {k: dict(v, alpha=alpha) if alpha is not None else dict(v) for k, v in SMOOTHING.items()}
        if not self.searched:
            out = {
                k: {
                    "alpha": FIXED_ALPHA if v["alpha"] == "auto" else v["alpha"],
                    "linear_pairs": v["linear_pairs"],
                }
                for k, v in out.items()
            }
        return out


FULL = Mode("full", Size(16, 512, 6, 512, (0.3, 0.4, 0.5, 0.6, 0.7, 0.8), 2))
SHORT = Mode(
    "short",
    Size(8, 512, 4, 512, (0.3, 0.5, 0.7), 1),
    tuple(r for r in ROWS if r[1] not in BASELINES),
    searched=False,
)
QUICK = Mode("quick", Size(2, 512, 1, 512, (0.3, 0.5, 0.7), 1), searched=False)
MODES = {m.name: m for m in (SHORT, FULL, QUICK)}


@dataclass
class DemoReport:
    """What the demo measured and wrote."""

    results: list[EvalResult]
    smoothing: dict[str, dict[str, Any]]
    layer: str
    files: list[Path] = field(default_factory=list)
    wall: float = 0.0
    cpu: float = 0.0


def run_demo(
    model_name: str,
    data: str,
    mode: Mode,
    out: str | os.PathLike,
    *,
    alpha: object = None,
    data_dir: str | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> DemoReport:
    """Load, calibrate once, evaluate ``mode``'s rows, draw both figures, then write them all."""
    smoothing, size = mode.smoothing(alpha), mode.size
    wall, cpu = time.perf_counter(), time.process_time()
    echo(f"smoothquant demo: {model_name} on {data} ({mode.name} mode)")
    model, windows, calib, stats = _prepare(model_name, data, size, data_dir, progress, echo)

    configs = [Config(name, scheme, **smoothing.get(scheme, {})) for name, scheme in mode.rows]
    reference = reference_pass(model, windows, progress=progress)
    results = run(model, configs, windows, calib, stats=stats, reference=reference, progress=progress)
    by_scheme = {c.scheme: r for c, r in zip(configs, results, strict=True)}
    o3 = dict(smoothing["O3"])
    if o3["alpha"] == "auto" and "O3" in by_scheme:  # the alphas the O3 row's search chose
        o3["alpha"] = by_scheme["O3"].info["alpha_search"]["alpha"]
    layer, channels = _channels(model, stats, o3)
    reuse = size.sweep_windows == windows.shape[0]  # the sweep runs on the table's windows
    sub = reference if reuse else reference.first(size.sweep_windows)
    sweep, lines = _sweep(model, (calib, stats), sub, by_scheme if reuse else {}, smoothing, size, progress)

    report = DemoReport(results, smoothing, layer)
    meta = {
        "model": model_name,
        "data": data,
        "mode": mode.name,
        "size": asdict(size),
        "smoothing": smoothing,
        "calibration_tokens": calib.numel(),
        "tokens_scored": results[0].tokens,
        "worst_layer": layer,
        "sweep": {s: [{"alpha": a, "perplexity": p} for a, p in pts] for s, pts in sweep.items()},
        "sweep_baselines": lines,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
    }
    with _staging(Path(out)) as tmp:
        alpha_o3 = smoothing["O3"]["alpha"]
        title = f"{model_name} {layer}: per-channel absmax before / after O3's smoothing (alpha {alpha_o3})"
        plots.plot_channel_absmax(tmp / "fig4_channel_absmax.png", layer, *channels, title=title)
        plots.plot_alpha_sweep(
            tmp / "fig10_alpha_sweep.png",
            {f"SmoothQuant-{s}": pts for s, pts in sweep.items()},
            {"FP": lines["FP"], "naive W8A8": lines["naive"]},
            title=f"{model_name}: perplexity vs alpha ({sub.nll.numel()} held-out tokens)",
        )
        report.wall, report.cpu = time.perf_counter() - wall, time.process_time() - cpu
        meta |= {"wall_seconds": round(report.wall, 1), "cpu_seconds": round(report.cpu, 1)}
        write_results(results, tmp / "results.json", meta)
        report.files = [Path(out) / p.name for p in sorted(tmp.iterdir())]
    return report


def _prepare(
    model_name: str, data: str, size: Size, data_dir: str | None, progress: bool, echo: Callable[[str], None]
) -> tuple[nn.Module, torch.Tensor, torch.Tensor, ActStats]:
    """The model, the evaluation windows, the calibration windows and their statistics."""
    if not progress:  # transformers draws its own bar while it reads the weights
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    model, tokenizer = load_model(model_name)
    windows = eval_windows(tokenizer, data, size.seq_len, size.eval_windows * size.seq_len, data_dir=data_dir)
    calib = calibration_batches(tokenizer, data, size.calib_samples, size.calib_seq_len, data_dir=data_dir)
    echo(
        f"calibration: {calib.shape[0]} x {calib.shape[1]} tokens of the calibration split; evaluation: "
        f"{windows.shape[0]} x {windows.shape[1]} tokens of the held-out split"
    )
    stats = calibrate(model, calib, batch_size=max(1, 2048 // calib.shape[1]), progress=progress)
    echo(f"calibrated: {stats.summary()}")
    return model, windows, calib, stats


def _channels(
    model: nn.Module, stats: ActStats, o3: Mapping[str, Any]
) -> tuple[str, tuple[torch.Tensor, ...]]:
    """Figure 4's data: the worst layer, its input channels' absmax before and after O3's
    smoothing, and its weight columns' absmax before and after (no forward pass)."""
    smoothed_model = copy.deepcopy(model)
    smoothed = smooth(smoothed_model, stats, o3["alpha"], linear_pairs=o3["linear_pairs"])
    layer = plots.worst_layer(stats, list(quantization_targets(model)))
    weights = [weight_oi(m.get_submodule(layer)).detach().abs().amax(0) for m in (model, smoothed_model)]
    return layer, (stats.inputs[layer], smoothed.inputs[layer], *weights)


def _sweep(
    model: nn.Module,
    calibration: tuple[torch.Tensor, ActStats],
    sub: Reference,
    table: Mapping[str | None, EvalResult],
    smoothing: Mapping[str, Mapping[str, Any]],
    size: Size,
    progress: bool,
) -> tuple[dict[str, list[tuple[float, float]]], dict[str, float]]:
    """Figure 10's data: perplexity per (scheme, alpha) on ``sub``, and the FP / naive lines.
    ``table``: the table's rows by scheme where they were measured on ``sub``'s windows (reused,
    not run again), else empty."""
    if "naive" in table:
        naive = table["naive"].perplexity
    else:
        built = build(model, Config("naive", "naive"), None, None).model
        naive = compare(built, sub, "naive", progress=progress).perplexity
        del built
    sweep: dict[str, list[tuple[float, float]]] = {s: [] for s in SWEEP_SCHEMES}
    points = [(s, a) for s in SWEEP_SCHEMES for a in size.sweep_alphas]
    for scheme, a in tqdm(points, desc="alpha sweep", unit="cfg", disable=not progress):
        if scheme in table and a == smoothing[scheme]["alpha"]:
            ppl = table[scheme].perplexity
        else:
            config = Config(f"{scheme} alpha={a}", scheme, a, smoothing[scheme]["linear_pairs"])
            row = build(model, config, *calibration).model
            ppl = compare(row, sub, config.name, progress=progress).perplexity
            del row
        sweep[scheme].append((a, ppl))
    return sweep, {"FP": sub.result().perplexity, "naive": naive}


class _staging:
    """A hidden sibling folder of ``out`` to write into; its files move into ``out`` (created if
    needed, other files in it kept) only when the block completes, and it is removed either way."""

    def __init__(self, out: Path) -> None:
        self.out = out.absolute()
        self.tmp = temp_name(self.out, "tmp", uuid.uuid4().hex[:8])

    def __enter__(self) -> Path:
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, kind: object, *_: object) -> None:
        try:
            if kind is None:
                self.out.mkdir(exist_ok=True)
                for path in sorted(self.tmp.iterdir()):
                    os.replace(path, self.out / path.name)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


def summary(report: DemoReport, model_name: str, data: str) -> str:
    """The text the command prints after the run: settings, table, figures, time."""
    first = report.results[0]
    settings = "; ".join(
        f"{k} alpha {v['alpha']}{' + linear pairs' if v['linear_pairs'] else ''}"
        + (f", {v['rounding']} rounding" if v.get("rounding", "nearest") != "nearest" else "")
        + (f", {v['ranges']} ranges" if v.get("ranges", "absmax") != "absmax" else "")
        for k, v in report.smoothing.items()
    )
    lines = [
        f"\n{model_name}: {first.tokens} held-out tokens of {data}",
        f"SmoothQuant: {settings}",
        format_table(report.results),
        f"\nworst layer (Figure 4): {report.layer}",
        "written: " + ", ".join(str(p) for p in report.files),
        f"total {report.wall:.0f} s wall ({report.cpu:.0f} s CPU)",
    ]
    return "\n".join(lines)
