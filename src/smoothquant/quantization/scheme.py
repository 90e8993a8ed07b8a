"""Quantization schemes: small frozen dataclasses, and the named presets built from them.

All quantization is symmetric INT8 (levels -127..127, no zero point). A preset is just an
instance; nothing in the library branches on preset names.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from smoothquant.errors import SchemeError

QMAX = 127


@dataclass(frozen=True)
class WeightQuant:
    """How weights are scaled: one scale per tensor, per output channel, or per group of
    ``group_size`` input channels within each output channel (ZeroQuant)."""

    granularity: Literal["tensor", "channel", "group"] = "channel"
    group_size: int | None = None

    def __post_init__(self) -> None:
        if self.granularity not in ("tensor", "channel", "group"):
            raise SchemeError(
                f"weight granularity must be tensor, channel or group, not {self.granularity!r}"
            )
        if (self.granularity == "group") != (self.group_size is not None):
            raise SchemeError("group_size is required for, and only for, group-wise weights")
        if self.group_size is not None and self.group_size < 1:
            raise SchemeError(f"group_size must be >= 1, got {self.group_size}")


@dataclass(frozen=True)
class ActQuant:
    """How activations are scaled: per tensor or per token; from the data at run time (dynamic)
    or from calibration (static). ``clip_quantile`` (static only) clips the range at that quantile
    of per-token absmax, as Outlier Suppression's token-wise clipping does."""

    granularity: Literal["tensor", "token"] = "token"
    dynamic: bool = True
    clip_quantile: float | None = None

    def __post_init__(self) -> None:
        if self.granularity not in ("tensor", "token"):
            raise SchemeError(f"activation granularity must be tensor or token, not {self.granularity!r}")
        if self.granularity == "token" and not self.dynamic:
            raise SchemeError("per-token activation scales only exist dynamically (tokens vary per input)")
        if self.clip_quantile is not None:
            if self.dynamic:
                raise SchemeError("clip_quantile applies to static activation scales only")
            if not 0.0 < self.clip_quantile <= 1.0:
                raise SchemeError(f"clip_quantile must be in (0, 1], got {self.clip_quantile}")


@dataclass(frozen=True)
class Scheme:
    """A complete W8A8 recipe for the linears of a model.

    ``outputs``: also quantize the outputs of q/k/v projections (the attention BMM operands, the
    paper's Figure 6). ``outlier_threshold``: LLM.int8()'s mixed precision: input columns holding
    any |x| above it stay in floating point. ``migration``: what runs before quantization:
    SmoothQuant smoothing, Outlier Suppression's gamma migration, or nothing.
    ``float_outliers`` (meant for per-tensor weights): linears whose range product ``max|X_j| max|W_j|``
    peaks above this multiple of its median stay in floating point
    (:mod:`smoothquant.quantization.outliers`: no alpha can fit them into two per-tensor scales).
    """

    name: str
    weights: WeightQuant
    inputs: ActQuant
    outputs: ActQuant | None = None
    outlier_threshold: float | None = None
    migration: Literal["smoothquant", "gamma", "none"] = "smoothquant"
    description: str = ""
    float_outliers: float | None = None

    def __post_init__(self) -> None:
        if self.float_outliers is not None and not self.float_outliers > 1.0:
            raise SchemeError(
                f"float_outliers is a ratio max/median and must be > 1, got {self.float_outliers}"
            )
        if self.migration not in ("smoothquant", "gamma", "none"):
            raise SchemeError(f"migration must be smoothquant, gamma or none, not {self.migration!r}")
        if self.outlier_threshold is not None and self.outlier_threshold <= 0:
            raise SchemeError("outlier_threshold must be positive")

    @property
    def static_inputs(self) -> bool:
        return not self.inputs.dynamic

    @property
    def needs_calibration(self) -> bool:
        """Smoothing and static scales need statistics; dynamic baselines run without data."""
        return (
            self.migration != "none"
            or not self.inputs.dynamic
            or (self.outputs is not None and not self.outputs.dynamic)
        )

    @property
    def needs_token_histograms(self) -> bool:
        return any(q is not None and q.clip_quantile is not None for q in (self.inputs, self.outputs))

    def with_bmm_quant(self) -> Scheme:
        """The same scheme also quantizing q/k/v outputs, with the activation settings."""
        return replace(self, name=f"{self.name}+bmm", outputs=replace(self.inputs, clip_quantile=None))


PER_TENSOR = WeightQuant("tensor")
PER_CHANNEL = WeightQuant("channel")
TOKEN_DYNAMIC = ActQuant("token", dynamic=True)
TENSOR_DYNAMIC = ActQuant("tensor", dynamic=True)
TENSOR_STATIC = ActQuant("tensor", dynamic=False)

PRESETS: dict[str, Scheme] = {
    s.name.lower(): s
    for s in (
        Scheme(
            "O1", PER_TENSOR, TOKEN_DYNAMIC, description="SmoothQuant-O1: per-tensor W, per-token dynamic A"
        ),
        Scheme(
            "O2", PER_TENSOR, TENSOR_DYNAMIC, description="SmoothQuant-O2: per-tensor W, per-tensor dynamic A"
        ),
        Scheme(
            "O3", PER_TENSOR, TENSOR_STATIC, description="SmoothQuant-O3: per-tensor W, per-tensor static A"
        ),
        Scheme(
            "w8a8",
            PER_CHANNEL,
            TOKEN_DYNAMIC,
            description="SmoothQuant with per-channel W, per-token dynamic A (what vLLM serves)",
        ),
        Scheme(
            "naive", PER_TENSOR, TENSOR_DYNAMIC, migration="none", description="W8A8 baseline, no smoothing"
        ),
        Scheme(
            "zeroquant",
            WeightQuant("group", group_size=128),
            TOKEN_DYNAMIC,
            migration="none",
            description="ZeroQuant: group-wise W (128), per-token dynamic A",
        ),
        Scheme(
            "llm.int8",
            PER_CHANNEL,
            TOKEN_DYNAMIC,
            outlier_threshold=6.0,
            migration="none",
            description="LLM.int8(): per-channel W, per-token A, columns with |x| > 6 kept in float",
        ),
        Scheme(
            "outlier-suppression",
            PER_TENSOR,
            ActQuant("tensor", dynamic=False, clip_quantile=0.99),
            migration="gamma",
            description="Outlier Suppression: gamma migration + static A clipped at the 99% token-absmax quantile",
        ),
    )
}


def get_scheme(scheme: str | Scheme, *, quantize_bmm_inputs: bool = False) -> Scheme:
    """A preset by (case-insensitive) name, or a Scheme passed through."""
    if isinstance(scheme, str):
        key = scheme.strip().lower().replace("_", "-")
        key = {"llm-int8": "llm.int8", "os": "outlier-suppression"}.get(key, key)
        if key not in PRESETS:
            raise SchemeError(
                f"unknown scheme {scheme!r}; presets: {', '.join(s.name for s in PRESETS.values())}"
            )
        scheme = PRESETS[key]
    if not isinstance(scheme, Scheme):
        raise SchemeError(f"scheme must be a preset name or a Scheme, not {type(scheme).__name__}")
    if quantize_bmm_inputs and scheme.outputs is None:
        scheme = scheme.with_bmm_quant()
    return scheme
