"""Activation statistics: what calibration measures and everything downstream consumes.

All statistics are per channel (fp32 absmax); per-tensor values are derived from them
(``max`` over channels) rather than stored twice. That makes them exactly transformable by
smoothing: after ``X / s`` the channel absmax is ``absmax / s``, so :func:`smooth` can return the
statistics of the smoothed model without a second calibration pass.

Files: safetensors (ours: inputs, outputs, token histograms and metadata) or the reference code's
``.pt`` dict ``{"model.layers.0.self_attn.q_proj": tensor[in_features]}`` of input absmax, so
published act-scales can be reused. ``.pt`` files are read with ``weights_only=True``: no pickle
code runs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from smoothquant.errors import StatsMismatchError

FORMAT = "smoothquant-stats/1"

# Per-token absmax histograms use fixed log2-spaced bins so that batches merge by addition and
# memory stays O(bins) however many tokens are seen: 16 bins per octave over 2^-24 .. 2^40.
HIST_LOG2_MIN = -24.0
HIST_BINS_PER_OCTAVE = 16
HIST_BINS = 64 * HIST_BINS_PER_OCTAVE


def hist_bin(values: torch.Tensor) -> torch.Tensor:
    """Histogram bin of each (non-negative) value; zeros land in bin 0, huge values in the last."""
    log2 = torch.log2(values.float().clamp_min(2.0**HIST_LOG2_MIN))
    idx = torch.floor((log2 - HIST_LOG2_MIN) * HIST_BINS_PER_OCTAVE)
    return idx.clamp(0, HIST_BINS - 1).long()


def hist_upper_edge(index: int) -> float:
    return 2.0 ** (HIST_LOG2_MIN + (index + 1) / HIST_BINS_PER_OCTAVE)


@dataclass
class ActStats:
    """Activation statistics keyed by full module name.

    ``inputs[name]``: per-input-channel absmax ``[in_features]`` of the module's input.
    ``outputs[name]``: per-output-channel absmax ``[out_features]`` (q/k/v: the attention BMM inputs).
    ``token_hist[name]``: counts of per-token input absmax in :data:`HIST_BINS` log bins (optional,
    for clipping schemes).
    ``meta``: ``model_type``, ``num_tokens``, ``smoothing_id`` of the model measured.
    """

    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    token_hist: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def input_absmax(self, name: str) -> torch.Tensor:
        """Per-tensor absmax of a module's input (a 0-d tensor)."""
        return self.inputs[name].max()

    def output_absmax(self, name: str) -> torch.Tensor:
        return self.outputs[name].max()

    def token_quantile(self, name: str, q: float) -> float:
        """The q-quantile of per-token input absmax (bin upper edge, within 4.4%)."""
        counts = self.token_hist[name].double()
        total = counts.sum().item()
        if total <= 0:
            raise StatsMismatchError(f"no token histogram counts for {name}")
        cum = torch.cumsum(counts, 0) / total
        index = int(torch.searchsorted(cum, torch.tensor(q, dtype=cum.dtype)).item())
        return hist_upper_edge(min(index, HIST_BINS - 1))

    def copy(self) -> ActStats:
        return ActStats(
            {k: v.clone() for k, v in self.inputs.items()},
            {k: v.clone() for k, v in self.outputs.items()},
            {k: v.clone() for k, v in self.token_hist.items()},
            dict(self.meta),
        )

    def validate(self, expected: Mapping[str, int], *, what: str, kind: str = "inputs") -> None:
        """Check these statistics cover ``expected`` (name -> channels) with matching shapes."""
        table = getattr(self, kind)
        missing = [n for n in expected if n not in table]
        wrong = [
            f"{n}: {tuple(table[n].shape)} vs {expected[n]} channels"
            for n in expected
            if n in table and table[n].shape != (expected[n],)
        ]
        if missing or wrong:
            problems = []
            if missing:
                problems.append(f"{len(missing)} modules missing (e.g. {', '.join(missing[:3])})")
            if wrong:
                problems.append(f"{len(wrong)} shape mismatches (e.g. {'; '.join(wrong[:3])})")
            source = self.meta.get("model_type", "an unknown model")
            raise StatsMismatchError(
                f"statistics (from {source}) do not match this model for {what}: "
                + ", ".join(problems)
                + ". Calibrate this model with smoothquant.calibrate(model, batches)."
            )
        bad = [n for n in expected if not torch.isfinite(table[n]).all()]
        if bad:
            raise StatsMismatchError(f"statistics contain NaN/inf for {', '.join(bad[:3])}; recalibrate")

    # ---- files -------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write to ``.safetensors`` (everything) or ``.pt`` (reference format: inputs only)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".pt":
            torch.save({k: v.float().cpu() for k, v in self.inputs.items()}, path)
            return path
        tensors = {}
        for kind in ("inputs", "outputs", "token_hist"):
            for name, t in getattr(self, kind).items():
                tensors[f"{kind}:{name}"] = t.detach().float().cpu().contiguous()
        save_file(tensors, str(path), metadata={"format": FORMAT, "meta": json.dumps(self.meta)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> ActStats:
        path = Path(path)
        if not path.is_file():
            raise StatsMismatchError(f"statistics file {path} does not exist")
        if path.suffix == ".pt":
            try:
                data = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # pickle refusals and corrupt files alike
                raise StatsMismatchError(f"cannot read {path} as a tensor dict: {e}") from e
            if not isinstance(data, dict) or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) and v.dim() == 1 for k, v in data.items()
            ):
                raise StatsMismatchError(
                    f"{path} is not an act-scales dict {{module name: 1-D tensor}} like the reference code's"
                )
            return cls(inputs={k: v.float() for k, v in data.items()}, meta={"source": str(path)})
        try:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                metadata = f.metadata() or {}
            tensors = load_file(str(path))
        except Exception as e:
            raise StatsMismatchError(f"cannot read statistics file {path}: {e}") from e
        if metadata.get("format") != FORMAT:
            raise StatsMismatchError(
                f"{path} is not a smoothquant statistics file (format {metadata.get('format')!r})"
            )
        stats = cls(meta=json.loads(metadata.get("meta", "{}")))
        for key, t in tensors.items():
            kind, _, name = key.partition(":")
            if kind not in ("inputs", "outputs", "token_hist"):
                raise StatsMismatchError(f"{path}: unexpected tensor {key!r}")
            getattr(stats, kind)[name] = t
        return stats

    def summary(self) -> str:
        tokens = self.meta.get("num_tokens")
        ratio = [float((v.max() / v.median().clamp_min(1e-12)).item()) for v in self.inputs.values()]
        worst = max(ratio) if ratio else math.nan
        return (
            f"{len(self.inputs)} modules, {tokens} tokens; worst max/median channel absmax ratio {worst:.0f}x"
        )
