"""A folder of noise recordings -> a manifest for ``train_dataset.noise_manifest``.

Every audio file under DIR, searched recursively (.wav .flac .ogg .opus .mp3 .sph), becomes one
line ``{"audio_filepath": …, "duration": seconds}`` with no text; ``asrlib/data/noise.py`` mixes
segments of them into training utterances. For MUSAN, one manifest per kind keeps the choice
of what to mix open:

    asrlib prepare noise /data/musan/noise --out /data/musan/noise.jsonl
    asrlib prepare noise /data/musan/music --out /data/musan/music.jsonl

Durations come from the file headers (decoded in full for mp3, whose headers may estimate).
Files that cannot be read, or that last under ``--min-duration`` seconds, are skipped and
counted; an existing manifest is replaced only with ``--force``.

Shapes: none.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from asrlib.audio import AudioError, audio_info, measure_duration
from asrlib.data.importers import run_importer
from asrlib.data.manifest import ManifestError, write_manifest

EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".sph")


def prepare_noise(folder: str | Path, out: str | Path, min_duration: float = 0.1,
                  force: bool = False) -> tuple[Path, Counter]:
    """Write the manifest ``out`` of the audio files under ``folder`` -> (its path, counts)."""
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise ManifestError(f"{folder} is not a folder; pass the folder that holds the noise recordings")
    if out.exists() and not force:  # before reading every header of a large corpus
        raise ManifestError(f"{out} already exists; refusing to overwrite it (pass --force to replace it)")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)
    if not files:
        raise ManifestError(f"no audio files ({' '.join(EXTENSIONS)}) under {folder}")
    counts: Counter = Counter()
    rows = []
    for path in files:
        try:
            seconds = measure_duration(path) if path.suffix.lower() == ".mp3" else audio_info(path).duration
        except AudioError:
            counts["unreadable"] += 1
            continue
        if seconds < min_duration:
            counts[f"shorter than {min_duration:g} s"] += 1
            continue
        rows.append({"audio_filepath": str(path.resolve()), "duration": round(seconds, 3)})
    if not rows:
        raise ManifestError(f"none of the {len(files)} audio files under {folder} is usable ({dict(counts)})")
    counts["written"] = len(rows)
    return write_manifest(out, rows, force), counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="asrlib prepare noise", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="e.g. /data/musan/noise")
    parser.add_argument("--out", required=True, help="the manifest to write, e.g. /data/musan/noise.jsonl")
    parser.add_argument("--min-duration", type=float, default=0.1, help="skip shorter files (seconds)")
    parser.add_argument("--force", action="store_true", help="replace an existing manifest")
    args = parser.parse_args(argv)
    return run_importer("noise", prepare_noise, args.folder, args.out, args.min_duration, args.force,
                        unit="recordings")
