"""Named text corpora, split so that calibration text and evaluation text never overlap.

Every source yields a list of documents for a split: ``"calibration"``, ``"evaluation"`` or
``"all"``. The splits are fixed by the source, not by the caller, so calibrating and evaluating on
"the same dataset" can never share text:

- ``wikitext2``: WikiText-2 (raw). Evaluation is ``test``; calibration is ``train`` (the HF
  dataset, when online) or ``train.txt``/``valid.txt`` of a local copy.
- ``wiki-gensim``: 106 English Wikipedia articles shipped inside the gensim 4.4.0 wheel
  (fetched once with ``pip download``, markup stripped with mwparserfromhell). Every 4th
  article is calibration, the rest evaluation.
- ``austen``: Jane Austen's six novels from Debian's ``r-cran-janeaustenr`` (read with ``rdata``).
  *Pride and Prejudice* is evaluation, the other five novels calibration.
- a local ``.txt``/``.jsonl`` file (documents: paragraphs / lines with a ``text`` field): the last
  10% of the documents, by characters, are calibration, the rest evaluation; or a local folder in
  WikiText's layout (``test.txt`` plus ``train.txt`` or ``valid.txt``).

Fetched and cleaned corpora are cached (see :mod:`smoothquant.cache`); nothing is downloaded when
the cache is warm.
"""

from __future__ import annotations

import bz2
import codecs
import contextlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

from smoothquant.cache import atomic_path, cache_dir
from smoothquant.errors import DatasetError

log = logging.getLogger("smoothquant")

SPLITS = ("calibration", "evaluation", "all")
WIKITEXT2_ENV = "SMOOTHQUANT_WIKITEXT2_DIR"
AUSTEN_ENV = "SMOOTHQUANT_AUSTEN_DEB"

GENSIM_WHEEL = "gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl"
GENSIM_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
# a fixed wheel, whatever the running interpreter: the data file is the same in all of them
GENSIM_PIP = [
    "download", "--no-deps", "--only-binary", ":all:", "--python-version", "3.11",
    "--platform", "manylinux_2_28_x86_64", "gensim==4.4.0",
]  # fmt: skip
AUSTEN_RDB = "usr/lib/R/site-library/janeaustenr/data/Rdata"
AUSTEN_SYSTEM = Path("/", AUSTEN_RDB)  # where the Debian package is installed, if it is
AUSTEN_EVAL = "prideprejudice"
# calibration novels, in the order their text is concatenated
AUSTEN_CALIB = ("emma", "sensesensibility", "mansfieldpark", "northangerabbey", "persuasion")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


# ---- local files -------------------------------------------------------------------------------
def _read_local_documents(path: Path) -> list[str]:
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read {path} as UTF-8 text: {e}") from e
    if path.suffix.lower() == ".jsonl":
        docs = []
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}:{number}: not JSON ({e})") from e
            text = item.get("text") if isinstance(item, dict) else item
            if not isinstance(text, str):
                raise DatasetError(f'{path}:{number}: expected a string or an object with a "text" string')
            docs.append(text)
    else:
        docs = re.split(r"\n\s*\n", raw)
    docs = [d.strip() for d in docs if d.strip()]
    if not docs:
        raise DatasetError(f"{path} holds no text")
    return docs


def split_documents(docs: list[str], split: str, calibration_fraction: float = 0.1) -> list[str]:
    """Cut an ordered list of documents in two at ``1 - calibration_fraction`` of its characters.

    Each part keeps at least one piece. A single document is cut between lines (or, for a single
    line, between words) instead, so even a one-paragraph file splits cleanly."""
    if split == "all":
        return docs
    pieces, glue = docs, None
    if len(docs) == 1:
        lines = docs[0].splitlines(keepends=True)
        pieces, glue = (lines, "") if len(lines) > 1 else (docs[0].split(" "), " ")
    if len(pieces) < 2:
        raise DatasetError("the text is too short to split into calibration and evaluation parts")
    total, seen, cut = sum(len(p) for p in pieces), 0, len(pieces) - 1
    for i, p in enumerate(pieces):
        seen += len(p)
        if seen >= (1 - calibration_fraction) * total:
            cut = min(i + 1, len(pieces) - 1)
            break
    part = pieces[:cut] if split == "evaluation" else pieces[cut:]
    return part if glue is None else [glue.join(part).strip()]


