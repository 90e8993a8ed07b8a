"""``Recipe``: every setting of one quantization, validated once, as one object.

The command line builds it from flags, the library (``quantize_model``, ``quantize_and_save``,
``quantize_checkpoint``) and the evaluation rows take it, and each checkpoint stores it in
``smoothquant_recipe.json`` (key ``"recipe"``), so ``smoothquant quantize MODEL -o OUT --recipe
FILE`` rebuilds the same checkpoint. Why one object: the same settings used to travel one keyword
at a time through four layers, and the rules on which combinations are allowed had drifted apart
in five places; here they are checked in ``__post_init__``, before any model work, with the
errors the library always gave.

This module imports nothing heavy at import time (the command line reads its constants for
``--help``); the checks that need the scheme registry import it when a recipe is built.
:class:`QuantizationResult` (what a driver did, as opposed to what was asked) lives here too, so the
checkpoint writer and both drivers share it without importing each other.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smoothquant.errors import ArgumentError

if TYPE_CHECKING:
    from torch import nn

    from smoothquant.calibration import ActStats
    from smoothquant.quantization import Scheme
    from smoothquant.search import AlphaSearch
    from smoothquant.search.check import ModelCheck

# the values each setting takes (the command line's ``choices``)
EXPORTABLE_SCHEMES = ("w8a8", "O1", "O2", "O3")  # what compressed-tensors can express
ROUNDINGS = ("nearest", "gptq")  # = smoothquant.quantization.gptq.ROUNDINGS
RANGES = ("absmax", "search")
DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_CALIB = "wiki-gensim"  # calibration_batches' default corpus
DEFAULT_NUM_SAMPLES = 64  # calibration sequences the command line and quantize_and_save build
DEFAULT_SEQ_LEN = 512
RECIPE_KEY = "recipe"  # where smoothquant_recipe.json keeps the Recipe
# search_alpha's options a recipe's ``search_options`` may set (the search's own keywords)
SEARCH_KEYS = (
    "per_block",
    "grid",
    "exhaustive",
    "reference",
    "num_samples",
    "trial_tokens",
    "error",
    "uniform_fallback",
    "search_weight_scales",
    "seq_len",
    "batch_size",
)


@dataclass(frozen=True)
class Recipe:
    """What to do to a floating-point model; the data it is done on is passed beside it.

    ``scheme``: a scheme name or :class:`~smoothquant.quantization.Scheme`. ``alpha``: a number in
    [0, 1], group pattern -> alpha (None: that group is not smoothed), or ``"auto"`` (searched per
    group on the calibration data with ``search_options``, see :func:`~smoothquant.search_alpha`).
    ``linear_pairs`` (None: True with ``"auto"``, else False, as in the paper): also smooth
    ``v_proj -> o_proj``, ``up_proj -> down_proj``... ``weight_rounding``: ``"nearest"`` or
    ``"gptq"`` (each linear's output error on the calibration data minimised; one more pass).
    ``ranges``: ``"absmax"`` (the paper's) or ``"search"`` (static input ranges and, with GPTQ,
    weight scales clipped per linear where that lowers the calibration error). ``check_alphas``
    (with ``"auto"``; True: 0.4..0.8): single alphas the searched ones are checked against, one
    full quantization each. ``calibration``: the name of the calibration text where the recipe
    builds its own data (``quantize_and_save``, the command line; None: the data passed beside
    it); ``num_samples`` (None: all of it) sequences of ``seq_len`` tokens in batches of
    ``batch_size``. ``quantize_lm_head``, ``quantize_bmm_inputs``: also quantize the output head,
    and the q/k/v outputs. ``dtype``: what a loader loads the model in (None: float32 for a
    model name, the checkpoint's own dtype layer by layer).
    """

    scheme: str | Scheme = "w8a8"
    alpha: float | str | Mapping[str, float | None] = 0.5
    linear_pairs: bool | None = None
    search_options: Mapping[str, Any] = field(default_factory=dict)
    weight_rounding: str = "nearest"
    ranges: str = "absmax"
    check_alphas: tuple[float, ...] | bool = ()
    calibration: str | None = None
    num_samples: int | None = None
    seq_len: int | None = DEFAULT_SEQ_LEN
    batch_size: int = 1
    quantize_lm_head: bool = False
    quantize_bmm_inputs: bool = False
    dtype: str | None = None

    def __post_init__(self) -> None:
        from smoothquant.quantization import get_scheme
        from smoothquant.quantization.gptq import check_rounding
        from smoothquant.search.check import check_grid

        scheme = get_scheme(self.scheme)  # unknown names fail here
        if isinstance(self.scheme, str):
            self._set("scheme", scheme.name)
        self._set("alpha", _checked_alpha(self.alpha))
        if self.linear_pairs is None:
            self._set("linear_pairs", self.auto)
        self._set("search_options", _checked_search(scheme, self.search_options, self.auto))
        check_rounding(self.weight_rounding, scheme.outlier_threshold)
        if self.ranges not in RANGES:
            raise ArgumentError(f"ranges must be one of {', '.join(RANGES)}, not {self.ranges!r}")
        if self.ranges == "search" and scheme.needs_token_histograms:
            raise ArgumentError(
                f"scheme {scheme.name} already clips its static ranges at a token quantile; "
                "use ranges='absmax' with it"
            )
        grid = check_grid(self.check_alphas)
        if grid and not self.auto:
            raise ArgumentError("check_alphas checks the result of alpha='auto'; with a given alpha, drop it")
        self._set("check_alphas", grid)
        for name in ("num_samples", "seq_len", "batch_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ArgumentError(f"{name} must be a whole number of at least 1, got {value!r}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ArgumentError(f"dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # normalising in __post_init__ of a frozen dataclass

    @property
    def auto(self) -> bool:
        return self.alpha == "auto"

    def resolved_scheme(self) -> Scheme:
        """The scheme with this recipe's BMM option applied."""
        from smoothquant.quantization import get_scheme

        return get_scheme(self.scheme, quantize_bmm_inputs=self.quantize_bmm_inputs)

    def replace(self, **changes: Any) -> Recipe:
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    def calibration_settings(self) -> dict[str, Any]:
        """The keywords of the calibration passes (``calibrate``, ``collect_hessians``...)."""
        return {"seq_len": self.seq_len, "batch_size": self.batch_size, "num_samples": self.num_samples}

    def search_settings(self) -> dict[str, Any]:
        """:func:`~smoothquant.search_alpha`'s keywords: the recipe's sequences, then its options."""
        return {"seq_len": self.seq_len, "batch_size": self.batch_size, **self.search_options}

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable; :meth:`from_dict` gives an equal recipe back."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        scheme = self.scheme
        out["scheme"] = scheme if isinstance(scheme, str) else scheme.name
        out["alpha"] = dict(self.alpha) if isinstance(self.alpha, Mapping) else self.alpha
        out["check_alphas"] = list(self.check_alphas)
        out["search_options"] = json.loads(json.dumps(self.search_options))  # tuples -> lists
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ArgumentError(f"a recipe is JSON; this is not: {e}") from e
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        """A recipe from :meth:`to_dict`'s output or from a whole ``smoothquant_recipe.json``
        (its ``"recipe"`` entry)."""
        if not isinstance(data, Mapping):
            raise ArgumentError(f"a recipe is a JSON object, got {type(data).__name__}")
        if isinstance(data.get(RECIPE_KEY), Mapping):
            data = data[RECIPE_KEY]
        elif "smoothquant_version" in data:
            raise ArgumentError(
                "this smoothquant_recipe.json was written before recipes were stored (no 'recipe' entry); "
                "pass the settings as flags"
            )
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ArgumentError(
                f"unknown recipe setting(s) {', '.join(unknown)}; a recipe has {', '.join(names)}"
            )
        values = dict(data)
        if isinstance(values.get("check_alphas"), list):
            values["check_alphas"] = tuple(values["check_alphas"])
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | Path) -> Recipe:
        """A recipe from a JSON file, or from the ``smoothquant_recipe.json`` of a checkpoint folder."""
        path = Path(path).expanduser()
        if path.is_dir():
            path = path / "smoothquant_recipe.json"
        try:
            text = path.read_text()
        except OSError as e:
            raise ArgumentError(f"cannot read the recipe {path}: {e.strerror or e}") from e
        try:
            return cls.from_json(text)
        except ArgumentError as e:
            raise ArgumentError(f"{path}: {e}") from None


def _checked_search(scheme: Scheme, options: Mapping[str, Any] | None, auto: bool) -> dict[str, Any]:
    """The search's options, checked before any work (the grid sorted, as the search sorts it)."""
    options = dict(options or {})
    if isinstance(options.get("grid"), list):
        options["grid"] = tuple(options["grid"])  # as JSON gives it back: equal recipes compare equal
    unknown = sorted(set(options) - set(SEARCH_KEYS))
    if unknown:
        raise ArgumentError(
            f"unknown search option(s) {', '.join(unknown)}; the alpha search takes {', '.join(SEARCH_KEYS)}"
        )
    if auto and scheme.migration == "smoothquant":
        import inspect

        from smoothquant.search.alpha import check_options, search_alpha

        params = inspect.signature(search_alpha).parameters
        full = {k: options.get(k, params[k].default) for k in SEARCH_KEYS}
        check_options(
            scheme, full["grid"], full["reference"], full["num_samples"], full["trial_tokens"], full["error"]
        )
        return options
    return {}  # no search runs: its options say nothing about the result


def _checked_alpha(alpha: Any) -> float | str | dict[str, float | None]:
    """``"auto"``, a number or a mapping of group patterns, with smoothing's own range check."""
    from smoothquant.smoothing.smooth import _check_alpha

    if isinstance(alpha, str) and alpha.strip().lower() == "auto":
        return "auto"
    if isinstance(alpha, Mapping):
        return {str(k): _check_alpha(v, str(k)) for k, v in alpha.items()}
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        return _check_alpha(alpha, "all groups")
    raise ArgumentError(f"alpha must be a number, a mapping of group ids, or 'auto'; got {alpha!r}")


def check_data(recipe: Recipe, scheme: Scheme, calibration: object, stats: object = None) -> None:
    """What a recipe needs of the calibration data, checked before any work (both drivers)."""
    from smoothquant.errors import CalibrationError

    if recipe.ranges == "search" and calibration is None:
        raise CalibrationError("ranges='search' measures the calibration data: pass it")
    if recipe.weight_rounding == "gptq" and calibration is None:
        raise CalibrationError(
            "weight_rounding='gptq' measures the calibration inputs: pass calibration data"
        )
    if stats is None and scheme.needs_calibration and calibration is None:
        raise CalibrationError(f"scheme {scheme.name} needs calibration data (or precomputed stats)")
    if recipe.auto and scheme.migration == "smoothquant" and calibration is None:
        raise CalibrationError(
            "alpha='auto' searches on calibration data: pass it (stats alone are not enough)"
        )


def as_recipe(recipe: Recipe | str | Scheme | None, settings: Mapping[str, Any]) -> Recipe:
    """The public functions' convenience: a Recipe as is (``settings`` override its fields), or a
    scheme (name) plus keyword settings."""
    if isinstance(recipe, Recipe):
        return recipe.replace(**settings) if settings else recipe
    return Recipe(**({} if recipe is None else {"scheme": recipe}), **settings)


@dataclass
class QuantizationResult:
    """What a driver did: the quantized ``model``, the alphas applied per group, the statistics,
    the searches' records and the time per stage; ``settings`` is the recipe it followed."""

    model: nn.Module
    scheme: Scheme
    stats: ActStats | None
    smoothed_stats: ActStats | None
    alpha: dict[str, float | None] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    linear_pairs: bool = False
    search: AlphaSearch | None = None
    weight_rounding: str = "nearest"
    ranges: str = "absmax"
    input_clip: dict[str, float] = field(default_factory=dict)
    check: ModelCheck | None = None
    settings: Recipe | None = None

    def recipe(self) -> dict[str, Any]:
        """What was applied, JSON-serialisable (scheme, alpha per group, calibration size), and
        under ``"recipe"`` the :class:`Recipe` followed (:meth:`Recipe.from_dict` reads it back).

        ``alpha`` and ``linear_pairs`` replay the smoothing:
        ``quantize_model(..., alpha=alphas_from_recipe(r), linear_pairs=r["linear_pairs"])``;
        ``alpha_search`` says how automatic alphas were chosen (None for given alphas).
        """
        s = self.scheme
        return {
            "scheme": s.name,
            "weights": vars(s.weights),
            "inputs": vars(s.inputs),
            "outputs": vars(s.outputs) if s.outputs else None,
            "outlier_threshold": s.outlier_threshold,
            "migration": s.migration,
            "alpha": self.alpha,
            "linear_pairs": self.linear_pairs,
            "alpha_search": self.search.to_recipe() if self.search else None,
            "model_check": self.check.to_recipe() if self.check else None,
            "weight_rounding": self.weight_rounding,
            "ranges": self.ranges,
            "input_clip": self.input_clip,
            "calibration": {k: self.stats.meta.get(k) for k in ("num_tokens", "num_sequences")}
            if self.stats
            else None,
            **({RECIPE_KEY: self.settings.to_dict()} if self.settings is not None else {}),
        }
