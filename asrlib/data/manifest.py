"""JSONL manifests (NeMo's format): one utterance per line.

    {"audio_filepath": "audio/a.flac", "text": "seven three", "duration": 1.42}
    {"audio_filepath": "/data/b.wav", "text": "…", "duration": 3.0, "offset": 12.5}

``audio_filepath`` is relative to the manifest's own folder (absolute paths are kept),
``offset`` is optional: when present the line is a segment of the file,
[offset, offset + duration) (NeMo's convention); otherwise the whole file is the utterance
and ``duration`` is only used for bucketing and filtering. Other keys are ignored. Blank lines are
skipped. A UTF-8 byte-order mark (as some Windows editors write) is accepted.

A bad line (malformed JSON, a missing key, a duration that is not a positive number, an
empty text, an audio file that does not exist) is, in strict mode, a ``ManifestError``
naming ``manifest:line`` and what to do; in lenient mode (the training default) it is
skipped and counted in a ``ManifestReport``. Lines outside [min_duration, max_duration] are
dropped and counted in both modes: that is a filter, not an error.

Shapes: none (plain Python data).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

REQUIRED_KEYS = ("audio_filepath", "text", "duration")


class ManifestError(ValueError):
    """A manifest line (or file) is wrong; the message names manifest:line and the fix."""


@dataclass(frozen=True)
class ManifestEntry:
    audio_filepath: str  # absolute path of the audio file
    text: str
    duration: float  # seconds, as stated in the manifest
    offset: float = 0.0  # seconds into the audio file where the utterance starts
    manifest: str = ""  # the manifest this line came from
    line: int = 0  # 1-based line number in that manifest
    segment: bool = False  # the line has an "offset": read only [offset, offset + duration)

    @property
    def where(self) -> str:
        return f"{self.manifest}:{self.line}"

    @property
    def span(self) -> tuple[float, float | None]:
        """(offset, seconds to read) for ``load_audio``: a line with an ``offset`` key is the
        segment [offset, offset + duration); any other line is the whole file (its stated
        duration may be wrong, and the audio decides). The one rule every reader uses."""
        return self.offset, (self.duration if self.segment else None)


@dataclass
class ManifestReport:
    """What reading produced: lines kept, and lines dropped per reason (with a first example)."""

    kept: int = 0
    kept_seconds: float = 0.0
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    first: dict = field(default_factory=dict)  # reason -> "manifest:line" of its first case

    @property
    def total_dropped(self) -> int:
        return sum(self.dropped.values())

    def drop(self, reason: str, where: str) -> None:
        self.dropped[reason] += 1
        self.first.setdefault(reason, where)

    def summary(self) -> str:
        """One line, e.g. ``kept 98 lines (0.12 h); dropped 2: 1 empty text (a.jsonl:7), …``."""
        text = f"kept {self.kept} lines ({self.kept_seconds / 3600:.2f} h)"
        if not self.dropped:
            return text + "; dropped none"
        parts = [f"{n} {reason} (first at {self.first[reason]})" for reason, n in self.dropped.most_common()]
        return f"{text}; dropped {self.total_dropped}: " + ", ".join(parts)


class BadLine(Exception):
    """Internal: one line is unusable. ``reason`` is a short category, ``detail`` the message."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def resolve_audio_path(audio_filepath: str, manifest: Path) -> str:
    """Relative paths are relative to the manifest's folder; absolute ones are kept."""
    p = Path(audio_filepath).expanduser()
    return os.path.normpath(p if p.is_absolute() else (manifest.resolve().parent / p))


def _number(obj: dict, key: str, default: float | None = None) -> float:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadLine(f"bad {key}", f"'{key}' must be a number of seconds, got {value!r}")
    if value < 0:
        raise BadLine(f"bad {key}", f"'{key}' must not be negative, got {value!r}")
    return float(value)


