"""AN4's spoken digit strings, in the digits corpus's form: more voices for the digits model.

    .venv/bin/python scripts/an4_digit_strings.py [--an4 data_samples/an4] [--out data_samples/an4_digits] [--per-speaker 1] [--force]

Picks every utterance of the bundled AN4 corpus whose words are all digit words ZERO … NINE
(AN4 also says "OH" for zero; those utterances are left out, the digits corpus never says it),
lower-cases the text to the digits corpus's spelling and writes the audio at 8 kHz, the rate
FSDD is recorded at (a model trained on it has never seen energy above 4 kHz; the loader
resamples to the model's 16 kHz as it does for FSDD). AN4's speaker split is kept:

- ``OUT/train.jsonl``: one digit string from each of AN4's training speakers that say any (60
  of the 64; which one is drawn with a fixed seed; ``--per-speaker 0`` keeps all 120):
  ``configs/demo.toml`` trains on them beside FSDD's four speakers;
- ``OUT/test_an4_voices.jsonl``: those of AN4's 10 dev speakers (9 say some), voices the digits
  model never hears, neither in training nor in choosing its checkpoint: its test on other
  speakers, another microphone, digits said fluently as phone numbers. ``make demo`` scores it
  beside FSDD's two test splits (every ``test*.jsonl`` beside a training manifest).

``OUT/audio/<split>/<id>.flac`` (mono, 8 kHz, 16-bit) and the manifests (with ``speaker``).
Deterministic. An existing output is replaced only with ``--force``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from asrlib.audio import load_audio  # noqa: E402
from asrlib.data.manifest import read_manifest, write_manifest  # noqa: E402

DIGITS = {"ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"}
RATE = 8000  # FSDD's


def speaker_of(entry) -> str:
    """The AN4 bundle keeps each speaker's audio in a folder named after them (``audio/<split>/<spk>/``)."""
    return Path(entry.audio_filepath).parent.name


def per_speaker(entries: list, n: int, seed: int = 0) -> list:
    """``n`` entries of each speaker (all of those with fewer), drawn with ``seed``; speakers in
    sorted order, each speaker's entries in manifest order."""
    by: dict[str, list] = {}
    for e in entries:
        by.setdefault(speaker_of(e), []).append(e)
    rng = np.random.default_rng(seed)
    kept = []
    for speaker in sorted(by):
        mine = by[speaker]
        keep = sorted(rng.choice(len(mine), size=n, replace=False)) if len(mine) > n else range(len(mine))
        kept += [mine[i] for i in keep]
    return kept


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--an4", default=str(REPO / "data_samples" / "an4"))
    p.add_argument("--out", default=str(REPO / "data_samples" / "an4_digits"))
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--per-speaker", type=int, default=1, help="training digit strings kept per speaker (0: all)")
    args = p.parse_args()
    an4, out = Path(args.an4), Path(args.out)
    if out.exists():
        if not args.force:
            print(f"error: {out} already exists; pass --force to rebuild it", file=sys.stderr)
            return 2
        shutil.rmtree(out)
    for split, manifest in (("train", "train.jsonl"), ("dev", "test_an4_voices.jsonl")):
        entries, _ = read_manifest(an4 / f"{split}.jsonl", strict=True)
        entries = [e for e in entries if e.text.split() and set(e.text.split()) <= DIGITS]
        if split == "train" and args.per_speaker > 0:
            entries = per_speaker(entries, args.per_speaker)
        rows, speakers = [], set()
        for e in entries:
            wave = np.clip(load_audio(e.audio_filepath, RATE), -1.0, 1.0)  # soxr's low-pass at 4 kHz
            speaker = speaker_of(e)
            name = f"audio/{split}/{Path(e.audio_filepath).stem}.flac"
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            sf.write(out / name, wave, RATE, subtype="PCM_16")
            speakers.add(speaker)
            rows.append({"audio_filepath": name, "text": e.text.lower(),
                         "duration": round(len(wave) / RATE, 4), "speaker": speaker})
        write_manifest(out / manifest, rows)
        minutes = sum(r["duration"] for r in rows) / 60
        print(f"AN4 {split:<6} {len(rows):4d} utterances  {len(speakers):3d} speakers  {minutes:5.2f} min  {out / manifest}")
    shutil.copy(an4 / "LICENSE", out / "LICENSE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
