"""``quantize_checkpoint``: calibrate, smooth and quantize a checkpoint one decoder block at a time.

Memory holds one block's weights and the calibration activations between blocks, whatever the
depth of the model:

1. a skeleton of the model is built with every parameter on the meta device; only what runs before
   the first block (embeddings...) is read from the checkpoint. One forward pass per calibration
   batch, with every block replaced by a stand-in (:func:`capture_block_calls` with
   ``skip_blocks``), records what each block is called with (rotary embeddings, per-layer masks)
   and the hidden states entering the first block;
2. per block: its weights are read from the shards; it runs on the cached hidden states with the
   observers of :func:`calibrate` (statistics of this block) and its outputs become the next
   block's inputs; its groups are smoothed (``smooth_groups``, or the alphas the block step of
   :func:`search_alpha` chooses with ``alpha="auto"``); with GPTQ or searched ranges the smoothed
   block runs once more on a second stream, the outputs of the smoothed blocks before it (what
   the in-memory passes over the smoothed model see), for its Hessians and clip errors; its
   linears are quantized (``quantized_replacements``), its tensors written as one shard of the compressed-tensors
   checkpoint (``checkpoint_tensors``), and its memory released.

It follows the same :class:`~smoothquant.recipe.Recipe` as ``quantize_model``, refusing in one
line what needs the whole model (``check_alphas``, lm_head/BMM quantization, token-quantile
schemes). Every step is the in-memory pipeline's own code applied to one block, and each block computes on
the same inputs with the same batches as inside the full model's forward, so the checkpoint holds
the same tensors, bit for bit, as ``quantize_model`` + ``save_quantized`` (only the sharding
differs). The output appears atomically when complete; an interrupted run resumes
(:mod:`.resume`).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import inspect
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import save_file
from torch import nn

from smoothquant.calibration import ActStats
from smoothquant.calibration.batches import Batches, make_batches, sequences
from smoothquant.calibration.calibrate import calibration_rows, collect, hooked, observing, vocab_size
from smoothquant.calibration.hessians import hessian_hooks, hessians_of
from smoothquant.errors import ArgumentError, CheckpointError, DiskSpaceError
from smoothquant.export import compressed_tensors as ct
from smoothquant.export.atomic import check_free_space, check_output, publish
from smoothquant.export.load import config_dtype
from smoothquant.export.save import (
    check_layout,
    checkpoint_config,
    checkpoint_tensors,
    float_linears,
    recipe_record,
    vllm_caveats,
    write_metadata,
)
from smoothquant.export.summary import QuantizeSummary, peak_rss
from smoothquant.families import resolve
from smoothquant.layerwise import activations
from smoothquant.layerwise.checkpoint import Checkpoint, empty_model, move_buffers, release
from smoothquant.layerwise.resume import Manifest
from smoothquant.nn_utils import compute_dtype, set_submodule
from smoothquant.quantization import Scheme
from smoothquant.quantization.apply import (
    check_static_coverage,
    quantization_targets,
    quantized_replacements,
)
from smoothquant.quantization.clip import CLIP_GRID, _ClipError
from smoothquant.recipe import SEARCH_KEYS, QuantizationResult, Recipe, as_recipe, check_data
from smoothquant.search.alpha import (
    AlphaSearch,
    BlockSearch,
    search_alpha,
)
from smoothquant.search.blocks import BlockCall, capture_block_calls
from smoothquant.smoothing.smooth import Alpha, check_stats, resolve_alphas, smooth_groups, smoothing_groups
from smoothquant.version import __version__

log = logging.getLogger("smoothquant")

INDEX_FILE = "model.safetensors.index.json"
# any of these in the source folder means it has a tokenizer to copy (transformers would otherwise
# build an empty default one)
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model")


LayerwiseSummary = QuantizeSummary  # the name it had before both drivers shared one summary


def _rows_digest(rows: list[torch.Tensor], batch_size: int) -> str:
    h = hashlib.sha256(f"batch_size={batch_size}".encode())
    for row in rows:
        h.update(str(row.numel()).encode())
        h.update(row.long().numpy().tobytes())
    return h.hexdigest()


def _search_options(recipe: Recipe) -> dict[str, Any]:
    """search_alpha's defaults, overridden by the recipe's (as quantize_model passes them)."""
    params = inspect.signature(search_alpha).parameters
    return {k: params[k].default for k in SEARCH_KEYS} | recipe.search_settings()


def _stream_file(directory: Path, index: int, stream: str) -> Path:
    """Where block ``index``'s inputs of one stream (calib, search, smoothed) are offloaded."""
    return directory / f"activations-{index:05d}-{stream}.bin"


