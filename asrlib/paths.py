"""Where the repository's own files are: the one way notebooks, benches and demos find them.

asrlib is installed editable from its checkout (``make setup``), so the repository is the
folder above the package. ``repo_path("data_samples", "an4")`` names a file in it and says
clearly when asrlib runs from somewhere without the checkout (e.g. a wheel).
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def repo_path(*parts: str) -> Path:
    """``REPO / parts``, which must exist."""
    path = REPO.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: asrlib is not running from its source checkout "
                                "(install it with `make setup` or `pip install -e .` in the repository)")
    return path
