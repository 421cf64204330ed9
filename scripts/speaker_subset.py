"""A manifest cut down to N of its speakers: how WER grows when a corpus has fewer voices.

    .venv/bin/python scripts/speaker_subset.py --manifest data_samples/an4/train.jsonl \\
        --speakers 32 --out runs/an4_s32/train.jsonl [--share 1.0] [--seed 0] [--force]

The speakers (the lines' ``speaker`` field) are put in a random order fixed by ``--seed`` and
the first N kept, every line of each, in the manifest's order; so for one seed the 32-speaker
manifest is part of the 48-speaker one, and a learning curve compares nested sets. With
``--share F`` < 1 each kept speaker keeps only round(F x its lines) (at least one), chosen at
random for the seed: every voice, less speech from each, to tell the number of voices from
the hours of audio.
``audio_filepath`` is rewritten relative to the output's folder, so the new manifest may live
anywhere. Prints how many speakers, lines and minutes of audio it kept. An existing output
file is replaced only with ``--force``. docs/experiments.md ("How WER grows with less training
speech") trained the AN4 recipe on 32 and 48 of its 64 speakers and on half of each one's
utterances this way.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from asrlib.data.manifest import ManifestError, iter_lines, resolve_audio_path, write_manifest  # noqa: E402


def choose_speakers(speakers: set[str], n: int, seed: int) -> set[str]:
    order = sorted(speakers)
    random.Random(seed).shuffle(order)
    return set(order[:n])


def choose_lines(rows: list[dict], speakers: set[str], share: float, seed: int) -> set[int]:
    """Indices of the lines kept: all of each speaker's, or a random round(share x n) (>= 1) of them."""
    by_speaker: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        if str(row["speaker"]) in speakers:
            by_speaker.setdefault(str(row["speaker"]), []).append(i)
    rng = random.Random(seed)
    chosen: set[int] = set()
    for speaker in sorted(by_speaker):
        lines = by_speaker[speaker]
        chosen.update(rng.sample(lines, max(1, round(share * len(lines)))) if share < 1.0 else lines)
    return chosen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", required=True)
    p.add_argument("--speakers", type=int, required=True, help="how many speakers to keep")
    p.add_argument("--out", required=True, help="the new manifest (a .jsonl file)")
    p.add_argument("--share", type=float, default=1.0, help="the share of each kept speaker's lines to keep")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    src, out = Path(args.manifest), Path(args.out)

    def fail(msg: str) -> int:
        print(f"speaker_subset.py: error: {msg}", file=sys.stderr)
        return 2

    if out.exists() and out.resolve() == src.resolve():
        return fail("--out is the input manifest; choose another file")
    rows = []
    try:
        for number, line in iter_lines(src):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                return fail(f"{src}:{number}: not JSON ({e.msg})")
            if not isinstance(row, dict) or "speaker" not in row or "audio_filepath" not in row:
                return fail(f"{src}:{number}: a line needs 'audio_filepath' and 'speaker'")
            rows.append(row)
    except ManifestError as e:
        return fail(str(e))
    speakers = {str(r["speaker"]) for r in rows}
    if not 1 <= args.speakers <= len(speakers):
        return fail(f"--speakers {args.speakers}: {src} has {len(speakers)} speakers")
    if not 0.0 < args.share <= 1.0:
        return fail(f"--share {args.share}: give a share of each speaker's lines in (0, 1]")
    keep = choose_speakers(speakers, args.speakers, args.seed)
    chosen_lines = choose_lines(rows, keep, args.share, args.seed)
    # absolute paths here; write_manifest makes them relative to the new file's folder
    kept = [{**row, "audio_filepath": resolve_audio_path(row["audio_filepath"], src)}
            for i, row in enumerate(rows) if i in chosen_lines]
    try:
        write_manifest(out, kept, force=args.force)
    except ManifestError as e:
        return fail(str(e))
    minutes = sum(float(r.get("duration", 0.0)) for r in kept) / 60
    print(f"{out}: {len(keep)} of {len(speakers)} speakers, {len(kept)} of {len(rows)} lines, {minutes:.1f} minutes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
