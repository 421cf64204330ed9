"""The run folder (``trainer.output_dir``): never mix two runs, never lose one, fail early.

- A *new* run (no ``--resume``) into a folder that already holds a run (checkpoints,
  best_model, metrics, tensorboard) is refused: continue it with ``--resume auto``, or pass
  ``--force`` to start afresh there, which first moves the earlier run's files into
  ``<output_dir>/earlier-runs/<timestamp>/`` (nothing is deleted).
- The folder must be writable and have room for the checkpoints the run keeps; both are
  checked at setup, before any training, and reported as one line naming the folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from asrlib.errors import UsageError

RUN_FILES = ("checkpoints", "best_model", "metrics.jsonl", "tensorboard", "metrics.json", "curves.png")
ARCHIVE = "earlier-runs"


def earlier_run(out: Path) -> list[str]:
    """Names of the run files already in ``out`` (empty when it holds no run)."""
    found = []
    for name in RUN_FILES:
        p = out / name
        if p.is_file() or (p.is_dir() and any(p.iterdir())):
            found.append(name)
    return found


def claim_output_dir(out: Path, resume: str, force: bool, log=print, move: bool = True) -> Path | None:
    """Refuse (or, with ``force``, archive) an earlier run in ``out``; returns the archive folder."""
    found = earlier_run(out)
    if not found or resume:
        return None
    if not force:
        raise UsageError(f"{out} already holds a run ({', '.join(found)}); continue it with --resume auto, "
                         f"pick another trainer.output_dir, or pass --force to move it to {out / ARCHIVE}/ "
                         "and start a new run")
    dest = out / ARCHIVE / time.strftime("%Y%m%d-%H%M%S")
    n = 1
    while dest.exists():
        n += 1
        dest = dest.with_name(f"{dest.name.split('.')[0]}.{n}")
    if move:
        dest.mkdir(parents=True)
        for name in found:
            os.replace(out / name, dest / name)
        log(f"--force: moved the earlier run's {', '.join(found)} to {dest}")
    return dest


def check_writable(out: Path) -> None:
    """Create ``out`` and write a probe file there; an OSError becomes a one-line UsageError."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise UsageError(f"cannot write to the output folder {out}: {e.strerror or e}; "
                         "fix its permissions or choose another trainer.output_dir") from None


def check_free_space(out: Path, bytes_needed: int) -> None:
    """Refuse to start when the disk under ``out`` has less than ``bytes_needed`` free."""
    free = shutil.disk_usage(out).free
    if free < bytes_needed:
        raise UsageError(f"the output folder {out} has {free / 2**20:.1f} MiB free, but this run's checkpoints "
                         f"need about {bytes_needed / 2**20:.1f} MiB; free some space or choose another "
                         "trainer.output_dir")


def checkpoint_bytes(model, keep_last: int) -> int:
    """Rough disk need: (keep_last + best + one being written) x (weights + two Adam moments)."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return 3 * weights * (max(keep_last, 1) + 2)
