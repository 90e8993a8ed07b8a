"""Ctrl-C: a clean exit within about a second (status 130, one line on stderr, nothing half-written
left), whether the main thread stops by itself or is stuck in one long operation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from test_cli_eval import checkpoint, text_file  # noqa: F401  (the fixtures)

SRC = str(Path(__file__).resolve().parents[1] / "src")

# the demo's real forward passes, made endless (evaluation) or stopped inside the final write
DEMO_DRIVER = """
import sys, time
from smoothquant.evaluation import demo, plots
where = sys.argv.pop(1)
if where == "evaluation":
    real = demo.run
    def endless(*args, **kwargs):
        print("evaluation", flush=True)
        while True:
            real(*args, **kwargs)
    demo.run = endless
else:
    def stuck(path, *args, **kwargs):
        open(path, "wb").write(b"half a figure")
        print("writing", flush=True)
        time.sleep(60)
    plots.plot_alpha_sweep = stuck
demo.SHORT = demo.Mode("short", demo.Size(2, 32, 2, 64, (0.5,), 1), demo.SHORT.rows, searched=False)
from smoothquant.cli import main
raise SystemExit(main())
"""

# one operation that ignores SIGINT for a minute: the main thread blocks the signal, as a long
# torch kernel effectively does (it runs without the GIL and the interpreter cannot stop it)
STUCK_DRIVER = """
import signal, sys, time
from pathlib import Path
from smoothquant import interrupt
from smoothquant.tmpdirs import temp_name
assert interrupt.install()
target = Path(sys.argv[1])
tmp = temp_name(target, "tmp", "x")
tmp.mkdir()
(tmp / "model.safetensors").write_bytes(b"0" * 1000)
temp_name(target, "old", "y").mkdir()  # a previous output being replaced: never removed
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
print("stuck", flush=True)
time.sleep(60)
"""


def _interrupt(code: str, args: list[str], ready: str, cwd: Path) -> tuple[int, str, float]:
    env = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = threading.Timer(120, proc.kill)  # a run that never gets ready fails, never hangs
    deadline.start()
    try:
        for line in proc.stdout:
            if line.decode().strip() == ready:
                break
        else:
            pytest.fail(f"never got to {ready!r}: {proc.wait()} {proc.stderr.read().decode()}")
        time.sleep(0.3)
        sent = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
        return code, proc.stderr.read().decode(), time.perf_counter() - sent
    finally:
        deadline.cancel()
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("where", ["evaluation", "writing"])
def test_ctrl_c_stops_the_demo_cleanly(checkpoint, text_file, tmp_path, where):  # noqa: F811
    out = tmp_path / "demo"
    args = [where, "demo", "--model", str(checkpoint), "--data", str(text_file), "--out", str(out)]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, err, seconds = _interrupt(DEMO_DRIVER, [*args, "--no-progress"], where, tmp_path)
    assert code == 130 and err == "smoothquant: interrupted\n", err
    assert seconds < 2.5
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no demo folder, no temporaries


def test_ctrl_c_inside_one_long_operation_exits_within_a_second(tmp_path):
    code, err, seconds = _interrupt(STUCK_DRIVER, [str(tmp_path / "out")], "stuck", tmp_path)
    assert code == 130 and err == "smoothquant: interrupted\n", err
    assert seconds < 2.5  # grace (0.75 s) + clean-up; the operation itself had 60 s to go
    left = [p.name for p in tmp_path.iterdir()]  # the one being written is gone, not the old output
    assert len(left) == 1 and left[0].startswith(".out.old-"), left
