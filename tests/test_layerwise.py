"""Layer-by-layer quantization of a sharded checkpoint gives exactly the in-memory checkpoint,
resumes after an interruption, and checks its input before any work."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

import smoothquant as sq
from smoothquant.errors import CheckpointError, ExportError, OutputExistsError, SmoothQuantError
from smoothquant.export.save import RECIPE_FILE
from smoothquant.layerwise import resume, run
from tiny_models import TINY_CONFIGS, plant_outliers, tiny_batches, tiny_model

DATA = tiny_batches(4, 16)
SEARCH = {"grid": (0.3, 0.6, 0.9), "trial_tokens": 32}  # a short alpha="auto" search


def _write_source(path, name: str = "llama", layers: int | None = None):
    """A tiny random model (outliers planted, so smoothing matters) saved as several shards."""
    if layers is None:
        model = tiny_model(name, dtype=torch.float32)
    else:
        model_type, kwargs = TINY_CONFIGS[name]
        config = AutoConfig.for_model(model_type, **{**kwargs, "num_hidden_layers": layers})
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).eval()
    plant_outliers(model)
    model.save_pretrained(path, max_shard_size="40KB")
    assert len(list(path.glob("*.safetensors"))) > 2
    return path


def _tensors(path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                assert key not in out
                out[key] = f.get_tensor(key)
    return out


def _json(path, name):
    data = json.loads((path / name).read_text())
    if name == RECIPE_FILE and data.get("alpha_search"):
        data["alpha_search"].pop("seconds")  # wall time
    return data


def _assert_same_checkpoint(a, b):
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for key, t in ta.items():
        assert t.dtype == tb[key].dtype and torch.equal(t, tb[key]), key
    for name in ("config.json", "generation_config.json", RECIPE_FILE):
        assert _json(a, name) == _json(b, name), name


def _layerwise(src, out, scheme="w8a8", alpha=0.5, **kwargs):
    kwargs = {"seq_len": 16, "dtype": torch.float32, "progress": False, **kwargs}
    if alpha == "auto":
        kwargs.setdefault("search_options", SEARCH)
    return sq.quantize_checkpoint(src, out, DATA, scheme, alpha, **kwargs)


# llama: the common layout; gemma3: sliding-window layers (per-layer masks and rotary tables),
# (1 + w) norms; mixtral: MoE experts read per expert, renamed on disk; opt: tied lm_head,
# LayerNorm biases; bloom: blocks returning tuples, ALiBi; gpt_neox: lm_head renamed on disk
@pytest.mark.parametrize(
    ("family", "scheme", "alpha"),
    [
        ("llama", "w8a8", 0.5),
        ("llama", "O3", "auto"),
        ("gemma3", "O3", 0.8),
        ("mixtral", "w8a8", 0.5),
        ("opt", "O3", 0.5),
        ("bloom", "O1", 0.5),
        ("gpt_neox", "w8a8", 0.5),
    ],
)
def test_same_checkpoint_as_in_memory(tmp_path, family, scheme, alpha):
    src = _write_source(tmp_path / "src", family)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    result = sq.quantize_model(model, DATA, scheme, alpha, seq_len=16, search_options=SEARCH, progress=False)
    sq.save_quantized(result, tmp_path / "memory")
    summary = _layerwise(src, tmp_path / "layerwise", scheme, alpha)
    _assert_same_checkpoint(tmp_path / "memory", tmp_path / "layerwise")
    assert summary.num_layers == 2 and summary.reused_layers == 0 and summary.peak_rss > 0
    assert summary.quantized_linears == sum(isinstance(m, sq.FakeQuantLinear) for m in model.modules())
    index = json.loads((tmp_path / "layerwise" / run.INDEX_FILE).read_text())
    assert set(index["weight_map"]) == set(_tensors(tmp_path / "layerwise"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layerwise", "memory", "src"]  # no leftovers


@pytest.mark.parametrize("scheme", ["w8a8", "O1", "O3"])
def test_every_stage_layer_by_layer_gives_the_in_memory_checkpoint(tmp_path, scheme):
    """alpha auto, GPTQ and searched ranges (static input ranges on O3, weight scales on all):
    the same recipe, the same bytes either way."""
    src = _write_source(tmp_path / "src", "llama")
    recipe = sq.Recipe(
        scheme, "auto", weight_rounding="gptq", ranges="search", seq_len=16, search_options=SEARCH
    )
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    result = sq.quantize_model(model, DATA, recipe, progress=False)
    sq.save_quantized(result, tmp_path / "memory")
    summary = sq.quantize_checkpoint(
        src, tmp_path / "layerwise", DATA, recipe, dtype=torch.float32, progress=False
    )
    _assert_same_checkpoint(tmp_path / "memory", tmp_path / "layerwise")
    written = _json(tmp_path / "layerwise", RECIPE_FILE)
    assert sq.Recipe.from_dict(written) == recipe and written["ranges"] == "search"
    assert bool(written["input_clip"]) == (scheme == "O3")  # dynamic inputs have no range to clip
    assert summary.search is not None and written["weight_rounding"] == "gptq"


def test_whole_model_stages_are_refused_layer_by_layer_in_one_line(tmp_path):
    src = _write_source(tmp_path / "src", "llama")
    with pytest.raises(SmoothQuantError, match="check alphas") as e:
        _layerwise(src, tmp_path / "q", "O1", "auto", check_alphas=True)
    assert "\n" not in str(e.value)
    with pytest.raises(SmoothQuantError, match="in-memory options"):
        _layerwise(src, tmp_path / "q", quantize_lm_head=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-only: --device cuda needs a CUDA GPU")
@pytest.mark.parametrize(("scheme", "alpha"), [("w8a8", 0.5), ("O3", "auto")])
def test_same_checkpoint_as_in_memory_on_cuda(tmp_path, scheme, alpha):
    """Layers computed on the GPU: the same checkpoint as the in-memory path on the GPU."""
    src = _write_source(tmp_path / "src", "llama")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).cuda()
    result = sq.quantize_model(model, DATA, scheme, alpha, seq_len=16, search_options=SEARCH, progress=False)
    sq.save_quantized(result, tmp_path / "memory")
    summary = _layerwise(src, tmp_path / "layerwise", scheme, alpha, device="cuda")
    _assert_same_checkpoint(tmp_path / "memory", tmp_path / "layerwise")
    assert summary.peak_device is not None and summary.peak_device > 0


def test_bfloat16_compute_and_offloaded_activations_load_back(tmp_path):
    src = _write_source(tmp_path / "src", "gemma2")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    sq.save_quantized(sq.quantize_model(model, DATA, "w8a8", seq_len=16, progress=False), tmp_path / "memory")
    summary = _layerwise(src, tmp_path / "layerwise", dtype=torch.bfloat16, offload_activations=True)
    assert summary.offload and summary.dtype == torch.bfloat16
    _assert_same_checkpoint(tmp_path / "memory", tmp_path / "layerwise")
    assert not list((tmp_path / "layerwise").glob("*.bin"))  # no activation file left behind
    ids = tiny_batches(2, 8, seed=3)
    with torch.no_grad():
        a = sq.load(tmp_path / "memory", backend=None)(ids).logits
        b = sq.load(tmp_path / "layerwise", backend=None)(ids).logits
    assert torch.equal(a, b)


class _Stop(KeyboardInterrupt):
    """Stands for Ctrl-C (or a crash) in the middle of a run."""


def _computed_blocks(monkeypatch) -> list[int]:
    """Records which blocks a run computes."""
    computed: list[int] = []
    original = run._Job._block

    def spy(self, i, *args, **kwargs):
        computed.append(i)
        return original(self, i, *args, **kwargs)

    monkeypatch.setattr(run._Job, "_block", spy)
    return computed


@pytest.mark.parametrize("where", ["after_block", "while_writing"])
def test_interrupted_run_resumes_after_the_finished_blocks(tmp_path, monkeypatch, caplog, where):
    """Interrupted, then run again: the finished blocks are reused and the result is the same as
    an uninterrupted run's (the second case also keeps its activations in files)."""
    src = _write_source(tmp_path / "src", "llama", layers=4)
    _layerwise(src, tmp_path / "reference", "O3", "auto")
    offload = where == "while_writing"
    out = tmp_path / "out"
    partial = tmp_path / ".out.partial"

    with monkeypatch.context() as m:
        if where == "after_block":  # interrupted once block 2 (the third) is recorded
            finish = resume.Manifest.finish_layer

            def stop_after(self, record, streams):
                finish(self, record, streams)
                if record["index"] == 2:
                    raise _Stop

            m.setattr(resume.Manifest, "finish_layer", stop_after)
        else:  # interrupted while block 3's shard is half written
            save = run.save_file

            def stop_in(tensors, path, metadata=None):
                if any(k.startswith("model.layers.3.") for k in tensors):
                    with open(path, "wb") as f:
                        f.write(b"\0" * 100)
                    raise _Stop
                save(tensors, path, metadata=metadata)

            m.setattr(run, "save_file", stop_in)
        with pytest.raises(_Stop):
            _layerwise(src, out, "O3", "auto", offload_activations=offload)
    assert not out.exists()
    manifest = json.loads((partial / resume.MANIFEST).read_text())
    assert [r["index"] for r in manifest["layers"]] == [0, 1, 2]

    computed = _computed_blocks(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="smoothquant"):
        summary = _layerwise(src, out, "O3", "auto", offload_activations=offload)
    assert computed == [3] and summary.reused_layers == 3
    assert "not used by the model" not in caplog.text  # the reused blocks' tensors count as used
    _assert_same_checkpoint(tmp_path / "reference", out)
    assert not partial.exists()


