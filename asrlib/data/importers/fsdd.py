"""Free Spoken Digit Dataset recordings -> the bundled digit-sequence corpus.

Input: ``RECORDINGS_DIR/{digit}_{speaker}_{index}.wav`` (8 kHz mono, one spoken digit each).
Output, in ``--out DIR``::

    DIR/audio/<split>/<speaker>_<nnn>.flac   8 kHz PCM_16 FLAC
    DIR/train.jsonl dev.jsonl test_seen.jsonl test_unseen.jsonl

Each utterance joins 1-6 recordings of one speaker, in random order, with random gaps of
50-250 ms of very low noise (also before the first and after the last digit); its text is
the digit words in lowercase ("seven three nine"). Every source recording in a split is
used exactly once. Splits by recording index (FSDD's own convention puts 0-4 in test):

    train       seen speakers, index 10-49      dev   seen speakers, index 5-9
    test_seen   seen speakers, index 0-4        test_unseen  unseen speakers, every index

Manifest lines carry two extra keys, ``speaker`` and ``sources`` (the recordings used).
Deterministic for a given seed.

    asrlib prepare fsdd RECORDINGS_DIR --out DIR [--seed 0] [--force]

Shapes: recordings (S_i,) int16 -> utterance (S,) = gap + rec + gap + … + rec + gap.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from asrlib.audio import load_audio
from asrlib.data.manifest import ManifestError, write_manifest

SAMPLE_RATE = 8000
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SEEN = ("george", "jackson", "lucas", "nicolas")
UNSEEN = ("yweweler",)
# split -> (seen or unseen speakers, recording indices; None = all)
SPLITS = {
    "train": ("seen", range(10, 50)),
    "dev": ("seen", range(5, 10)),
    "test_seen": ("seen", range(0, 5)),
    "test_unseen": ("unseen", None),
}
MAX_DIGITS = 6
GAP_SECONDS = (0.05, 0.25)
NOISE_STD = 3e-5  # about 1 LSB of 16-bit audio: near-silence that is not digital zero
_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")


def list_recordings(recordings_dir: Path) -> dict[str, list[tuple[int, int, Path]]]:
    """speaker -> sorted [(digit, index, path)] of every ``d_speaker_i.wav``."""
    found: dict[str, list[tuple[int, int, Path]]] = {}
    for path in sorted(recordings_dir.glob("*.wav")):
        m = _NAME.match(path.name)
        if m:
            found.setdefault(m.group(2), []).append((int(m.group(1)), int(m.group(3)), path))
    return {spk: sorted(recs) for spk, recs in found.items()}


def _gap(rng: np.random.Generator) -> np.ndarray:
    n = int(rng.integers(int(GAP_SECONDS[0] * SAMPLE_RATE), int(GAP_SECONDS[1] * SAMPLE_RATE) + 1))
    return rng.normal(0.0, NOISE_STD, n).astype(np.float32)  # (n,)


def _utterances(recs: list[tuple[int, int, Path]], rng: np.random.Generator) -> list[list[tuple[int, int, Path]]]:
    """Shuffle ``recs`` and cut them into groups of 1..MAX_DIGITS (every one used once)."""
    recs = [recs[j] for j in rng.permutation(len(recs))]
    groups, start = [], 0
    while start < len(recs):
        size = int(rng.integers(1, MAX_DIGITS + 1))
        groups.append(recs[start : start + size])
        start += size
    return groups


def build_digits_corpus(
    recordings_dir: str | Path,
    out_dir: str | Path,
    seed: int = 0,
    force: bool = False,
    seen: tuple[str, ...] = SEEN,
    unseen: tuple[str, ...] = UNSEEN,
) -> dict[str, Path]:
    """Write the corpus described in the module docstring -> {split: manifest path}."""
    recordings_dir, out_dir = Path(recordings_dir), Path(out_dir)
    if not recordings_dir.is_dir():
        raise ManifestError(f"FSDD recordings folder not found: {recordings_dir}")
    manifests = {split: out_dir / f"{split}.jsonl" for split in SPLITS}
    existing = [str(p) for p in manifests.values() if p.exists()]
    if existing and not force:
        raise ManifestError(f"{', '.join(existing)} already exist(s); refusing to overwrite (pass --force to rebuild)")
    by_speaker = list_recordings(recordings_dir)
    for speaker in (*seen, *unseen):  # check everything before writing anything
        if speaker not in by_speaker:
            raise ManifestError(f"no recordings of speaker '{speaker}' in {recordings_dir} (expected files like 0_{speaker}_0.wav)")
    for split_no, (split, (group_name, indices)) in enumerate(SPLITS.items()):
        speakers = seen if group_name == "seen" else unseen
        rows = []
        for spk_no, speaker in enumerate(speakers):
            recs = [r for r in by_speaker[speaker] if indices is None or r[1] in indices]
            rng = np.random.default_rng([seed, split_no, spk_no])
            for k, group in enumerate(_utterances(recs, rng)):
                pieces = [_gap(rng)]
                for _, _, path in group:
                    pieces += [load_audio(path, SAMPLE_RATE), _gap(rng)]
                audio = np.concatenate(pieces)  # (S,) gap + rec + gap + … + gap
                target = out_dir / "audio" / split / f"{speaker}_{k:03d}.flac"
                target.parent.mkdir(parents=True, exist_ok=True)
                sf.write(str(target), np.clip(audio, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
                rows.append({
                    "audio_filepath": str(target.resolve()),
                    "text": " ".join(WORDS[d] for d, _, _ in group),
                    "duration": round(len(audio) / SAMPLE_RATE, 4),
                    "speaker": speaker,
                    "sources": " ".join(p.stem for _, _, p in group),
                })
        write_manifest(manifests[split], rows, force=force)
    return manifests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="asrlib prepare fsdd", description=__doc__.split("\n\n")[0])
    parser.add_argument("recordings_dir", help="FSDD recordings/ folder ({digit}_{speaker}_{index}.wav)")
    parser.add_argument("--out", required=True, help="corpus folder (audio/ and the manifests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seen", default=",".join(SEEN), help="comma-separated speakers of train/dev/test_seen")
    parser.add_argument("--unseen", default=",".join(UNSEEN), help="comma-separated speakers of test_unseen")
    parser.add_argument("--force", action="store_true", help="replace existing manifests")
    args = parser.parse_args(argv)
    try:
        manifests = build_digits_corpus(
            args.recordings_dir, args.out, args.seed, args.force, tuple(args.seen.split(",")), tuple(args.unseen.split(","))
        )
    except ManifestError as e:
        print(f"asrlib prepare fsdd: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    for split, path in manifests.items():
        n = sum(1 for line in open(path, encoding="utf-8") if line.strip())
        print(f"wrote {path}: {n} utterances")
    return 0
