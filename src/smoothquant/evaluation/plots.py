"""The demo's two figures, after the paper's Figure 4 (channel magnitudes before/after smoothing)
and Figure 10 (perplexity versus migration strength alpha). matplotlib is optional
(``pip install smoothquant[demo]``) and runs headless (Agg)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from smoothquant.calibration import ActStats
from smoothquant.errors import SmoothQuantError


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise SmoothQuantError("plots need matplotlib: pip install 'smoothquant[demo]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def worst_layer(stats: ActStats, names: Sequence[str] | None = None) -> str:
    """The linear whose input has the largest max/median channel-absmax ratio (the worst outliers)."""
    candidates = names if names is not None else list(stats.inputs)
    return max(
        candidates, key=lambda n: float(stats.inputs[n].max() / stats.inputs[n].median().clamp_min(1e-12))
    )


def plot_channel_absmax(
    path: str | Path,
    layer: str,
    act_before: torch.Tensor,
    act_after: torch.Tensor,
    weight_before: torch.Tensor,
    weight_after: torch.Tensor,
    title: str = "",
) -> Path:
    """2x2 panels: per-input-channel absmax of activations (top) and weights (bottom), before
    (left) and after (right) smoothing, on shared log y axes per row so the migration is visible."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 6.5), sharey="row")
    panels = (
        (axes[0, 0], act_before, "activation |X| before smoothing", "tab:red"),
        (axes[0, 1], act_after, "activation |X| after smoothing", "tab:red"),
        (axes[1, 0], weight_before, "weight |W| before smoothing", "tab:blue"),
        (axes[1, 1], weight_after, "weight |W| after smoothing", "tab:blue"),
    )
    for ax, values, label, color in panels:
        v = values.detach().float().cpu()
        # one filled step per channel: thousands of bar patches would take seconds to draw
        ax.stairs(v.clamp_min(1e-6).numpy(), baseline=None, color=color, linewidth=0.6)
        peak = int(v.argmax())
        ax.set_title(
            f"{label}\nmax {float(v.max()):.3g} (channel {peak}), median {float(v.median()):.3g}", fontsize=9
        )
        ax.set_xlim(0, v.numel())
        ax.set_yscale("log")  # a 1000x channel next to ordinary ones: linear axes show one spike
        ax.set_xlabel("input channel")
    axes[0, 0].set_ylabel("per-channel absmax (log)")
    axes[1, 0].set_ylabel("per-channel absmax (log)")
    fig.suptitle(title or f"{layer}: outliers migrate from activations into weights")
    return _save(plt, fig, path)


def plot_alpha_sweep(
    path: str | Path,
    sweep: Mapping[str, Sequence[tuple[float, float]]],
    baselines: Mapping[str, float],
    title: str = "",
) -> Path:
    """Perplexity versus alpha, one line per scheme; ``baselines`` (FP, naive...) as dashed lines."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in sweep.items():
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, marker="o", label=name)
    styles = iter(("--", ":", "-."))
    for name, value in baselines.items():
        ax.axhline(value, linestyle=next(styles, "--"), color="gray", label=f"{name} ({value:.2f})")
    ax.set_xlabel("migration strength alpha")
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "perplexity versus alpha")
    return _save(plt, fig, path)


def _save(plt, fig, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
