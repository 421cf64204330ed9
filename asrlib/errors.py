"""User mistakes: one exception type and the one-line, exit-status-2 report every command uses.

A ``UsageError`` is something the user can fix (a path, a flag, a folder that already holds
work). ``report_usage_errors`` turns it into ``asrlib <command>: error: <message>`` on stderr
and exit status 2 (argparse's convention), with no traceback. ``asrlib --debug COMMAND …`` (or
``ASRLIB_DEBUG=1``) lets the exception through, traceback and all. A program bug is never
caught here: it shows its traceback.
"""

from __future__ import annotations

import os
import sys
from functools import wraps
from pathlib import Path


class UsageError(Exception):
    """What was wrong, where, and what to do, in one line."""


def report_usage_errors(command: str, *more: type[BaseException], prog: str | None = None):
    """Decorate a ``main(argv) -> int``: ``UsageError`` (and ``more``) -> one line, status 2.

    The line starts ``asrlib <command>: error:``, or ``<prog>: error:`` for a program that is
    not an ``asrlib`` subcommand (``python -m asrlib.demo``)."""
    caught = (UsageError, *more)
    prefix = prog or f"asrlib {command}"

    def wrap(main):
        @wraps(main)
        def run(argv=None) -> int:
            try:
                return main(argv)
            except caught as e:
                if os.environ.get("ASRLIB_DEBUG"):
                    raise
                print(f"{prefix}: error: {one_line(e)}", file=sys.stderr, flush=True)
                return 2

        return run

    return wrap


def one_line(e: BaseException) -> str:
    """The first line of ``e``'s message; for an error raised in a DataLoader worker, which
    PyTorch re-raises in the main process as "Caught X in DataLoader worker process N." with
    the worker's traceback below, the worker's own message (the traceback's last line)."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    if lines[0].startswith("Caught ") and "DataLoader worker" in lines[0] and len(lines) > 1:
        kind, _, message = lines[-1].partition(": ")
        if kind.split(".")[-1] == type(e).__name__ and message:
            return message
    return lines[0]


def refuse_existing_file(path, force: bool, inputs=(), flag: str = "--json") -> None:
    """Refuse to write ``path`` when it exists (unless ``force``) or is one of ``inputs`` (always)."""
    path = Path(path)
    for given in inputs:
        if Path(given).exists() and path.exists() and path.resolve() == Path(given).resolve():
            raise UsageError(f"{flag} {path} is one of this command's inputs; choose another file for the report")
    if path.exists() and not force:
        raise UsageError(f"{flag} {path} already exists; refusing to overwrite it "
                         "(choose another file or pass --force)")


def refuse_nonempty_folder(out, force: bool, flag: str = "--out") -> None:
    """Refuse to write into ``out`` when it is a file, or a folder that holds anything (unless ``force``)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {out} is a file, not a folder; choose a new folder")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not force:
        shown = ", ".join(held[:4]) + (", …" if len(held) > 4 else "")
        raise UsageError(f"{flag} {out} already holds files ({shown}); choose a new or empty folder, "
                         "or pass --force to overwrite them")