def _shard_name(index: int, count: int) -> str:
    return f"model-{index:05d}-of-{count:05d}.safetensors"


def _estimate_bytes(model: nn.Module, targets: Mapping[str, nn.Module]) -> int:
    """The checkpoint's size: int8 weights (and one fp32 scale per row) for targets, the rest as is."""
    total, seen = 0, set()
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:
            continue
        seen.add(id(t))
        module, _, leaf = name.rpartition(".")
        if module in targets and leaf == "weight":
            total += t.numel() + 4 * t.shape[0]
        else:
            total += t.numel() * t.element_size()
    return total


def _shard(directory: Path, file: str, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Write one shard (temporary name, flushed, renamed into place); its manifest record."""
    path = directory / file
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return {
        "file": file,
        "tensors": list(tensors),
        "bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
    }


def _run_block(
    block: nn.Module,
    hidden: list[torch.Tensor],
    calls: list[BlockCall],
    device: torch.device,
    writer: activations.Writer | None,
    keep: bool,
) -> list[torch.Tensor]:
    """The block's outputs on every batch: appended to ``writer`` and, with ``keep``, returned."""
    outputs = []
    for h, call in zip(hidden, calls, strict=True):
        y = call(block, h.to(device))
        if writer is not None:
            writer.append(y)
        if keep:
            outputs.append(y)
    return outputs


def _check_layerwise(recipe: Recipe) -> Scheme:
    """What the layer-by-layer driver cannot do, refused in one line each before any work."""
    scheme = recipe.resolved_scheme()
    ct.check_exportable(scheme)
    if scheme.needs_token_histograms:
        raise ArgumentError(
            f"scheme {scheme.name} clips at token quantiles measured after smoothing, which needs the "
            "smoothed model's own activations; quantize it in memory with quantize_model instead"
        )
    if recipe.check_alphas:
        raise ArgumentError(
            "check_alphas scores the whole quantized model once per candidate alpha (a full pass over every "
            "shard each, and the model's loss needs all blocks at once); quantize in memory to check alphas"
        )
    if recipe.quantize_lm_head or recipe.quantize_bmm_inputs:
        raise ArgumentError(
            "quantize_lm_head and quantize_bmm_inputs are in-memory options (the checkpoint format written "
            "layer by layer quantizes the decoder blocks' linears only)"
        )
    return scheme


class _Job:
    """One layer-by-layer run: everything is read and checked in ``__init__``, before the partial
    output directory is touched; :meth:`run` then does the work (see the module docstring)."""

    def __init__(
        self,
        src: Path,
        calibration: Batches | None,
        recipe: Recipe,
        dtype: torch.dtype | None,
        device: torch.device,
        offload: bool,
        tokenizer: Any,
        progress: bool,
    ) -> None:
        self.recipe = recipe
        self.scheme = scheme = _check_layerwise(recipe)
        check_data(recipe, scheme, calibration)
        self.weight_rounding = recipe.weight_rounding
        self.linear_pairs = bool(recipe.linear_pairs)
        self.options: dict[str, Any] | None = None
        alpha = recipe.alpha
        if recipe.auto and scheme.migration == "smoothquant":
            self.options = options = _search_options(recipe)
            options["grid"] = tuple(sorted({float(a) for a in options["grid"]}))  # as check_options sorts it
        elif recipe.auto:
            alpha = 0.5  # as quantize_model: gamma migration has no alpha
        self.alpha = alpha
        self.method = {"smoothquant": "smoothquant", "gamma": "gamma"}.get(scheme.migration)
        if not (src / "config.json").is_file():
            raise CheckpointError(f"{src} is not a checkpoint folder (no config.json)")
        self.src, self.device, self.offload, self.progress = src, device, offload, progress
        self.search: AlphaSearch | None = None
        self.smoothed: list[torch.Tensor] = []  # the smoothed model's inputs of the next block
        config = self._read_source(dtype, tokenizer)
        self.groups = smoothing_groups(self.resolved, self.linear_pairs, self.method) if self.method else []
        self.alphas = {}
        if self.method and self.options is None:
            self.alphas = resolve_alphas([g.id for g in self.groups], alpha)
        search_rows = self._calibration_rows(calibration)
        hidden = getattr(config, "hidden_size", 0) or 0
        self.activation_bytes = sum(b.numel() for b in self.batches) * hidden * self.dtype.itemsize
        self.job = {
            "num_layers": len(self.layers),
            "source": self.checkpoint.fingerprint(),
            "dtype": str(self.dtype),
            "device": device.type,
            "scheme": dataclasses.asdict(scheme),
            "recipe": recipe.to_dict(),
            "search": None if self.options is None else {**self.options, "grid": list(self.options["grid"])},
            "calibration": _rows_digest(self.rows, recipe.batch_size),
            "search_calibration": _rows_digest(search_rows, self.options["batch_size"])
            if self.options
            else None,
            "versions": [__version__, torch.__version__, transformers.__version__],
        }

    def _read_source(self, dtype: torch.dtype | None, tokenizer: Any) -> Any:
        """The skeleton model of the source's config and what the output's metadata needs of it;
        returns the config."""
        src = self.src
        config = transformers.AutoConfig.from_pretrained(src)
        self.dtype = dtype = config_dtype(json.loads((src / "config.json").read_text()), dtype)
        self.model_type = getattr(config, "model_type", None)
        self.model = model = empty_model(config, dtype)
        self.resolved = resolve(model)
        self.layers = model.get_submodule(self.resolved.layers_path)
        self.targets = quantization_targets(model, resolved=self.resolved)
        check_layout(model, self.targets)
        for warning in vllm_caveats(self.scheme, list(self.targets), self.model_type):
            log.warning(warning)
        self.config = checkpoint_config(model, self.scheme, float_linears(model, self.targets))
        self.generation_config = getattr(model, "generation_config", None)
        if (src / "generation_config.json").is_file():
            self.generation_config = transformers.GenerationConfig.from_pretrained(src)
        if tokenizer is None and any((src / f).is_file() for f in TOKENIZER_FILES):
            tokenizer = transformers.AutoTokenizer.from_pretrained(src)
        self.tokenizer = tokenizer
        self.checkpoint = Checkpoint(src, model)
        return config

    def _calibration_rows(self, calibration: Batches | None) -> list[torch.Tensor]:
        """The calibration batches (and the search's); returns the search's rows."""
        recipe = self.recipe
        self.rows: list[torch.Tensor] = []
        search_rows: list[torch.Tensor] = []
        if self.scheme.needs_calibration:
            self.rows = calibration_rows(
                calibration, recipe.seq_len, recipe.num_samples, vocab_size(self.model)
            )
            if self.options:
                search_rows = sequences(calibration, self.options["seq_len"])[: self.options["num_samples"]]
        self.batches = make_batches(self.rows, recipe.batch_size) if self.rows else []
        self.search_batches = make_batches(search_rows, self.options["batch_size"]) if search_rows else []
        return search_rows

    def estimate_bytes(self) -> int:
        """Disk the output and the activation files need."""
        return _estimate_bytes(self.model, self.targets) + 3 * self.activation_bytes

    # ---- the work ----------------------------------------------------------------------------
    def run(self, manifest: Manifest) -> tuple[int, dict[int, float], AlphaSearch | None]:
        """Write every shard into the manifest's directory; returns (blocks reused, seconds per
        block computed, the alpha search)."""
        directory, layers, resolved, model = manifest.directory, self.layers, self.resolved, self.model
        self.directory = directory
        parts = self._parts()
        count = len(parts) + len(layers)

        def write_part(index: int, part: str) -> None:
            if part not in manifest.outside:
                state = [(k, v) for k, v in model.state_dict().items() if parts[part](k)]
                tensors = checkpoint_tensors(state, {}, self.model_type)
                manifest.finish_outside(part, _shard(directory, _shard_name(index + 1, count), tensors))

        move_buffers(model, self.device)
        self.checkpoint.load(model, parts["embeddings"], self.device)
        write_part(0, "embeddings")
        done = len(manifest.layers)
        reused = tuple(resolved.blocks[r["index"]] + "." for r in manifest.layers)
        self.checkpoint.skip(lambda n: n.startswith(reused))
        hidden, calls, search_hidden, search_calls = self._inputs(manifest, done)
        release(model, parts["embeddings"])
        if "head" in parts:  # one at a time: for large vocabularies each is as big as a block
            self.checkpoint.load(model, parts["head"], self.device)
            write_part(1, "head")
            release(model, parts["head"])
        first = len(parts) + 1
        search = self._block_search(manifest)
        search_seconds = sum(r.get("search_seconds", 0.0) for r in manifest.layers)
        layer_seconds: dict[int, float] = {}
        tokens = sum(b.numel() for b in self.batches)
        self._say(
            f"{len(layers)} layers to quantize ({done} done before), calibrating on {tokens} tokens; ",
            "so far",
        )
        for i in range(done, len(layers)):
            t0 = time.perf_counter()
            hidden, search_hidden, record = self._block(
                i, first + i, count, manifest, hidden, calls[i], search, search_hidden, search_calls[i]
            )
            calls[i], search_calls[i] = [], []
            search_seconds += record.get("search_seconds", 0.0)
            layer_seconds[i] = time.perf_counter() - t0
            eta = sum(layer_seconds.values()) / len(layer_seconds) * (len(layers) - 1 - i) / 60
            self._say(f"layer {i + 1}/{len(layers)}: {layer_seconds[i]:.1f} s, ETA {eta:.1f} min, ")
        result = None
        if search is not None:
            tokens = sum(b.numel() for b in self.search_batches)
            result = search.result(self.scheme.name, tokens, search_seconds)
        return done, layer_seconds, result

    def _say(self, text: str, when: str = "") -> None:
        if self.progress:
            print(
                f"{text}peak RSS{' ' + when if when else ''} {peak_rss() / 2**30:.2f} GiB",
                file=sys.stderr,
                flush=True,
            )

    def _inputs(
        self, manifest: Manifest, done: int
    ) -> tuple[list[torch.Tensor], list[list[BlockCall]], list[torch.Tensor], list[list[BlockCall]]]:
        """What every block is called with (one forward pass with the blocks skipped), and the
        first block's inputs to compute: the calibration, search and smoothed streams, read back
        from the partial output when resuming."""
        layers, directory, device = self.layers, manifest.directory, self.device
        hidden: list[torch.Tensor] = []
        search_hidden: list[torch.Tensor] = []
        calls: list[list[BlockCall]] = [[] for _ in layers]
        search_calls: list[list[BlockCall]] = [[] for _ in layers]
        if not self.batches or done == len(layers):
            return hidden, calls, search_hidden, search_calls
        hidden, calls = capture_block_calls(
            self.model, layers, [b.to(device) for b in self.batches], skip_blocks=True
        )
        if self.search_batches:
            ids = [b.to(device) for b in self.search_batches]
            search_hidden, search_calls = capture_block_calls(self.model, layers, ids, skip_blocks=True)
        streams = manifest.activations()
        if streams is not None:  # resuming: the inputs of the first block to compute
            hidden = activations.read(directory, streams["calib"], device, mapped=self.offload)
            if "search" in streams:
                search_hidden = activations.read(directory, streams["search"], device, mapped=False)
        elif self.offload:
            stream = activations.write(_stream_file(directory, 0, "calib"), hidden)
            manifest.record_inputs({"calib": stream})
            hidden = activations.read(directory, stream, device, mapped=True)
        self.smoothed = hidden  # the first block's inputs: nothing smoothed before it
        if streams is not None and "smoothed" in streams:
            self.smoothed = activations.read(directory, streams["smoothed"], device, mapped=self.offload)
        return hidden, calls, search_hidden, search_calls

    def _block_search(self, manifest: Manifest) -> BlockSearch | None:
        """``alpha="auto"``: the search's block step, with the choices of the blocks already done."""
        if self.options is None:
            return None
        options = {
            k: self.options[k] for k in SEARCH_KEYS if k not in ("seq_len", "batch_size", "num_samples")
        }
        search = BlockSearch(
            self.scheme, self.resolved, compute_dtype(self.dtype), linear_pairs=self.linear_pairs, **options
        )
        for record in manifest.layers:
            search.restore(self.resolved.blocks[record["index"]], record["search"])
        return search

    def _parts(self) -> dict[str, Callable[[str], bool]]:
        """The tensors outside the blocks, as the shards that hold them: what runs before the first
        block and the final norm (``embeddings``), and an untied output embedding (``head``)."""
        prefix = self.resolved.layers_path + "."
        head = self.model.get_output_embeddings()
        name = next((n for n, m in self.model.named_modules() if m is head), None)
        tied = head is not None and head.weight is self.model.get_input_embeddings().weight
        if name is None or tied:
            return {"embeddings": lambda n: not n.startswith(prefix)}
        head_prefix = name + "."
        return {
            "embeddings": lambda n: not n.startswith((prefix, head_prefix)),
            "head": lambda n: n.startswith(head_prefix),
        }

    def _block(
        self,
        i: int,
        shard: int,
        count: int,
        manifest: Manifest,
        hidden: list[torch.Tensor],
        calls: list[BlockCall],
        search: BlockSearch | None,
        search_hidden: list[torch.Tensor],
        search_calls: list[BlockCall],
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], dict[str, Any]]:
        """Read, calibrate, smooth, quantize and write block ``i``; returns the next block's inputs
        (and those of the search) and the block's manifest record."""
        directory = manifest.directory
        name = self.resolved.blocks[i]
        prefix = name + "."

        def mine(n: str) -> bool:
            return n.startswith(prefix)

        block = self.layers[i]
        last = i == len(self.layers) - 1
        self.checkpoint.load(self.model, mine, self.device)
        groups = [g for g in self.groups if mine(g.id)]
        streams: dict[str, activations.Stream] = {}
        stats, outputs = self._calibrate(i, block, hidden, calls, groups, streams)
        next_search: list[torch.Tensor] = []
        record: dict[str, Any] = {"index": i}
        alphas = {g.id: self.alphas.get(g.id) for g in groups}
        if search is not None:
            t = time.perf_counter()
            if not self.scheme.inputs.dynamic:
                check_static_coverage([n for n in self.targets if mine(n)], stats)
            next_search, record["search"] = search.step(name, block, stats, search_hidden, search_calls)
            alphas = record["search"]["alpha"]
            if not last:
                streams["search"] = activations.write(_stream_file(directory, i + 1, "search"), next_search)
            record["search_seconds"] = time.perf_counter() - t
        record["alpha"] = {}
        if self.method and groups:
            stats, record["alpha"] = smooth_groups(
                groups, stats, alphas, compute_dtype(self.dtype), self.method
            )
        targets = {n: m for n, m in self.targets.items() if mine(n)}
        clip, hessians = self._smoothed_pass(i, block, targets, stats, calls, streams)
        record["input_clip"] = clip
        searched = self.recipe.ranges == "search" and hessians is not None
        options = {"hessians": hessians, "search_weight_scales": searched, "input_clip": clip}
        replacements = quantized_replacements(targets, self.scheme, stats, set(), **options)
        for n, m in replacements.items():
            set_submodule(self.model, n, m)
            self.targets[n].to("meta")  # the float linear it replaces (still referenced here)
        tensors = checkpoint_tensors(block.state_dict(prefix=prefix).items(), replacements, self.model_type)
        record |= _shard(directory, _shard_name(shard, count), tensors)
        manifest.finish_layer(record, None if last else streams)
        release(self.model, mine)
        if self.offload and not last and self.batches:
            outputs = activations.read(directory, streams["calib"], self.device, mapped=True)
        return outputs, next_search, record

    def _calibrate(
        self,
        i: int,
        block: nn.Module,
        hidden: list[torch.Tensor],
        calls: list[BlockCall],
        groups: list,
        streams: dict[str, activations.Stream],
    ) -> tuple[ActStats, list[torch.Tensor]]:
        """The block's statistics on its cached inputs (:func:`calibrate`'s observers) and its
        outputs, the next block's inputs (also written to the partial output, for a resume)."""
        if not self.batches:
            return ActStats(), []
        name, last = self.resolved.blocks[i], i == len(self.layers) - 1
        writer = None if last else activations.Writer(_stream_file(self.directory, i + 1, "calib"))
        with observing(block, set(), prefix=name) as observers:
            outputs = _run_block(block, hidden, calls, self.device, writer, keep=not self.offload)
        stats = collect(observers, {"model_type": self.model_type})
        if writer is not None:
            streams["calib"] = writer.close()
        if groups:
            check_stats(self.resolved, groups, stats, self.model)
        return stats, outputs

    def _smoothed_pass(
        self,
        i: int,
        block: nn.Module,
        targets: dict[str, nn.Module],
        stats: ActStats,
        calls: list[BlockCall],
        streams: dict[str, activations.Stream],
    ) -> tuple[dict[str, float], dict[str, torch.Tensor] | None]:
        """The passes over the smoothed floating-point model: searched input ranges (static schemes)
        and GPTQ's Hessians. In memory they run the whole smoothed model, so each block sees the
        outputs of the *smoothed* blocks before it (equal to the unsmoothed ones up to rounding,
        which GPTQ and the range search can tell apart): that stream is kept beside the
        calibration stream and advanced here."""
        clip_wanted = self.recipe.ranges == "search" and not self.scheme.inputs.dynamic
        gptq = self.weight_rounding == "gptq"
        if not self.batches or not (clip_wanted or gptq):
            return {}, None
        name, last = self.resolved.blocks[i], i == len(self.layers) - 1
        clip = (
            {n: _ClipError(float(stats.inputs[n].max()), CLIP_GRID) for n in targets} if clip_wanted else {}
        )
        writer = None if last else activations.Writer(_stream_file(self.directory, i + 1, "smoothed"))
        with (
            hooked(block, clip, prefix=name),
            hessian_hooks(block, targets if gptq else [], prefix=name) as obs,
        ):
            outputs = _run_block(block, self.smoothed, calls, self.device, writer, keep=not self.offload)
        if writer is not None:
            streams["smoothed"] = writer.close()
            if self.offload:
                outputs = activations.read(self.directory, streams["smoothed"], self.device, mapped=True)
        self.smoothed = outputs
        factors = {n: CLIP_GRID[int(o.errors.argmin())] for n, o in clip.items()}
        return factors, hessians_of(obs) if gptq else None

    def summary(
        self,
        target: Path,
        reused: int,
        layer_seconds: dict[int, float],
        seconds: dict[str, float],
        applied: dict[str, float | None],
    ) -> QuantizeSummary:
        device = self.device
        return QuantizeSummary(
            out_dir=target,
            model=str(self.src),
            scheme=self.scheme.name,
            alpha=applied,
            quantized_linears=len(self.targets),
            bytes_before=sum(f.stat().st_size for f in self.checkpoint.files),
            bytes_after=sum(f.stat().st_size for f in target.glob("*.safetensors")),
            dtype=self.dtype,
            seconds=seconds,
            search=self.search,
            peak_rss=peak_rss(),
            layerwise=True,
            num_layers=len(self.layers),
            reused_layers=reused,
            layer_seconds=layer_seconds,
            peak_device=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
            activation_bytes=self.activation_bytes,
            device=str(device),
            offload=self.offload,
        )

    def finish(self, manifest: Manifest, record: dict[str, Any] | None) -> dict[str, float | None]:
        """Index, config, tokenizer and recipe beside the shards; returns the alphas applied."""
        directory = manifest.directory
        records = [*manifest.outside.values(), *manifest.layers]
        index = {
            "metadata": {"total_size": sum(r["bytes"] for r in records)},
            "weight_map": {t: r["file"] for r in records for t in r["tensors"]},
        }
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        applied_all = {k: v for r in manifest.layers for k, v in r["alpha"].items()}
        ordered = sorted(self.groups, key=lambda g: not g.is_linear_pair)  # smooth()'s order
        applied = {g.id: applied_all[g.id] for g in ordered if g.id in applied_all}
        stats = None
        if self.scheme.needs_calibration:
            tokens = sum(b.numel() for b in self.batches)
            stats = ActStats(meta={"num_tokens": tokens, "num_sequences": len(self.rows)})
        clip = {k: v for r in manifest.layers for k, v in r.get("input_clip", {}).items()}
        result = QuantizationResult(
            self.model,
            self.scheme,
            stats,
            None,
            applied,
            {},
            self.linear_pairs,
            self.search,
            self.weight_rounding,
            self.recipe.ranges,
            {n: clip[n] for n in self.targets if n in clip},
            None,
            self.recipe,
        )
        base = result.recipe()
        extra = dict(record or {})
        if isinstance(extra.get("calibration"), dict) and base.get("calibration"):
            extra["calibration"] = {**extra["calibration"], **base["calibration"]}
        full = recipe_record(len(self.targets), base, extra)
        write_metadata(directory, self.config, self.generation_config, self.tokenizer, full)
        unused = self.checkpoint.unused()
        if unused:
            log.warning(
                "%d tensors of the checkpoint are not used by the model (e.g. %s)", len(unused), unused[0]
            )
        return applied


