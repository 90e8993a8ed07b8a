"""The flags that set a :class:`~smoothquant.recipe.Recipe`, one name per setting for every command.

``quantize`` and ``eval`` add them here, so a setting is spelled once (``--calib``,
``--num-samples``, ``--rounding``...), its ``choices`` are the library's constants, and its text
is parsed by one function. Defaults are None ("not given"): a command fills them from the Recipe
(or from ``--recipe``), so the defaults live in one place too. Nothing here imports torch.
"""

from __future__ import annotations

import argparse

from smoothquant.recipe import DTYPES, RANGES, ROUNDINGS


def add_recipe_args(p: argparse.ArgumentParser, *, seq_len: bool = True) -> None:
    """``seq_len``: also ``--seq-len`` for the calibration length (``eval`` uses ``--seq-len`` for
    its evaluation windows and keeps ``--calib-seq-len``)."""
    p.add_argument(
        "--alpha",
        default=None,
        help="migration strength in [0, 1] (default 0.5), 'auto' to search it per smoothing group on the "
        "calibration data, or per group pattern: '*.mlp_out=0.85,*=0.5' (none: not smoothed)",
    )
    p.add_argument(
        "--rounding",
        default=None,
        choices=ROUNDINGS,
        help="weight rounding: to nearest (default), or gptq: each linear's output error on the calibration "
        "data minimised (one more calibration pass; same format)",
    )
    p.add_argument(
        "--ranges",
        default=None,
        choices=RANGES,
        help="quantization ranges: the calibrated absmax (default), or search: per linear, static input ranges "
        "and (with --rounding gptq) weight scales clipped where that lowers the calibration error",
    )
    p.add_argument(
        "--check-alphas",
        nargs="?",
        const="0.4,0.5,0.6,0.7,0.8",
        default=None,
        metavar="ALPHAS",
        help="with --alpha auto: also quantize with each of these single alphas (default 0.4,...,0.8) and keep "
        "a single alpha instead of the searched ones where it lowers the calibration perplexity by over "
        "0.25%% (one full quantization per candidate)",
    )
    p.add_argument(
        "--calib",
        default=None,
        help="calibration text: wiki-gensim (default), wikitext2, austen, a .txt/.jsonl file or a WikiText-style "
        "folder; only its calibration split is used",
    )
    p.add_argument("--num-samples", type=int, default=None, help="calibration sequences (default 64)")
    if seq_len:
        p.add_argument(
            "--seq-len", type=int, default=None, help="tokens per calibration sequence (default 512)"
        )
    p.add_argument(
        "--dtype", default=None, choices=DTYPES, help="dtype to load and calibrate in (default float32)"
    )


def parse_alpha(text: str) -> float | str | dict[str, float | None]:
    """``0.5``, ``auto``, or group patterns ``'*.mlp_out=0.85,*=0.5'`` (``none`` skips a group)."""
    from smoothquant.errors import ArgumentError

    text = text.strip()
    if "=" not in text:
        try:
            return float(text)
        except ValueError:
            return text  # a named strategy such as "auto"; smooth() validates it
    mapping: dict[str, float | None] = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        try:
            mapping[key.strip()] = None if value.strip().lower() == "none" else float(value)
        except ValueError as e:
            raise ArgumentError(f"alpha {item!r}: expected PATTERN=NUMBER or PATTERN=none") from e
    return mapping


def checked_alpha(text: str) -> float | str | dict[str, float | None]:
    """``--alpha``, with one-line errors that name the flag (the Recipe checks mappings' values)."""
    from smoothquant.errors import ArgumentError

    alpha = parse_alpha(text)
    if isinstance(alpha, str) and alpha.lower() != "auto":
        raise ArgumentError(f"--alpha must be a number in [0, 1] or 'auto', got {text!r}")
    if isinstance(alpha, float) and not 0.0 <= alpha <= 1.0:
        raise ArgumentError(f"--alpha must be in [0, 1], got {alpha}")
    return "auto" if isinstance(alpha, str) else alpha


def parse_check_alphas(text: str | None, alpha: object) -> tuple[float, ...]:
    """``--check-alphas``: () when absent; refused unless alpha is ``auto``."""
    from smoothquant.errors import ArgumentError
    from smoothquant.search.check import check_grid

    if text is None:
        return ()
    if alpha != "auto":
        raise ArgumentError("--check-alphas checks the result of --alpha auto; add --alpha auto or drop it")
    try:
        values = [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise ArgumentError(f"--check-alphas must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise ArgumentError("--check-alphas needs at least one alpha (or none after it: 0.4,...,0.8)")
    return check_grid(values)  # the library's own range check
