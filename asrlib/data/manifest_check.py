"""``asrlib manifest check M [M2 …] [--strict]``: read every line and decode every audio file.

For each line: the JSON and keys are checked as the trainer reads them, the audio is decoded,
its real length is compared with the stated ``duration`` (tolerance: the larger of 0.05 s and
2 %), and audio shorter than one STFT window (25 ms) is flagged. A summary follows: lines ok,
lines bad (each named ``manifest:line`` with its reason), hours of audio. The exit status
is 1 when anything is bad, including a manifest with no line at all. ``--strict`` stops at the first bad line.
``--noise`` checks a noise manifest (``train_dataset.noise_manifest``), whose lines need no text.

Shapes: none (command-line tool).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from asrlib.audio import FRAME_SECONDS, AudioError, read_audio
from asrlib.data.manifest import BadLine, ManifestError, iter_lines, parse_line

ABS_TOLERANCE = 0.05  # seconds
REL_TOLERANCE = 0.02  # fraction of the stated duration


@dataclass
class CheckResult:
    ok: int = 0
    seconds: float = 0.0  # real audio seconds of the good lines
    bad: list[tuple[str, str]] = field(default_factory=list)  # (manifest:line, reason)


def check_line(raw: str, manifest: Path, line: int, need_text: bool = True) -> float:
    """Check one line end to end -> its real duration in seconds; raises ``BadLine``."""
    entry = parse_line(raw, manifest, line, check_audio=True, need_text=need_text)
    try:
        x, sr = read_audio(entry.audio_filepath, entry.offset, None)
    except AudioError as e:
        raise BadLine("unreadable audio", str(e)) from None
    available = len(x) / sr  # seconds from the offset to the end of the file
    stated = entry.duration
    tolerance = max(ABS_TOLERANCE, REL_TOLERANCE * stated)
    if entry.segment:  # a segment: it must fit in the file
        if stated > available + tolerance:
            raise BadLine("duration mismatch", f"offset {entry.offset:g} s + duration {stated:g} s runs past the end of the audio ({entry.offset + available:.3f} s)")
        real = stated
    else:
        real = available
        if abs(real - stated) > tolerance:
            raise BadLine("duration mismatch", f"stated duration {stated:.3f} s but the audio lasts {real:.3f} s; rewrite 'duration' from the audio")
    if real < FRAME_SECONDS:
        raise BadLine("too short", f"audio lasts {real * 1000:.1f} ms, shorter than one {FRAME_SECONDS * 1000:.0f} ms STFT frame")
    return real


def check_manifests(manifests: list[str | Path], stop_at_first: bool = False, need_text: bool = True) -> CheckResult:
    result = CheckResult()
    for manifest in map(Path, manifests):
        try:
            lines = list(iter_lines(manifest))
        except ManifestError as e:
            result.bad.append((str(manifest), str(e)))
            if stop_at_first:
                return result
            continue
        if not lines:
            result.bad.append((str(manifest), "empty manifest: no utterance lines (each line needs audio_filepath, "
                                              "text, duration)"))
            if stop_at_first:
                return result
        for number, raw in lines:
            try:
                result.seconds += check_line(raw, manifest, number, need_text)
                result.ok += 1
            except BadLine as bad:
                result.bad.append((f"{manifest}:{number}", bad.detail))
                if stop_at_first:
                    return result
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="asrlib manifest", description="Check JSONL manifests and their audio.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="read every line and decode every audio file")
    check.add_argument("manifests", nargs="+", help="JSONL manifest(s)")
    check.add_argument("--strict", action="store_true", help="stop at the first bad line")
    check.add_argument("--noise", action="store_true", help="noise manifests: lines need no text")
    args = parser.parse_args(argv)

    result = check_manifests(args.manifests, stop_at_first=args.strict, need_text=not args.noise)
    for where, reason in result.bad:
        print(f"{where}: {reason}", file=sys.stderr)
    status = "OK" if not result.bad else "BAD"
    print(f"{status}: {result.ok} lines ok, {len(result.bad)} lines bad, {result.seconds / 3600:.3f} h of audio in good lines")
    return 1 if result.bad else 0


if __name__ == "__main__":
    sys.exit(main())
