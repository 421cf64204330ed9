"""A harder test for the digits model: AN4's spoken digit strings, 74 speakers it never heard.

    .venv/bin/python scripts/an4_digit_strings.py [--an4 data_samples/an4] [--out runs/an4_digits]
    .venv/bin/asrlib evaluate --checkpoint models/digits_demo --manifest runs/an4_digits/digits.jsonl

Picks every utterance of the bundled AN4 corpus (train and dev manifests) whose words are all
digit words ZERO … NINE (AN4 also says "OH" for zero; those utterances are left out, the
digits corpus never says it), lower-cases the text to the digits corpus's spelling, and
resamples the audio to 8 kHz and back to 16 kHz so that it has the digits corpus's bandwidth
(FSDD is recorded at 8 kHz: a model trained on it has never seen energy above 4 kHz).
Writes ``OUT/audio/<id>.flac`` and ``OUT/digits.jsonl``. Other speakers, another microphone,
another decade, digits read as phone numbers instead of one at a time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from asrlib.audio import load_audio  # noqa: E402
from asrlib.data.manifest import read_manifest, write_manifest  # noqa: E402

DIGITS = {"ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"}
RATE = 16000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--an4", default=str(REPO / "data_samples" / "an4"))
    p.add_argument("--out", default=str(REPO / "runs" / "an4_digits"))
    args = p.parse_args()
    out = Path(args.out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    rows, speakers = [], set()
    for split in ("train", "dev"):
        entries, _ = read_manifest(Path(args.an4) / f"{split}.jsonl", strict=True)
        for e in entries:
            words = e.text.split()
            if not words or not set(words) <= DIGITS:
                continue
            wave = load_audio(e.audio_filepath, RATE)
            band = soxr.resample(soxr.resample(wave, RATE, 8000), 8000, RATE).astype(np.float32)
            name = Path(e.audio_filepath).stem
            sf.write(out / "audio" / f"{name}.flac", band, RATE, subtype="PCM_16")
            speakers.add(Path(e.audio_filepath).parent.name)
            rows.append({"audio_filepath": f"audio/{name}.flac", "text": e.text.lower(),
                         "duration": round(len(band) / RATE, 4)})
    write_manifest(out / "digits.jsonl", rows, force=True)  # the folder is this script's own output
    minutes = sum(r["duration"] for r in rows) / 60
    print(f"wrote {out / 'digits.jsonl'}: {len(rows)} utterances, {len(speakers)} speakers, {minutes:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
