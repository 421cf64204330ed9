"""environment.yml and the Makefile agree with pyproject.toml (extras, Python version)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

yaml = pytest.importorskip("yaml")
specifiers = pytest.importorskip("packaging.specifiers")

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
ENV = yaml.safe_load((REPO / "environment.yml").read_text(encoding="utf-8"))


def conda_deps() -> list[str]:
    return [d for d in ENV["dependencies"] if isinstance(d, str)]


def pip_lines() -> list[str]:
    return [line for d in ENV["dependencies"] if isinstance(d, dict) for line in d.get("pip", [])]


def extras_in(text: str) -> list[str]:
    """'-e .[notebooks,onnx]' -> ['notebooks', 'onnx']"""
    m = re.search(r"\.\[([^\]]*)\]", text)
    return [e.strip() for e in m.group(1).split(",") if e.strip()] if m else []


def test_environment_installs_this_package_with_known_extras():
    lines = [l for l in pip_lines() if re.match(r"(-e\s+)?\.(\[|$)", l.strip())]
    assert lines, "environment.yml must pip-install the package itself (-e .[extras])"
    known = set(PYPROJECT["project"]["optional-dependencies"])
    for line in lines:
        missing = set(extras_in(line)) - known
        assert not missing, f"environment.yml asks for extras {missing} that pyproject.toml does not define"


def test_environment_python_satisfies_requires_python():
    spec = specifiers.SpecifierSet(PYPROJECT["project"]["requires-python"])
    pins = [d for d in conda_deps() if re.match(r"python\s*[=<>]", d)]
    assert len(pins) == 1, f"environment.yml should pin python once, found {pins}"
    version = re.sub(r"^python\s*=*\s*", "", pins[0]).rstrip(".*")
    assert spec.contains(version), f"environment.yml python {version} is outside requires-python {spec}"


def test_makefile_extras_exist():
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    m = re.search(r"^EXTRAS\s*\?=\s*(\S+)", text, flags=re.M)
    assert m, "Makefile should define EXTRAS"
    missing = {e for e in m.group(1).split(",") if e} - set(PYPROJECT["project"]["optional-dependencies"])
    assert not missing, f"Makefile EXTRAS {missing} not in pyproject.toml"


def test_environment_does_not_duplicate_pip_torch_pin():
    # torch comes from conda (pytorch channel); the pip line must not pull a second copy by name
    assert not any(re.match(r"torch\b", l) for l in pip_lines())


def test_repo_path_finds_the_checkout_and_explains_a_missing_file():
    from asrlib.paths import REPO, repo_path

    assert (REPO / "pyproject.toml").is_file() and (REPO / "asrlib" / "paths.py").is_file()
    assert repo_path("data_samples", "an4", "train.jsonl").is_file()
    with pytest.raises(FileNotFoundError, match="source checkout"):
        repo_path("no", "such", "file")
