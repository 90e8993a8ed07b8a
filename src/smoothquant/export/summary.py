"""``QuantizeSummary``: what one ``smoothquant quantize`` run did and cost, in memory or layer by layer.

One type for both drivers, so the command prints the same lines (and a script reads the same
fields) whichever path wrote the checkpoint; the layer-by-layer fields stay at their defaults for
an in-memory run.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from smoothquant.search import AlphaSearch

MIB, GIB = 2**20, 2**30


def peak_rss() -> int:
    """Peak resident memory of this process in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def describe_alphas(alpha: dict[str, float | None]) -> str:
    values = sorted({a for a in alpha.values() if a is not None})
    if not values:
        return "none"
    if len(values) == 1:
        return f"{values[0]:g}"
    return f"{values[0]:g}..{values[-1]:g} over {len(alpha)} groups"


@dataclass
class QuantizeSummary:
    """``bytes_before``: the source's floating-point weights (in memory: at the dtype loaded; layer
    by layer: its shards on disk); ``bytes_after``: the checkpoint's tensors on disk.
    ``layerwise``: written one decoder block at a time, with the fields after it (``peak_device``:
    the accelerator's peak memory, ``activation_bytes``: the calibration activations at one
    block boundary)."""

    out_dir: Path
    model: str
    scheme: str
    alpha: dict[str, float | None]
    quantized_linears: int
    bytes_before: int
    bytes_after: int
    dtype: torch.dtype
    seconds: dict[str, float] = field(default_factory=dict)
    search: AlphaSearch | None = None
    peak_rss: int = 0
    layerwise: bool = False
    num_layers: int = 0
    reused_layers: int = 0
    layer_seconds: dict[int, float] = field(default_factory=dict)
    peak_device: int | None = None
    activation_bytes: int = 0
    device: str = "cpu"
    offload: bool = False

    @property
    def source_bytes(self) -> int:
        return self.bytes_before

    @property
    def output_bytes(self) -> int:
        return self.bytes_after

    def lines(self) -> list[str]:
        dtype = str(self.dtype).removeprefix("torch.")
        how = " layer by layer" if self.layerwise else ""
        first = f"quantized {self.quantized_linears} linears of {self.model}{how} with {self.scheme}"
        first += f" (alpha {describe_alphas(self.alpha)})"
        ratio = f"{self.bytes_before / max(self.bytes_after, 1):.2f}x smaller"
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        if not self.layerwise:
            return [
                first,
                f"size: {self.bytes_before / MIB:.1f} MiB ({dtype}) -> {self.bytes_after / MIB:.1f} MiB ({ratio})",
                f"time: {steps} (total {sum(self.seconds.values()):.1f} s)",
                f"wrote {self.out_dir} (compressed-tensors int-quantized: vLLM, transformers, smoothquant.load)",
            ]
        computed = list(self.layer_seconds.values())
        per_layer = f"{sum(computed) / len(computed):.1f} s per layer" if computed else "all layers reused"
        device = f", peak {self.device} memory {self.peak_device / GIB:.2f} GiB" if self.peak_device else ""
        where = "offloaded to disk" if self.offload else "in memory"
        return [
            f"{first}, {self.num_layers} layers ({self.reused_layers} reused from an interrupted run)",
            f"size: {self.bytes_before / MIB:.1f} MiB on disk -> {self.bytes_after / MIB:.1f} MiB ({ratio}); "
            f"compute in {dtype} on {self.device}",
            f"time: {per_layer}; {steps}",
            f"memory: peak RSS {self.peak_rss / GIB:.2f} GiB{device}; calibration activations "
            f"{self.activation_bytes / MIB:.1f} MiB per block boundary, {where}",
            f"wrote {self.out_dir} (compressed-tensors int-quantized, sharded per layer)",
        ]


ExportSummary = QuantizeSummary  # the in-memory summary's name before both drivers shared one
