"""Dataset loaders and token windows, on small files the tests make (no network)."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import subprocess
import tarfile
import zipfile
import zlib

import pytest
import torch

from smoothquant.data import calibration_batches, eval_windows, load_documents, load_text, sources
from smoothquant.data.tokens import bos_prefix, token_stream
from smoothquant.errors import DatasetError


class WordTokenizer:
    """A whitespace tokenizer with the call signature the loaders use; optional BOS."""

    def __init__(self, bos: int | None = None) -> None:
        self.bos = bos
        self.vocab: dict[str, int] = {}

    def __call__(self, text: str, add_special_tokens: bool = True, verbose: bool = True) -> dict:
        ids = [self.vocab.setdefault(w, 10 + len(self.vocab)) for w in text.split()]
        if add_special_tokens and self.bos is not None:
            ids = [self.bos, *ids]
        return {"input_ids": ids}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SMOOTHQUANT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(sources.WIKITEXT2_ENV, raising=False)
    monkeypatch.delenv(sources.AUSTEN_ENV, raising=False)


def _paragraphs(n: int, words: int = 30, tag: str = "p") -> str:
    return "\n\n".join(" ".join(f"{tag}{i}w{j}" for j in range(words)) for i in range(n))


# ---- local files -------------------------------------------------------------------------------
def test_local_txt_splits_are_disjoint_and_cover_the_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(_paragraphs(50))
    ev, cal, everything = (load_documents(str(path), s) for s in ("evaluation", "calibration", "all"))
    assert ev + cal == everything and len(everything) == 50
    assert not set(ev) & set(cal)
    assert 3 <= len(cal) <= 7  # ~10% of the characters
    assert load_text(str(path), "calibration") == "\n\n".join(cal)


def test_local_single_paragraph_is_cut_between_words(tmp_path):
    path = tmp_path / "one.txt"
    words = [f"w{i}" for i in range(100)]
    path.write_text(" ".join(words))
    ev, cal = load_text(str(path), "evaluation").split(), load_text(str(path), "calibration").split()
    assert ev + cal == words and 8 <= len(cal) <= 12  # ~10% of the characters


def test_jsonl_documents(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"text": f"document {i} " * 20, "id": i} for i in range(20)] + ["a bare string " * 20]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    docs = load_documents(str(path), "all")
    assert len(docs) == 21 and docs[3].startswith("document 3") and docs[-1].startswith("a bare string")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text field"}\n')
    with pytest.raises(DatasetError, match=r"bad\.jsonl:2"):
        load_documents(str(bad), "all")


def test_bad_names_and_splits(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_text("no-such-dataset")
    with pytest.raises(DatasetError, match="unknown split"):
        load_text("wiki-gensim", "train")
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(DatasetError, match="no text"):
        load_text(str(tmp_path / "empty.txt"))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(DatasetError, match=r"\.txt or \.jsonl"):
        load_text(str(tmp_path / "x.csv"))


# ---- wikitext2 ---------------------------------------------------------------------------------
def _wikitext_dir(tmp_path):
    root = tmp_path / "wt2"
    root.mkdir()
    (root / "test.txt").write_text(" = Test = \n test text \n")
    (root / "valid.txt").write_text(" = Valid = \n valid text \n")
    return root


def test_wikitext2_from_a_folder_param_env_or_path(tmp_path, monkeypatch):
    root = _wikitext_dir(tmp_path)
    assert "test text" in load_text("wikitext2", "evaluation", data_dir=root)
    assert "valid text" in load_text("wikitext2", "calibration", data_dir=root)
    assert "test text" in load_text(str(root), "evaluation")  # the folder itself as the name
    monkeypatch.setenv(sources.WIKITEXT2_ENV, str(root))
    assert "valid text" in load_text("wikitext-2", "calibration")
    (root / "train.txt").write_text("train text")
    assert load_text("wikitext2", "calibration") == "train text"  # train preferred over valid


def test_wikitext2_offline_without_folder_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetError, match=sources.WIKITEXT2_ENV):
        load_text("wikitext2")
    with pytest.raises(DatasetError, match="does not exist"):
        load_text("wikitext2", data_dir=tmp_path / "missing")


# ---- wiki-gensim -------------------------------------------------------------------------------
_NS = "http://www.mediawiki.org/xml/export-0.10/"


def _page(title: str, text: str, ns: int = 0) -> str:
    return (
        f"<page><title>{title}</title><ns>{ns}</ns><revision><text xml:space='preserve'>{text}</text>"
        "</revision></page>"
    )


def _fake_gensim_wheel(folder) -> None:
    body = (
        "'''Alpha''' is a [[Greek alphabet|letter]].{{Citation needed|date=2020}}"
        "&lt;ref&gt;A citation that must go.&lt;/ref&gt; [[Category:Letters]]\n\n"
        "== History ==\nIt is old. [[File:Alpha.png|thumb|A picture caption]]\n\n"
        "== References ==\n* A reference list\n"
    )
    pages = [_page("Alpha", body), _page("Redirect", "#REDIRECT [[Alpha]]"), _page("Talk:Alpha", "talk", 1)]
    pages += [_page(f"Article {i}", f"Article number {i} is about topic {i}.") for i in range(7)]
    xml = f"<mediawiki xmlns='{_NS}'>{''.join(pages)}</mediawiki>".encode()
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / sources.GENSIM_WHEEL, "w") as z:
        z.writestr(sources.GENSIM_MEMBER, bz2.compress(xml))


def test_wiki_gensim_strips_markup_and_splits_by_article(tmp_path):
    pytest.importorskip("mwparserfromhell")
    _fake_gensim_wheel(tmp_path / "cache" / "data")
    articles = load_documents("wiki-gensim", "all")
    assert len(articles) == 8  # redirect and talk page dropped
    first = articles[0]
    assert first.startswith("Alpha is a letter.") and "It is old." in first
    for gone in ("citation", "Category", "caption", "reference list", "{{", "[[", "'''"):
        assert gone not in first
    cal, ev = load_documents("wiki-gensim", "calibration"), load_documents("wiki-gensim", "evaluation")
    assert cal == [articles[3], articles[7]] and len(ev) == 6 and not set(cal) & set(ev)
    # the cleaned text is cached: later runs do not need the wheel
    (tmp_path / "cache" / "data" / sources.GENSIM_WHEEL).unlink()
    assert load_documents("wiki-gensim", "all") == articles


def test_wiki_gensim_fetch_failure_is_a_clear_error(monkeypatch):
    pytest.importorskip("mwparserfromhell")

    def offline(cmd, **kwargs):
        assert "gensim==4.4.0" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (no network)")

    monkeypatch.setattr(sources.subprocess, "run", offline)
    with pytest.raises(DatasetError, match=r"no network.*pip download"):
        load_text("wiki-gensim")


# ---- austen ------------------------------------------------------------------------------------
def _rds(obj) -> bytes:
    import rdata

    return rdata.unparser.unparse_data(rdata.conversion.convert_python_to_r_data(obj), file_format="xdr")


def _fake_austen_deb(path) -> None:
    import numpy as np

    novels = {name: [f"{name} line one", "continues here", "", f"{name} second paragraph"] for name in
              [sources.AUSTEN_EVAL, *sources.AUSTEN_CALIB]}  # fmt: skip
    rdb, variables = b"", {}
    for name, lines in novels.items():
        raw = _rds(np.array(lines))
        blob = len(raw).to_bytes(4, "big") + zlib.compress(raw)
        variables[name] = np.array([len(rdb), len(blob)], dtype=np.int32)
        rdb += blob
    rdx = gzip.compress(_rds({"variables": variables, "references": {}, "compressed": np.array([True])}))
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w:xz") as tar:
        for ext, data in ((".rdx", rdx), (".rdb", rdb)):
            info = tarfile.TarInfo(f"./{sources.AUSTEN_RDB}{ext}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    members = [(b"debian-binary", b"2.0\n"), (b"data.tar.xz", tar_bytes.getvalue())]
    out = b"!<arch>\n"
    for name, data in members:
        out += name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) * 2 + b"100644".ljust(8)
        out += str(len(data)).encode().ljust(10) + b"`\n" + data + (b"\n" if len(data) % 2 else b"")
    path.write_bytes(out)


def test_austen_from_a_debian_package(tmp_path, monkeypatch):
    pytest.importorskip("rdata")
    deb = tmp_path / "r-cran-janeaustenr_1.0.0-1_all.deb"
    _fake_austen_deb(deb)
    monkeypatch.setenv(sources.AUSTEN_ENV, str(deb))
    monkeypatch.setattr(sources, "AUSTEN_SYSTEM", tmp_path / "nowhere")  # ignore a system-wide install
    assert load_documents("austen", "evaluation") == [
        "prideprejudice line one continues here\n\nprideprejudice second paragraph"
    ]
    cal = load_documents("austen", "calibration")
    assert [d.split()[0] for d in cal] == list(sources.AUSTEN_CALIB)


def test_austen_missing_package_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "AUSTEN_SYSTEM", tmp_path / "nowhere")
    monkeypatch.setattr(sources.shutil, "which", lambda name: None)
    with pytest.raises(DatasetError, match="apt-get download r-cran-janeaustenr"):
        load_text("austen")
    (tmp_path / "junk.deb").write_bytes(b"not a deb")
    monkeypatch.setenv(sources.AUSTEN_ENV, str(tmp_path / "junk.deb"))
    with pytest.raises(DatasetError, match="not a Debian package"):
        load_text("austen")


# ---- token windows -----------------------------------------------------------------------------
def test_bos_prefix_and_token_stream():
    assert bos_prefix(WordTokenizer()) == [] and bos_prefix(WordTokenizer(bos=1)) == [1]
    tok = WordTokenizer()
    text = " ".join(f"w{i}" for i in range(1000))
    full = token_stream(tok, text)
    assert full.numel() == 1000
    assert torch.equal(token_stream(tok, text, need=37), full[:37])


def test_eval_windows_are_consecutive_non_overlapping_and_capped(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(_paragraphs(40, words=50))  # 2000 words, ~1800 in evaluation
    tok = WordTokenizer()
    stream = token_stream(tok, load_text(str(path), "evaluation"))
    w = eval_windows(tok, str(path), seq_len=100)
    assert w.shape == (stream.numel() // 100, 100)
    assert torch.equal(w.flatten(), stream[: w.numel()])
    assert eval_windows(tok, str(path), seq_len=100, max_tokens=350).shape == (3, 100)
    with pytest.raises(DatasetError, match="smaller than one window"):
        eval_windows(tok, str(path), seq_len=100, max_tokens=50)
    with pytest.raises(DatasetError, match="less than one window"):
        eval_windows(tok, str(path), seq_len=100_000)


def test_windows_start_with_bos_when_the_tokenizer_adds_one(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(_paragraphs(40, words=50))
    tok = WordTokenizer(bos=1)
    w = eval_windows(tok, str(path), seq_len=64, max_tokens=640)
    assert w.shape == (10, 64) and (w[:, 0] == 1).all() and (w[:, 1:] != 1).all()
    stream = token_stream(tok, load_text(str(path), "evaluation"))
    assert torch.equal(w[:, 1:].flatten(), stream[: 10 * 63])  # each window: BOS + the next 63 tokens


def test_calibration_batches_spread_over_the_calibration_split(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(_paragraphs(100, words=100))  # 10,000 words, ~1000 in calibration
    tok = WordTokenizer()
    calib = calibration_batches(tok, str(path), num_samples=4, seq_len=50)
    assert calib.shape == (4, 50) and calib.dtype == torch.long
    cal_stream = token_stream(tok, load_text(str(path), "calibration"))
    ev_ids = set(token_stream(tok, load_text(str(path), "evaluation")).tolist())
    assert not set(calib.flatten().tolist()) & ev_ids  # never evaluation text
    windows = cal_stream[: cal_stream.numel() // 50 * 50].view(-1, 50)
    picked = [int((windows == row).all(1).nonzero()) for row in calib]
    assert picked == sorted(picked) and picked[-1] >= len(windows) // 2  # spread, not the first pages
    with pytest.raises(DatasetError, match="fewer than the 1000 asked for"):
        calibration_batches(tok, str(path), num_samples=1000, seq_len=50)
