"""The notebooks read as a course on a code host: saved with their figures, no saved error,
light enough to browse, thin on logic, and all locating the repository the same way.

``make notebooks`` re-executes them in place; ``make test`` runs them under nbval.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
SIZE_LIMIT = 5 * 2**20  # all notebooks together


def cells(path: Path, kind: str) -> list[dict]:
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == kind]


def test_there_are_six_numbered_notebooks_under_the_size_limit():
    assert [p.name[:3] for p in NOTEBOOKS] == ["01_", "02_", "03_", "04_", "05_", "06_"]
    total = sum(p.stat().st_size for p in NOTEBOOKS)
    assert total < SIZE_LIMIT, f"notebooks take {total / 2**20:.1f} MiB; keep figures small (limit 5 MiB)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_saved_with_a_figure_and_no_error(path):
    outputs = [o for c in cells(path, "code") for o in c.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name}: no saved figure (run make notebooks)"
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: a saved output is an error: {errors[0].get('ename')}"
    assert all(c.get("execution_count") for c in cells(path, "code")), f"{path.name}: a code cell was never run"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_thin_on_logic_and_one_way_to_the_repository(path):
    source = "\n".join("".join(c["source"]) for c in cells(path, "code"))
    tree = ast.parse("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))))
    defined = [n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert not defined, f"{path.name} defines {defined}: move reusable code into asrlib, with a test"
    assert "from asrlib.paths import REPO" in source, f"{path.name}: locate the repository with asrlib.paths.REPO"
    assert "Path.cwd()" not in source and "__file__" not in source
    words = sum(len("".join(c["source"]).split()) for c in cells(path, "markdown"))
    assert words >= 500, f"{path.name}: {words} words of explanation"
