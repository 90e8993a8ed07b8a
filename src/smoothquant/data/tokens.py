"""Text -> fixed-length token windows, for calibration and for evaluation.

Both follow the reference protocol: the split is joined into one string, tokenized once, and cut
into non-overlapping windows. When the tokenizer puts a beginning-of-sequence token in front of
text (Gemma, Llama), every window starts with it and holds ``seq_len - 1`` text tokens: models
trained that way see BOS at position 0 in real use (without it Gemma's perplexity explodes), and
its large activations belong in the calibration statistics. Tokenizers without BOS (SmolLM2,
Qwen) get plain text windows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from smoothquant.data.sources import load_text
from smoothquant.errors import DatasetError

# characters of text tokenized per needed token on a first try (English is ~4 chars a token)
_CHARS_PER_TOKEN = 8


def bos_prefix(tokenizer: Any) -> list[int]:
    """The special tokens ``tokenizer`` puts before text (e.g. ``[bos]``), possibly none."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    for k in range(len(with_special) - len(plain) + 1):
        if with_special[k : k + len(plain)] == plain:
            return list(with_special[:k])
    return []


def token_stream(tokenizer: Any, text: str, need: int | None = None) -> torch.Tensor:
    """Token ids of ``text`` (no special tokens), at least ``need`` of them if the text has them.

    With ``need``, only a prefix of the text long enough for it is tokenized; the last token of a
    prefix may be cut mid-word, so one more token than needed is asked for and dropped."""
    start = len(text) if need is None else min(len(text), (need + 1) * _CHARS_PER_TOKEN)
    while True:
        ids = tokenizer(text[:start], add_special_tokens=False, verbose=False)["input_ids"]
        if start >= len(text):
            return torch.tensor(ids, dtype=torch.long)
        if need is not None and len(ids) > need + 1:
            return torch.tensor(ids[:need], dtype=torch.long)
        start *= 2


def _windows(stream: torch.Tensor, prefix: list[int], seq_len: int, count: int) -> torch.Tensor:
    body = seq_len - len(prefix)
    rows = stream[: count * body].view(count, body)
    if prefix:
        rows = torch.cat([torch.tensor(prefix, dtype=torch.long).expand(count, -1), rows], dim=1)
    return rows.contiguous()


def _check_len(seq_len: int, prefix: list[int]) -> int:
    if seq_len <= len(prefix) + 1:
        raise DatasetError(f"seq_len must be at least {len(prefix) + 2}, got {seq_len}")
    return seq_len - len(prefix)


def calibration_batches(
    tokenizer: Any,
    dataset: str = "wiki-gensim",
    num_samples: int = 64,
    seq_len: int = 512,
    *,
    data_dir: str | Path | None = None,
) -> torch.LongTensor:
    """``[num_samples, seq_len]`` token ids from the calibration split of ``dataset``.

    The windows are spread evenly over the whole split (not its first pages), so the statistics
    see every kind of text the split holds. Calibration text never overlaps evaluation text."""
    if num_samples < 1:
        raise DatasetError(f"num_samples must be >= 1, got {num_samples}")
    prefix = bos_prefix(tokenizer)
    body = _check_len(seq_len, prefix)
    stream = token_stream(tokenizer, load_text(dataset, "calibration", data_dir=data_dir))
    available = stream.numel() // body
    if available == 0:  # the window itself is too long: fewer samples would not help
        raise DatasetError(
            f"the calibration split of {dataset} holds {stream.numel()} tokens, less than one window of "
            f"{seq_len}: use --seq-len {stream.numel() + len(prefix)} or less (512 is the usual), or a "
            "larger dataset (austen, wikitext2)"
        )
    if available < num_samples:
        raise DatasetError(
            f"the calibration split of {dataset} holds {stream.numel()} tokens: {available} windows of "
            f"{seq_len}, fewer than the {num_samples} asked for; use --num-samples {available}, --seq-len "
            f"{stream.numel() // num_samples + len(prefix)}, or a larger dataset (austen, wikitext2)"
        )
    all_windows = _windows(stream, prefix, seq_len, available)
    pick = torch.arange(num_samples) * available // num_samples
    return all_windows[pick]


def eval_windows(
    tokenizer: Any,
    dataset: str = "wiki-gensim",
    seq_len: int = 2048,
    max_tokens: int | None = None,
    *,
    data_dir: str | Path | None = None,
) -> torch.LongTensor:
    """``[N, seq_len]`` non-overlapping windows from the start of the evaluation split.

    ``max_tokens`` caps ``N * seq_len`` (rounded down to whole windows, at least one); the final
    partial window is dropped, as in the reference protocol."""
    prefix = bos_prefix(tokenizer)
    body = _check_len(seq_len, prefix)
    if max_tokens is not None and max_tokens < seq_len:
        raise DatasetError(f"max_tokens ({max_tokens}) is smaller than one window of {seq_len} tokens")
    count_cap = None if max_tokens is None else max_tokens // seq_len
    text = load_text(dataset, "evaluation", data_dir=data_dir)
    stream = token_stream(tokenizer, text, None if count_cap is None else count_cap * body)
    count = stream.numel() // body if count_cap is None else min(count_cap, stream.numel() // body)
    if count < 1:
        raise DatasetError(
            f"the evaluation split of {dataset} holds {stream.numel()} tokens, less than one window of {seq_len}"
        )
    return _windows(stream, prefix, seq_len, count)
