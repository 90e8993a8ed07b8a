"""The developer guide's rules on the top floors, checked on the source: top-floor functions fit
on a screen, and no package imports one that sits above it (data flows one way)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "smoothquant"
MAX_LINES = 60
# the drivers, the checkpoint writer, the command line and the experiments it runs
TOP_FLOORS = [
    "pipeline.py",
    "oneshot.py",
    "recipe.py",
    "preflight.py",
    "layerwise",
    "export",
    "cli",
    "evaluation/runner.py",
    "evaluation/demo.py",
]
# the floors, lowest first: a package must not import one after it (at module level or inside a
# function); data flows model -> statistics -> smoothing -> quantized model -> checkpoint
FLOORS = [
    "families",
    "calibration",
    "quantization",
    "smoothing",
    "search",
    "export",
    "layerwise",
    "pipeline",
    "oneshot",
    "evaluation",
    "cli",
]
ABOVE = {p: FLOORS[i + 1 :] for i, p in enumerate(FLOORS[:-1])}


def _files(parts: list[str]) -> list[Path]:
    out = []
    for part in parts:
        path = SRC / part
        out += (
            sorted(path.rglob("*.py"))
            if path.is_dir()
            else [path if path.suffix else path.with_suffix(".py")]
        )
    return out


def _imports(path: Path) -> set[str]:
    """Every smoothquant module ``path`` imports, wherever the import statement is."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "smoothquant":
                found |= {f"smoothquant.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m == "smoothquant" or m.startswith("smoothquant.")}


def test_top_floor_functions_fit_on_a_screen() -> None:
    long = []
    for path in _files(TOP_FLOORS):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


@pytest.mark.parametrize("package", sorted(ABOVE))
def test_no_import_from_a_package_above(package: str) -> None:
    upward = []
    for path in _files([package]):
        for module in _imports(path):
            top = module.split(".")[1] if "." in module else ""
            if module == "smoothquant" or top in ABOVE[package]:
                upward.append(f"{path.relative_to(SRC)} imports {module}")
    assert upward == []


def test_the_checks_can_fail(tmp_path) -> None:
    """The import scan sees imports inside functions too (lazy ones are still dependencies)."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "def f():\n    from smoothquant.pipeline import quantize_model\n    import smoothquant\n"
    )
    assert _imports(probe) == {"smoothquant.pipeline", "smoothquant"}
