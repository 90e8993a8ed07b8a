"""Bad input gets a clear SmoothQuantError and never a half-written or half-loaded result."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections import namedtuple

import pytest
import torch
from safetensors.torch import load_file, save_file

import smoothquant as sq
from smoothquant.errors import CheckpointError, DiskSpaceError, ExportError, OutputExistsError
from smoothquant.export import atomic
from smoothquant.export import save as save_module
from smoothquant.export.save import WEIGHTS_FILE
from tiny_models import tiny_batches, tiny_model


@pytest.fixture(scope="module")
def result():
    model = tiny_model("llama", dtype=torch.float32)
    return sq.quantize_model(model, tiny_batches(), scheme="O3", seq_len=16, progress=False)


@pytest.fixture
def checkpoint(tmp_path, result):
    path = tmp_path / "ckpt"
    sq.save_quantized(result, path)
    return path


def _edit_tensors(path, edit):
    tensors = load_file(path / WEIGHTS_FILE)
    edit(tensors)
    save_file(tensors, path / WEIGHTS_FILE, metadata={"format": "pt"})


def _edit_config(path, edit):
    config = json.loads((path / "config.json").read_text())
    edit(config)
    (path / "config.json").write_text(json.dumps(config))


# ---- loading ----------------------------------------------------------------------------------
def test_truncated_safetensors(checkpoint):
    data = (checkpoint / WEIGHTS_FILE).read_bytes()
    (checkpoint / WEIGHTS_FILE).write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        sq.load(checkpoint)


def test_config_naming_a_missing_tensor(checkpoint):
    name = "model.layers.1.mlp.down_proj.weight_scale"
    _edit_tensors(checkpoint, lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match=f"no tensor {name}"):
        sq.load(checkpoint)


def test_config_quantizing_a_linear_the_checkpoint_stores_in_float(checkpoint):
    _edit_config(checkpoint, lambda c: c["quantization_config"].update(ignore=[]))  # lm_head too
    with pytest.raises(CheckpointError, match=r"lm_head\.weight has dtype torch.float32, expected int8"):
        sq.load(checkpoint)


def test_scales_for_a_module_the_config_ignores(checkpoint):
    _edit_config(checkpoint, lambda c: c["quantization_config"]["ignore"].append("re:.*o_proj"))
    with pytest.raises(CheckpointError, match="does not quantize"):
        sq.load(checkpoint)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("model.layers.0.self_attn.q_proj.weight", lambda t: t.half(), "dtype torch.float16, expected int8"),
        ("model.layers.0.self_attn.q_proj.weight_scale", lambda t: t.to(torch.int8), "expected float"),
        ("model.norm.weight", lambda t: t.to(torch.int8), "expected float"),
        ("model.layers.0.self_attn.q_proj.weight", lambda t: t[:, :-1].contiguous(), "shape"),
        ("model.layers.0.self_attn.o_proj.input_scale", lambda t: t.repeat(2), "shape"),
    ],
)
def test_wrong_dtype_or_shape(checkpoint, name, value, message):
    _edit_tensors(checkpoint, lambda t: t.update({name: value(t[name])}))
    with pytest.raises(CheckpointError, match=message):
        sq.load(checkpoint)


def test_unexpected_tensor(checkpoint):
    _edit_tensors(checkpoint, lambda t: t.update({"model.layers.0.extra.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match="does not use"):
        sq.load(checkpoint)


def test_symmetric_zero_points_are_accepted_nonzero_refused(checkpoint, result):
    name = "model.layers.0.self_attn.q_proj.weight_zero_point"
    _edit_tensors(checkpoint, lambda t: t.update({name: torch.zeros(1, dtype=torch.int8)}))
    assert torch.equal(
        sq.load(checkpoint, backend=None)(tiny_batches()).logits, result.model(tiny_batches()).logits
    )
    _edit_tensors(checkpoint, lambda t: t.update({name: torch.ones(1, dtype=torch.int8)}))
    with pytest.raises(CheckpointError, match="asymmetric"):
        sq.load(checkpoint)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda qc: qc.update(quant_method="gptq"), "no compressed-tensors quantization_config"),
        (lambda qc: qc.update(format="pack-quantized"), "format"),
        (lambda qc: qc.update(quantization_status="frozen"), "not stored as integers"),
        (lambda qc: qc["config_groups"]["group_0"]["weights"].update(num_bits=4), "num_bits=4"),
        (lambda qc: qc["config_groups"]["group_0"]["input_activations"].update(symmetric=False), "symmetric"),
        (lambda qc: qc["config_groups"]["group_0"].update(input_activations=None), "W8A8"),
        (
            lambda qc: qc["config_groups"]["group_0"]["weights"].update(strategy="group", group_size=128),
            "strategy 'group'",
        ),
        (
            lambda qc: qc["config_groups"]["group_0"]["input_activations"].update(strategy="token"),
            "per-token",
        ),
    ],
)
def test_unsupported_quantization_config(checkpoint, edit, message):
    _edit_config(checkpoint, lambda c: edit(c["quantization_config"]))
    with pytest.raises(CheckpointError, match=message):
        sq.load(checkpoint)


def test_missing_or_pickled_checkpoints(tmp_path, checkpoint):
    with pytest.raises(CheckpointError, match="not a directory"):
        sq.load(tmp_path / "nothing")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(checkpoint / "config.json", pickled / "config.json")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04 never unpickled")
    with pytest.raises(CheckpointError, match="safetensors only"):
        sq.load(pickled)
    (checkpoint / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        sq.load(checkpoint)
    (checkpoint / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json is missing"):
        sq.load(checkpoint)


def test_sharded_checkpoint_with_a_missing_shard(checkpoint):
    tensors = load_file(checkpoint / WEIGHTS_FILE)
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for file, names in shards.items():
        save_file({k: tensors[k] for k in names}, checkpoint / file)
    (checkpoint / WEIGHTS_FILE).unlink()
    index = {"weight_map": {k: f for f, names in shards.items() for k in names}}
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    reference = sq.load(checkpoint, backend=None)  # shards load like the single file
    assert isinstance(reference.model.layers[0].self_attn.q_proj, sq.FakeQuantLinear)
    (checkpoint / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        sq.load(checkpoint)


# ---- saving -----------------------------------------------------------------------------------
def _entries(path):
    return sorted(p.name for p in path.iterdir())


def test_existing_output_directory(tmp_path, result):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--force"):
        sq.save_quantized(result, out)
    assert _entries(out) == ["keep.txt"] and _entries(tmp_path) == ["out"]
    sq.save_quantized(result, out, force=True)
    assert "keep.txt" not in _entries(out) and WEIGHTS_FILE in _entries(out)
    assert _entries(tmp_path) == ["out"]  # no temporary or backup directory left
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputExistsError, match="not a directory"):
        sq.save_quantized(result, tmp_path / "file", force=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_parent_directory(tmp_path, result):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        with pytest.raises(ExportError, match="read-only"):
            sq.save_quantized(result, parent / "out")
        assert _entries(parent) == []
    finally:
        parent.chmod(0o755)


def test_unwritable_directory_simulated(tmp_path, result, monkeypatch):
    """The same path as above where permissions cannot be tested (root): creating the temporary
    directory fails with EACCES."""

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(atomic.tempfile, "mkdtemp", refuse)
    with pytest.raises(ExportError, match="read-only"):
        sq.save_quantized(result, tmp_path / "out")
    assert _entries(tmp_path) == []


def test_not_enough_free_space_is_checked_first(tmp_path, result, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 10**6))
    with pytest.raises(DiskSpaceError, match="not enough free space"):
        sq.save_quantized(result, tmp_path / "out")
    assert _entries(tmp_path) == []


@pytest.mark.parametrize("existing", [False, True])
def test_disk_full_while_writing(tmp_path, result, monkeypatch, existing):
    out = tmp_path / "out"
    if existing:
        sq.save_quantized(result, out)
        before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"\0" * 100)  # a partial file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(save_module, "save_file", full)
    with pytest.raises(DiskSpaceError, match="filled up"):
        sq.save_quantized(result, out, force=True)
    assert _entries(tmp_path) == (["out"] if existing else [])
    if existing:  # the old checkpoint is untouched
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_written_files_follow_the_umask(tmp_path, result):
    """Not mkdtemp's private 0700: a server running as another user must be able to read it."""
    old = os.umask(0o022)
    try:
        sq.save_quantized(result, tmp_path / "out")
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir()} == {0o644}


def test_tensors_the_config_has_no_place_for(tmp_path, result):
    """A bias the config's model lacks, or a static scale in a dynamic checkpoint, is not ignored."""
    dynamic = tiny_model("llama", dtype=torch.float32)
    sq.save_quantized(
        sq.quantize_model(dynamic, tiny_batches(), seq_len=16, progress=False), tmp_path / "w8a8"
    )
    for name in ("model.layers.0.self_attn.q_proj.bias", "model.layers.0.self_attn.q_proj.input_scale"):
        _edit_tensors(tmp_path / "w8a8", lambda t, name=name: t.update({name: torch.ones(1)}))
        with pytest.raises(CheckpointError, match="does not use"):
            sq.load(tmp_path / "w8a8")
        _edit_tensors(tmp_path / "w8a8", lambda t, name=name: t.pop(name))