@torch.no_grad()
def quantize_checkpoint(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    calibration: Batches | None,
    recipe: Recipe | str | Scheme | None = None,
    alpha: Alpha | str | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    offload_activations: bool = False,
    tokenizer: Any = None,
    record: dict[str, Any] | None = None,
    force: bool = False,
    progress: bool = True,
    **settings: Any,
) -> QuantizeSummary:
    """Quantize the safetensors checkpoint folder ``src`` one decoder block at a time and write a
    compressed-tensors checkpoint to ``out_dir``: the same tensors as
    ``save_quantized(quantize_model(model, calibration, recipe))`` would write for the model
    loaded in ``dtype``, in the memory of about one block plus the calibration activations.

    ``recipe`` (and ``alpha``, keyword settings) as :func:`quantize_model` takes them; every
    stage runs per block on the cached block inputs: calibration, the alpha search, smoothing,
    searched ranges and GPTQ's Hessians (one block's at a time). ``check_alphas``, ``quantize_lm_head``
    and ``quantize_bmm_inputs`` are refused (they need the whole model). ``tokenizer``: by default
    the one in ``src`` if any; ``record``: more ``smoothquant_recipe.json`` entries, a ``"calibration"``
    entry being merged with the measured counts; ``force`` as for :func:`save_quantized`.
    ``dtype``: the dtype to compute and write floats in (default: the recipe's, else the
    checkpoint's). ``device``: where blocks compute. ``offload_activations``: keep the hidden states
    between blocks in a memory-mapped file instead of memory.

    An interrupted run leaves its finished blocks in ``.<name>.partial`` beside ``out_dir``;
    running the same call again verifies them and continues after the last one.
    """
    recipe = as_recipe(recipe, settings if alpha is None else {**settings, "alpha": alpha})
    if dtype is None and recipe.dtype is not None:
        dtype = getattr(torch, recipe.dtype)
    start = time.perf_counter()
    src, target = Path(src), Path(out_dir).absolute()
    check_output(target, force)
    job = _Job(
        src, calibration, recipe, dtype, torch.device(device), offload_activations, tokenizer, progress
    )
    partial = target.parent / f".{target.name}.partial"
    existing = sum(p.stat().st_size for p in partial.iterdir() if p.is_file()) if partial.is_dir() else 0
    check_free_space(target.parent, max(0, job.estimate_bytes() - existing))
    manifest = Manifest(partial, job.job)
    seconds = {"setup": time.perf_counter() - start}
    reused, layer_seconds, applied = _run_job(job, manifest, target, force, record, seconds)
    if job.search is not None and progress:
        print(job.search.summary())
    return job.summary(target, reused, layer_seconds, seconds, applied)


def _run_job(
    job: _Job, manifest: Manifest, target: Path, force: bool, record: dict[str, Any] | None, seconds: dict
) -> tuple[int, dict[int, float], dict[str, float | None]]:
    """Every block into the partial directory, then the metadata, then published as ``target``;
    an interruption keeps the partial directory for the next run to resume."""
    partial = manifest.directory
    try:
        t = time.perf_counter()
        reused, layer_seconds, job.search = job.run(manifest)
        seconds["layers"] = time.perf_counter() - t
        t = time.perf_counter()
        applied = job.finish(manifest, record)
        manifest.close(remove=True)
        publish(partial, target, force=force)
        seconds["finish"] = time.perf_counter() - t
    except BaseException as e:
        manifest.close(remove=False)
        print(
            f"smoothquant: finished layers are kept in {partial}; run the same command again to resume",
            file=sys.stderr,
        )
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskSpaceError(
                f"the disk filled up while writing {partial}: free some space, then resume"
            ) from e
        raise
    return reused, layer_seconds, applied