def parse_line(raw: str, manifest: Path, line: int, check_audio: bool = True, need_text: bool = True) -> ManifestEntry:
    """One non-blank JSONL line -> ``ManifestEntry``; raises ``BadLine`` when unusable.
    ``need_text`` False (noise recordings): a missing or empty ``text`` reads as ""."""
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        raise BadLine("malformed JSON", f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise BadLine("malformed JSON", f"expected a JSON object {{...}}, got {type(obj).__name__}")
    if not need_text:
        obj.setdefault("text", "")
    for key in REQUIRED_KEYS:
        if key not in obj:
            raise BadLine(f"missing '{key}'", f"missing key '{key}' (each line needs {', '.join(REQUIRED_KEYS)})")
    duration = _number(obj, "duration")
    if duration == 0:
        raise BadLine("bad duration", "'duration' must be a positive number of seconds, got 0")
    offset = _number(obj, "offset", 0.0)
    text = obj["text"]
    if not isinstance(text, str):
        raise BadLine("bad text", f"'text' must be a string, got {text!r}")
    if need_text and not text.strip():
        raise BadLine("empty text", "'text' is empty")
    path = obj["audio_filepath"]
    if not isinstance(path, str) or not path:
        raise BadLine("bad audio_filepath", f"'audio_filepath' must be a non-empty string, got {path!r}")
    resolved = resolve_audio_path(path, manifest)
    if check_audio and not os.path.isfile(resolved):
        raise BadLine("audio file not found", f"audio file not found: {resolved} (relative paths are read from the manifest's folder)")
    return ManifestEntry(resolved, text, duration, offset, str(manifest), line, segment="offset" in obj)


def iter_lines(manifest: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every non-blank line; a missing file is a ``ManifestError``."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise ManifestError(f"manifest not found: {manifest}")
    try:
        with open(manifest, encoding="utf-8-sig") as f:  # a byte-order mark is not part of line 1
            for number, raw in enumerate(f, start=1):
                if raw.strip():
                    yield number, raw
    except UnicodeDecodeError as e:
        raise ManifestError(f"{manifest}: not UTF-8 text ({e}); manifests must be UTF-8 JSONL") from None


def read_manifest(
    manifests: str | Path | Sequence[str | Path],
    strict: bool = False,
    min_duration: float | None = None,
    max_duration: float | None = None,
    check_audio: bool = True,
    need_text: bool = True,
) -> tuple[list[ManifestEntry], ManifestReport]:
    """Read one or several manifests -> (entries in file order, report of what was dropped).

    strict: a bad line raises ``ManifestError``; otherwise it is skipped and counted.
    check_audio: False skips the existence check (e.g. reading only the texts).
    need_text: False accepts lines without text (noise recordings: ``asrlib/data/noise.py``).
    """
    if isinstance(manifests, (str, Path)):
        manifests = [manifests]
    if not manifests:
        raise ManifestError("no manifest given: pass at least one JSONL manifest path")
    entries: list[ManifestEntry] = []
    report = ManifestReport()
    for manifest in map(Path, manifests):
        for number, raw in iter_lines(manifest):
            where = f"{manifest}:{number}"
            try:
                entry = parse_line(raw, manifest, number, check_audio, need_text)
            except BadLine as bad:
                if strict:
                    raise ManifestError(f"{where}: {bad.detail}. Fix or delete this line, or train with strict = false to skip bad lines.") from None
                report.drop(bad.reason, where)
                continue
            if min_duration is not None and entry.duration < min_duration:
                report.drop(f"shorter than min_duration {min_duration:g} s", where)
            elif max_duration is not None and entry.duration > max_duration:
                report.drop(f"longer than max_duration {max_duration:g} s", where)
            else:
                entries.append(entry)
                report.kept += 1
                report.kept_seconds += entry.duration
    return entries, report


def write_manifest(path: str | Path, rows: Iterable[dict], force: bool = False) -> Path:
    """Write ``rows`` as JSONL (UTF-8, one object a line), atomically.

    ``audio_filepath`` values that are absolute are rewritten relative to the manifest's folder.
    An existing file is never overwritten unless ``force``.
    """
    path = Path(path)
    if path.exists() and not force:
        raise ManifestError(f"{path} already exists; refusing to overwrite it (pass --force to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.resolve().parent
    fd, tmp = tempfile.mkstemp(dir=base, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                row = dict(row)
                audio = Path(row["audio_filepath"])
                if audio.is_absolute():
                    row["audio_filepath"] = Path(os.path.relpath(audio, base)).as_posix()
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