def _wikitext_dir_documents(root: Path, split: str) -> list[str]:
    names = {"evaluation": ["test.txt"], "calibration": ["train.txt", "valid.txt"]}
    names["all"] = names["evaluation"] + names["calibration"]
    texts = []
    for name in names[split]:
        if (root / name).is_file():
            texts.append((root / name).read_text(encoding="utf-8"))
            if split == "calibration":
                break
    if not texts:
        raise DatasetError(
            f"{root} has no {' or '.join(names[split])}: a WikiText-style folder needs test.txt "
            "(evaluation) and train.txt or valid.txt (calibration)"
        )
    return texts


# ---- wikitext2 ---------------------------------------------------------------------------------
def _wikitext2(split: str, data_dir: str | Path | None) -> list[str]:
    root = data_dir or os.environ.get(WIKITEXT2_ENV)
    if root:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DatasetError(f"WikiText-2 folder {root} does not exist")
        return _wikitext_dir_documents(root, split)
    hint = (
        f"set {WIKITEXT2_ENV} (or --data-dir) to a folder holding WikiText-2's raw test.txt and "
        "valid.txt, or use wiki-gensim / austen / a local file"
    )
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise DatasetError(f"wikitext2 needs the Hugging Face hub, which is offline: {hint}")
    try:
        import datasets
    except ImportError as e:
        raise DatasetError(f"wikitext2 from the hub needs `pip install datasets`; or {hint}") from e
    hf_split = {"evaluation": ["test"], "calibration": ["train"], "all": ["test", "train"]}[split]
    try:
        rows = [
            r
            for s in hf_split
            for r in datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=s)["text"]
        ]
    except Exception as e:  # network and hub errors come in many types
        raise DatasetError(f"cannot fetch wikitext-2-raw-v1 ({e}); {hint}") from e
    # the reference protocol joins the dataset's rows with blank lines
    return ["\n\n".join(rows)]


# ---- wiki-gensim -------------------------------------------------------------------------------
_TAIL_SECTION = re.compile(
    r"^==+\s*(references|external links|see also|further reading|notes|bibliography|sources|footnotes)\s*==+\s*$",
    re.IGNORECASE | re.MULTILINE,
)
_DROP_TAGS = ("ref", "table", "gallery", "math", "timeline", "references")


def strip_wikitext(text: str) -> str:
    """Plain prose from MediaWiki markup: templates, references, tables, files and categories
    removed; reference-like tail sections (References, External links...) cut off."""
    try:
        import mwparserfromhell
    except ImportError as e:
        raise DatasetError("wiki-gensim needs mwparserfromhell: pip install mwparserfromhell") from e
    tail = _TAIL_SECTION.search(text)
    code = mwparserfromhell.parse(text[: tail.start()] if tail else text)
    drop = [n for n in code.filter_tags(recursive=True) if str(n.tag).strip().lower() in _DROP_TAGS]
    # File:, Image:, Category: and interlanguage links
    drop += [n for n in code.filter_wikilinks(recursive=True) if ":" in str(n.title)]
    for node in drop:
        with contextlib.suppress(ValueError):  # already gone with an enclosing node
            code.remove(node)
    plain = code.strip_code(normalize=True, collapse=True)
    plain = "\n".join(line.strip() for line in plain.splitlines())
    return re.sub(r"\n{3,}", "\n\n", plain).strip()