def test_damaged_or_foreign_partial_output_starts_again(tmp_path, monkeypatch):
    src = _write_source(tmp_path / "src", "llama", layers=3)
    _layerwise(src, tmp_path / "reference")
    partial = tmp_path / ".out.partial"
    finish = resume.Manifest.finish_layer

    def stop_after_first(self, record, streams):
        finish(self, record, streams)
        raise _Stop

    with monkeypatch.context() as m:
        m.setattr(resume.Manifest, "finish_layer", stop_after_first)
        with pytest.raises(_Stop):
            _layerwise(src, tmp_path / "out")
    shard = partial / json.loads((partial / resume.MANIFEST).read_text())["layers"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1  # one flipped bit in a finished block's shard
    shard.write_bytes(bytes(data))
    computed = _computed_blocks(monkeypatch)
    _layerwise(src, tmp_path / "out")
    assert computed == [0, 1, 2]
    _assert_same_checkpoint(tmp_path / "reference", tmp_path / "out")

    # a partial output of another job (here another alpha) is not reused either
    with monkeypatch.context() as m:
        m.setattr(resume.Manifest, "finish_layer", stop_after_first)
        with pytest.raises(_Stop):
            _layerwise(src, tmp_path / "other", alpha=0.9)
    computed.clear()
    _layerwise(src, tmp_path / "other", alpha=0.6)
    assert computed == [0, 1, 2]


def test_bad_input_fails_before_any_work(tmp_path):
    src = _write_source(tmp_path / "src", "llama")
    with pytest.raises(ExportError, match="group-wise"):
        _layerwise(src, tmp_path / "q", "zeroquant")
    with pytest.raises(SmoothQuantError, match="token quantiles"):
        _layerwise(src, tmp_path / "q", "outlier-suppression")
    with pytest.raises(SmoothQuantError, match="'auto'"):
        _layerwise(src, tmp_path / "q", alpha="best")
    with pytest.raises(SmoothQuantError, match="unknown search option"):
        _layerwise(src, tmp_path / "q", alpha="auto", search_options={"gird": [0.5]})
    with pytest.raises(SmoothQuantError, match="no alpha given"):
        _layerwise(src, tmp_path / "q", alpha={"*.attn_in": 0.5})
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        _layerwise(tmp_path, tmp_path / "q")
    (tmp_path / "exists").mkdir()
    with pytest.raises(OutputExistsError):
        _layerwise(src, tmp_path / "exists")
    with pytest.raises(SmoothQuantError, match="vocabulary"):
        sq.quantize_checkpoint(src, tmp_path / "q", torch.full((1, 8), 10_000), progress=False)
    # a checkpoint missing one tensor
    missing = "model.layers.1.mlp.down_proj.weight"
    index = json.loads((src / run.INDEX_FILE).read_text())
    shard = src / index["weight_map"][missing]
    kept = {k: v for k, v in _tensors_in(shard).items() if k != missing}
    save_file(kept, str(shard), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="no tensor for 1 parameters"):
        _layerwise(src, tmp_path / "q")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists", "src"]


def _tensors_in(file) -> dict[str, torch.Tensor]:
    with safe_open(file, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def test_two_runs_cannot_share_a_partial_directory(tmp_path):
    first = resume.Manifest(tmp_path / ".out.partial", {"num_layers": 2})
    with pytest.raises(ExportError, match="another run"):
        resume.Manifest(tmp_path / ".out.partial", {"num_layers": 2})
    first.close(remove=True)
    resume.Manifest(tmp_path / ".out.partial", {"num_layers": 2}).close(remove=True)
