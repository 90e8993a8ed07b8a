"""Importing the package, and ``smoothquant --help``, must not pay for torch or transformers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")
HEAVY = ("torch", "transformers", "numpy", "safetensors")


def _loaded_after(code: str) -> list[str]:
    probe = f"{code}\nimport sys\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_import_smoothquant_is_light():
    assert _loaded_after("import smoothquant; assert smoothquant.__version__") == []


def test_help_builds_without_heavy_imports():
    code = """
import contextlib, io
from smoothquant.cli import build_parser
parser = build_parser()
for command in ("quantize", "eval", "demo", "bench"):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        parser.parse_args([command, "--help"])
"""
    assert _loaded_after(code) == []


def test_public_names_resolve_on_first_use():
    import smoothquant as sq

    missing = [name for name in sq.__all__ if getattr(sq, name, None) is None]
    assert missing == []
    assert sq.load_stats.__func__ is sq.ActStats.load.__func__
    assert set(sq.__all__) <= set(dir(sq))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sq.nope  # noqa: B018