def parse_wiki_dump(xml: bytes) -> list[tuple[str, str]]:
    """(title, plain text) of every article (namespace 0, not a redirect) in a MediaWiki XML dump."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    articles = []
    for page in root.iter(f"{ns}page"):
        text = page.findtext(f"{ns}revision/{ns}text") or ""
        if page.findtext(f"{ns}ns") != "0" or text.lstrip().lower().startswith("#redirect"):
            continue
        plain = strip_wikitext(text)
        if plain:
            articles.append((page.findtext(f"{ns}title") or "", plain))
    return articles


def _gensim_wheel() -> Path:
    folder = cache_dir("data")
    wheel = folder / GENSIM_WHEEL
    if wheel.is_file():
        return wheel
    log.info("fetching the gensim 4.4.0 wheel (28 MB, once) for its Wikipedia sample")
    cmd = [sys.executable, "-m", "pip", *GENSIM_PIP, "--dest", str(folder), "--quiet"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not wheel.is_file():
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise DatasetError(
            f"cannot fetch the gensim wheel for wiki-gensim ({detail[0]}). It needs PyPI once; on a "
            f"machine with access run `pip {' '.join(GENSIM_PIP)}` and copy {GENSIM_WHEEL} into {folder}"
        )
    return wheel


def _wiki_gensim_articles() -> list[str]:
    cached = cache_dir("data") / "wiki-gensim.json"
    if cached.is_file():
        return [a["text"] for a in json.loads(cached.read_text(encoding="utf-8"))["articles"]]
    wheel = _gensim_wheel()
    try:
        with zipfile.ZipFile(wheel) as z:
            xml = bz2.decompress(z.read(GENSIM_MEMBER))
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise DatasetError(f"{wheel} is not the expected gensim wheel ({e}); delete it and retry") from e
    log.info("stripping wiki markup from the gensim sample (once)")
    articles = parse_wiki_dump(xml)
    with atomic_path(cached) as tmp:
        payload = {
            "source": f"{GENSIM_WHEEL}:{GENSIM_MEMBER}",
            "articles": [{"title": t, "text": x} for t, x in articles],
        }
        tmp.write_text(json.dumps(payload), encoding="utf-8")
    return [x for _, x in articles]


def _wiki_gensim(split: str, data_dir: str | Path | None) -> list[str]:
    articles = _wiki_gensim_articles()
    if split == "all":
        return articles
    return [a for i, a in enumerate(articles) if (i % 4 == 3) == (split == "calibration")]


# ---- austen ------------------------------------------------------------------------------------
def deb_data_members(deb: Path) -> tarfile.TarFile:
    """The data tarball of a Debian package (an ``ar`` archive), without dpkg."""
    raw = deb.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise DatasetError(f"{deb} is not a Debian package")
    pos = 8
    while pos + 60 <= len(raw):
        header = raw[pos : pos + 60]
        name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58])
        if name.startswith("data.tar"):
            try:
                return tarfile.open(fileobj=io.BytesIO(raw[pos + 60 : pos + 60 + size]))
            except tarfile.TarError as e:
                raise DatasetError(f"cannot open {name} in {deb}: {e}") from e
        pos += 60 + size + size % 2
    raise DatasetError(f"{deb} has no data.tar member")


def read_r_lazyload(rdx: bytes, rdb: bytes) -> dict[str, object]:
    """Objects of an R lazy-load database (``.rdx`` index + ``.rdb`` blobs), as rdata converts them.

    Each blob is a 4-byte big-endian length followed by the zlib-compressed serialization."""
    import zlib

    try:
        import rdata
    except ImportError as e:
        raise DatasetError("austen needs rdata: pip install rdata") from e

    def parse(raw: bytes) -> object:
        with warnings.catch_warnings():  # blobs have no file header; rdata warns and reads them right
            warnings.simplefilter("ignore", UserWarning)
            return rdata.conversion.convert(rdata.parser.parse_data(raw))

    try:
        index = parse(rdx)
        return {
            str(name): parse(zlib.decompress(rdb[int(offset) + 4 : int(offset) + int(length)]))
            for name, (offset, length) in index["variables"].items()
        }
    except (zlib.error, KeyError, ValueError, TypeError) as e:
        raise DatasetError(f"cannot read the R data: {e}") from e


def _austen_deb() -> Path:
    env = os.environ.get(AUSTEN_ENV)
    if env:
        if not Path(env).is_file():
            raise DatasetError(f"{AUSTEN_ENV}={env} does not exist")
        return Path(env)
    folder = cache_dir("data")
    found = sorted(folder.glob("r-cran-janeaustenr_*.deb"))
    if found:
        return found[-1]
    hint = (
        "austen needs Debian's r-cran-janeaustenr package: run `apt-get download r-cran-janeaustenr` "
        f"and put the .deb in {folder} (or set {AUSTEN_ENV})"
    )
    if shutil.which("apt-get") is None:
        raise DatasetError(hint)
    log.info("fetching r-cran-janeaustenr with apt-get download (1.6 MB, once)")
    result = subprocess.run(
        ["apt-get", "download", "r-cran-janeaustenr"], cwd=folder, capture_output=True, text=True
    )
    found = sorted(folder.glob("r-cran-janeaustenr_*.deb"))
    if result.returncode != 0 or not found:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no package"]
        raise DatasetError(f"{hint} (apt-get download failed: {detail[0]}; `apt-get update` first may help)")
    return found[-1]


def _reflow(lines: list[str]) -> str:
    """The novels come as fixed-width lines; join lines into paragraphs, paragraphs by blank lines."""
    paragraphs, current = [], []
    for line in [*lines, ""]:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    return "\n\n".join(paragraphs)


def _austen_novels() -> dict[str, str]:
    cached = cache_dir("data") / "austen.json"
    if cached.is_file():
        return json.loads(cached.read_text(encoding="utf-8"))["novels"]
    if AUSTEN_SYSTEM.with_suffix(".rdb").is_file():
        rdx, rdb = (AUSTEN_SYSTEM.with_suffix(ext).read_bytes() for ext in (".rdx", ".rdb"))
    else:
        deb = _austen_deb()
        with deb_data_members(deb) as tar:
            try:
                rdx, rdb = (tar.extractfile(f"./{AUSTEN_RDB}{ext}").read() for ext in (".rdx", ".rdb"))
            except (KeyError, AttributeError) as e:
                raise DatasetError(f"{deb} does not hold {AUSTEN_RDB}.rdx/.rdb") from e
    novels = {name: _reflow([str(x) for x in lines]) for name, lines in read_r_lazyload(rdx, rdb).items()}
    missing = {AUSTEN_EVAL, *AUSTEN_CALIB} - set(novels)
    if missing:
        raise DatasetError(f"janeaustenr data lacks {', '.join(sorted(missing))}")
    with atomic_path(cached) as tmp:
        tmp.write_text(json.dumps({"novels": novels}), encoding="utf-8")
    return novels


def _austen(split: str, data_dir: str | Path | None) -> list[str]:
    novels = _austen_novels()
    names = {"evaluation": [AUSTEN_EVAL], "calibration": list(AUSTEN_CALIB)}
    names["all"] = names["evaluation"] + names["calibration"]
    return [novels[n] for n in names[split]]


# ---- dispatch ----------------------------------------------------------------------------------
DATASETS: dict[str, tuple[Callable[[str, str | Path | None], list[str]], str]] = {
    "wikitext2": (
        _wikitext2,
        "WikiText-2 raw (HF hub when online, or a local folder: --data-dir / $SMOOTHQUANT_WIKITEXT2_DIR)",
    ),
    "wiki-gensim": (
        _wiki_gensim,
        "106 Wikipedia articles from the gensim 4.4.0 wheel (fetched from PyPI once)",
    ),
    "austen": (
        _austen,
        "Jane Austen's novels from Debian r-cran-janeaustenr (evaluation: Pride and Prejudice)",
    ),
}


def load_documents(name: str, split: str, *, data_dir: str | Path | None = None) -> list[str]:
    """The documents of ``split`` of dataset ``name`` (a registered name, a file or a folder)."""
    _check_split(split)
    key = name.strip().lower().replace("_", "-")
    key = {"wikitext-2": "wikitext2", "wikitext": "wikitext2"}.get(key, key)
    if key in DATASETS:
        return DATASETS[key][0](split, data_dir)
    path = Path(name).expanduser()
    if path.is_dir():
        return _wikitext_dir_documents(path, split)
    if path.is_file():
        if path.suffix.lower() not in (".txt", ".jsonl", ".md", ".text"):
            raise DatasetError(f"{path}: text datasets are .txt or .jsonl files")
        return split_documents(_read_local_documents(path), split)
    raise DatasetError(
        f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}, a .txt/.jsonl file, or a folder "
        "holding test.txt and valid.txt"
    )


def check_source(name: str, *, data_dir: str | Path | None = None) -> None:
    """What can be checked about a calibration source before the model loads: a registered name,
    or a file/folder that exists and is readable text. Reads at most 64 KB of a file."""
    key = name.strip().lower().replace("_", "-")
    if {"wikitext-2": "wikitext2", "wikitext": "wikitext2"}.get(key, key) in DATASETS:
        return
    path = Path(name).expanduser()
    if path.is_dir():
        _wikitext_dir_documents_exist(path)
        return
    if not path.is_file():
        load_documents(name, "calibration", data_dir=data_dir)  # raises the "unknown dataset" error
    if path.suffix.lower() not in (".txt", ".jsonl", ".md", ".text"):
        raise DatasetError(f"{path}: text datasets are .txt or .jsonl files")
    try:
        with path.open("rb") as f:
            head = f.read(1 << 16)
    except OSError as e:
        raise DatasetError(
            f"cannot read the calibration file {path}: {e.strerror}; fix its permissions or pass another --calib"
        ) from e
    try:  # a character cut at the 64 KB boundary is not an error
        codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < 1 << 16)
    except UnicodeDecodeError as e:
        raise DatasetError(
            f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); pass a UTF-8 .txt or .jsonl file"
        ) from e
    if not head.strip():
        raise DatasetError(f"{path} holds no text; pass a non-empty .txt or .jsonl file")


def _wikitext_dir_documents_exist(root: Path) -> None:
    if not (root / "train.txt").is_file() and not (root / "valid.txt").is_file():
        raise DatasetError(
            f"{root} has no train.txt or valid.txt: a WikiText-style folder needs test.txt "
            "(evaluation) and train.txt or valid.txt (calibration)"
        )


def load_text(name: str, split: str = "evaluation", *, data_dir: str | Path | None = None) -> str:
    """The text of ``split``: its documents joined by blank lines (the reference protocol)."""
    return "\n\n".join(load_documents(name, split, data_dir=data_dir))
