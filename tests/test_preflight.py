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

from smoothquant.cli import main
from smoothquant.errors import ExportError
from smoothquant.export import atomic
from smoothquant.tmpdirs import leftovers


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
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("smoothquant: error: "), err
    for needle in needles:
        assert needle in err, err


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
