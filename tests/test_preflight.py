"""Bad input is caught before the expensive work, with one line that names the problem and the fix.

Each check is tested where it lives and, where ``smoothquant quantize`` reaches it, through the
CLI: exit code 2, one line on stderr, no traceback, nothing in the output location, the source
untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import smoothquant as sq
from smoothquant.cli import main
from smoothquant.errors import ArgumentError, CalibrationError, DatasetError, ExportError, ModelLoadError
from smoothquant.export import atomic
from smoothquant.preflight import check_quantize, check_seq_len
from smoothquant.tmpdirs import leftovers
from test_cli_quantize import tiny_checkpoint  # noqa: F401  (the fixture)
from tiny_models import tiny_batches, tiny_model


def _dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)


def _cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err
    return code, err


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    # progress bars (carriage-return lines) may come first; then the error, one line
    lines = [line for line in err.split("\n") if line and "\r" not in line]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("smoothquant: error: "), err
    last = lines[0]
    for needle in needles:
        assert needle in last, err


def _tree(path):
    return sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*"))


# ---- output location --------------------------------------------------------------------------
def test_output_under_a_file_says_it_is_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ExportError, match=r"afile is a file, not a directory"):
        atomic.check_output(tmp_path / "afile" / "sub", force=False)
    with pytest.raises(ExportError, match=r"does not exist; create it first \(mkdir -p"):
        atomic.check_output(tmp_path / "missing" / "sub", force=False)


def test_unwritable_output_location():
    with pytest.raises(ExportError, match=r"cannot write in /proc: .*choose a writable output directory"):
        atomic.check_output(atomic.Path("/proc/x"), force=False)


@pytest.mark.parametrize("where", ["afile/sub", "/proc/x"])
def test_cli_refuses_a_bad_output_location_before_loading(tmp_path, capsys, monkeypatch, where):
    (tmp_path / "afile").write_text("x")
    monkeypatch.chdir(tmp_path)
    loads = []
    monkeypatch.setattr("smoothquant.models.load.load_model", lambda *a, **k: loads.append(a))
    code, err = _cli(["quantize", "smollm2-135m", "-o", where], capsys)
    _one_line_error(code, err, "is a file" if where == "afile/sub" else "cannot write in /proc")
    assert loads == [] and (tmp_path / "afile").read_text() == "x"


# ---- stale temporaries ------------------------------------------------------------------------
def test_stale_temporaries_of_dead_runs_are_removed_live_and_unknown_kept(tmp_path, caplog):
    target = tmp_path / "out"
    dead = tmp_path / f".out.tmp-{_dead_pid()}-abc123"
    (dead / "big").mkdir(parents=True)
    old = tmp_path / f".out.old-{_dead_pid()}-1234abcd"
    old.mkdir()
    live = tmp_path / f".out.tmp-{os.getpid()}-def456"
    live.mkdir()
    unknown = tmp_path / ".out.tmp-q1w2e3r4"  # an older version's name: no pid
    unknown.mkdir()
    other = tmp_path / f".other.tmp-{_dead_pid()}-abc123"  # another target's: not ours to judge
    other.mkdir()
    assert leftovers(target) == (sorted([dead, old]), [unknown])
    atomic.check_output(target, force=False)
    assert not dead.exists() and not old.exists()
    assert live.is_dir() and unknown.is_dir() and other.is_dir()
    assert "q1w2e3r4" in caplog.text and "delete it if no other smoothquant run" in caplog.text


def test_a_run_killed_during_save_is_cleaned_up_by_the_next(tmp_path):
    """The real thing: a process dies inside ``atomic_directory`` (SIGKILL: no cleanup runs)."""
    script = (
        "import os, sys\n"
        "from smoothquant.export.atomic import atomic_directory\n"
        "with atomic_directory(sys.argv[1], force=False, needed_bytes=0) as tmp:\n"
        "    (tmp / 'model.safetensors').write_bytes(b'x' * 1000)\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "out")], env=env)
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(".out.tmp-")
    with atomic.atomic_directory(tmp_path / "out", force=False, needed_bytes=0) as tmp:
        (tmp / "done").write_text("ok")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# ---- model sources, calibration source, sequence length ---------------------------------------


@pytest.fixture
def model_copy(tiny_checkpoint, tmp_path):  # noqa: F811
    import shutil

    shutil.copytree(tiny_checkpoint / "model", tmp_path / "src")
    return tmp_path / "src"


def _quantize_cli(source, out, capsys, *extra):
    calib = str(out.parent / "calib.txt") if (out.parent / "calib.txt").exists() else None
    args = ["quantize", str(source), "-o", str(out), "--num-samples", "2", "--seq-len", "32"]
    return _cli([*args, *(["--calib", calib] if calib else []), *extra], capsys)


def _refused(code, err, out, source_before, source, *needles):
    _one_line_error(code, err, *needles)
    assert not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert _tree(source) == source_before


def _calib(tmp_path, tiny_checkpoint):  # noqa: F811
    import shutil

    shutil.copy(tiny_checkpoint / "calib.txt", tmp_path / "calib.txt")


def test_truncated_safetensors_is_one_line_naming_the_file(model_copy, tmp_path, tiny_checkpoint, capsys):  # noqa: F811
    _calib(tmp_path, tiny_checkpoint)
    weights = model_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    before = _tree(model_copy)
    with pytest.raises(ModelLoadError, match=r"model\.safetensors is truncated: .*re-download"):
        check_quantize(str(model_copy), tmp_path / "out", "wiki-gensim", 512)
    code, err = _quantize_cli(model_copy, tmp_path / "out", capsys)
    _refused(code, err, tmp_path / "out", before, model_copy, str(weights), "truncated")
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(ModelLoadError, match=r"corrupt safetensors header"):
        check_quantize(str(model_copy), tmp_path / "out", "wiki-gensim", 512)


def test_already_quantized_folder_is_refused(tiny_checkpoint, tmp_path, capsys):  # noqa: F811
    _calib(tmp_path, tiny_checkpoint)
    code, err = _quantize_cli(tiny_checkpoint / "model", tmp_path / "q", capsys)
    assert code == 0, err
    before = _tree(tmp_path / "q")
    with pytest.raises(ModelLoadError, match=r"already quantized \(compressed-tensors"):
        check_quantize(str(tmp_path / "q"), tmp_path / "again", "wiki-gensim", 512)
    code, err = _quantize_cli(tmp_path / "q", tmp_path / "again", capsys)
    _refused(
        code, err, tmp_path / "again", before, tmp_path / "q", "is already quantized", "original float model"
    )


def test_nan_weights_in_a_float32_model_are_named_as_such(model_copy, tmp_path, tiny_checkpoint, capsys):  # noqa: F811
    from safetensors.torch import load_file, save_file

    _calib(tmp_path, tiny_checkpoint)
    weights = model_copy / "model.safetensors"
    tensors = load_file(weights)
    name = "model.layers.0.mlp.up_proj.weight"
    tensors[name][3, 5] = float("nan")
    save_file(tensors, weights, metadata={"format": "pt"})
    before = _tree(model_copy)
    code, err = _quantize_cli(model_copy, tmp_path / "out", capsys)
    _refused(code, err, tmp_path / "out", before, model_copy, "hold NaN/inf values", name, "re-download")
    assert "float16" not in err
    # the library path says the same, not "overflowed ... rather than float16"
    model = tiny_model("llama", dtype=torch.float32)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[3, 5] = float("nan")
    with pytest.raises(
        CalibrationError, match=r"weights hold NaN/inf \(model\.layers\.0\.mlp\.up_proj\.weight"
    ):
        sq.calibrate(model, tiny_batches(), progress=False)


def test_truncated_gguf_is_one_line_naming_the_file(tmp_path, capsys):
    from test_models import _tiny_gguf

    data = _tiny_gguf(tmp_path / "whole.gguf")
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) - 2000])
    with pytest.raises(ModelLoadError, match=r"cut\.gguf is truncated"):
        check_quantize(str(tmp_path / "cut.gguf"), tmp_path / "out", "wiki-gensim", 512)
    code, err = _cli(["quantize", str(tmp_path / "cut.gguf"), "-o", str(tmp_path / "out")], capsys)
    _one_line_error(code, err, "cut.gguf is truncated", "re-download")
    assert not (tmp_path / "out").exists()


def test_hub_id_while_offline_is_one_line(tmp_path, capsys, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise OSError(-2, "Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(ModelLoadError, match="is unreachable"):
        check_quantize("someone/some-model", tmp_path / "out", "wiki-gensim", 512)
    code, err = _cli(["quantize", "someone/some-model", "-o", str(tmp_path / "out")], capsys)
    _one_line_error(
        code, err, "hub (https://huggingface.co) is unreachable", "pass a local checkpoint folder"
    )
    assert not (tmp_path / "out").exists()


def test_unreadable_calibration_file(tmp_path):
    unreadable = tmp_path / "calib.txt"
    unreadable.symlink_to("/proc/self/mem")  # unreadable at offset 0, even for root
    with pytest.raises(
        DatasetError, match=r"cannot read the calibration file .*calib\.txt: .*pass another --calib"
    ):
        check_quantize("smollm2-135m", tmp_path / "out", str(unreadable), 512)
    with pytest.raises(DatasetError, match=r"unknown dataset"):
        check_quantize("smollm2-135m", tmp_path / "out", str(tmp_path / "missing.txt"), 512)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(DatasetError, match="is not UTF-8 text"):
        check_quantize("smollm2-135m", tmp_path / "out", str(tmp_path / "latin1.txt"), 512)


def test_cli_checks_the_calibration_file_before_loading(tmp_path, capsys, monkeypatch):
    (tmp_path / "calib.txt").symlink_to("/proc/self/mem")
    loads = []
    monkeypatch.setattr("smoothquant.models.load.load_model", lambda *a, **k: loads.append(a))
    code, err = _cli(
        ["quantize", "smollm2-135m", "-o", str(tmp_path / "out"), "--calib", str(tmp_path / "calib.txt")],
        capsys,
    )
    _one_line_error(code, err, "cannot read the calibration file")
    assert loads == []


def test_seq_len_beyond_the_model_positions(model_copy, tmp_path, tiny_checkpoint, capsys):  # noqa: F811
    import json

    from test_cli_quantize import WORDS

    words = (WORDS * (30000 // len(WORDS) + 1))[:30000]  # a calibration tenth longer than the positions
    (tmp_path / "calib.txt").write_text("\n\n".join(" ".join(words[i : i + 60]) for i in range(0, 30000, 60)))
    positions = json.loads((model_copy / "config.json").read_text())["max_position_embeddings"]
    with pytest.raises(
        ArgumentError, match=rf"--seq-len {positions + 1} is longer than .* {positions} positions"
    ):
        check_quantize(str(model_copy), tmp_path / "out", str(tmp_path / "calib.txt"), positions + 1)
    with pytest.raises(ArgumentError, match=r"far longer than calibration needs.*use --seq-len 512"):
        check_seq_len(100000, None, "m")
    # the CLI refuses it in its pre-flight checks, before loading the model
    before = _tree(model_copy)
    code, err = _quantize_cli(
        model_copy, tmp_path / "out", capsys, "--seq-len", str(positions + 1), "--num-samples", "1"
    )
    _refused(
        code,
        err,
        tmp_path / "out",
        before,
        model_copy,
        f"--seq-len {positions + 1} is longer than",
        f"{positions} positions",
    )


def test_a_window_longer_than_the_calibration_text_does_not_advise_fewer_samples(tiny_checkpoint):  # noqa: F811
    from transformers import AutoTokenizer

    from smoothquant.data import calibration_batches

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint / "model")
    with pytest.raises(DatasetError, match=r"less than one window of 100000: use --seq-len \d+ or less") as e:
        calibration_batches(tokenizer, str(tiny_checkpoint / "calib.txt"), num_samples=1, seq_len=100000)
    assert "fewer samples" not in str(e.value) and "--num-samples" not in str(e.value)


# ---- free space -------------------------------------------------------------------------------
def test_free_space_against_the_estimate(model_copy, tmp_path, tiny_checkpoint, capsys, monkeypatch):  # noqa: F811
    import shutil
    from collections import namedtuple

    from smoothquant.errors import DiskSpaceError
    from smoothquant.preflight import estimate_checkpoint_bytes

    _calib(tmp_path, tiny_checkpoint)
    calib = str(tmp_path / "calib.txt")
    # the estimate matches what quantize writes (its tensors; config and tokenizer come on top)
    code, err = _quantize_cli(model_copy, tmp_path / "done", capsys)
    assert code == 0, err
    written = sum(p.stat().st_size for p in (tmp_path / "done").glob("*.safetensors"))
    estimate = estimate_checkpoint_bytes(str(model_copy))
    assert 0.97 * written <= estimate <= written
    assert estimate_checkpoint_bytes(str(model_copy), 2) < estimate  # bfloat16 leftovers
    usage = namedtuple("usage", "total used free")
    margin = atomic.SPACE_MARGIN_BYTES + int(estimate * atomic.SPACE_MARGIN_FRACTION)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**40, 2**40, estimate + margin - 1))
    before = _tree(model_copy)
    with pytest.raises(
        DiskSpaceError, match=r"not enough free space in .*: the checkpoint needs about \d+ MiB"
    ):
        check_quantize(str(model_copy), tmp_path / "out", calib, 32)
    assert not (tmp_path / "out").exists() and _tree(model_copy) == before
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**40, 0, estimate + margin))
    check_quantize(str(model_copy), tmp_path / "out", calib, 32)  # just enough
