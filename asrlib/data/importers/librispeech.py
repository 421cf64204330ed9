"""LibriSpeech split folder -> one JSONL manifest.

Layout read (e.g. ``LibriSpeech/dev-clean``)::

    SPLIT_DIR/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt   lines "<utt-id> TEXT"
    SPLIT_DIR/<speaker>/<chapter>/<utt-id>.flac

    asrlib prepare librispeech SPLIT_DIR --out DIR [--name NAME] [--force]

writes DIR/NAME.jsonl (default NAME: the split folder's name) pointing at the flac files
(relative paths; the audio is not copied), each line with its reader as ``speaker``. Texts
are kept as LibriSpeech writes them (upper case). Utterances whose flac is missing or
unreadable are skipped and counted.

Shapes: none.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from asrlib.audio import AudioError, audio_info
from asrlib.data.importers import run_importer
from asrlib.data.manifest import ManifestError, write_manifest


def prepare_librispeech(split_dir: str | Path, out_dir: str | Path, name: str | None = None, force: bool = False) -> tuple[Path, Counter]:
    """-> (manifest path, counts: 'written' and one key per skip reason)."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise ManifestError(f"LibriSpeech split folder not found: {split_dir}")
    manifest = Path(out_dir) / f"{name or split_dir.name}.jsonl"
    if manifest.exists() and not force:
        raise ManifestError(f"{manifest} already exists; refusing to overwrite it (pass --force to replace it)")
    transcripts = sorted(split_dir.rglob("*.trans.txt"))
    if not transcripts:
        raise ManifestError(f"no *.trans.txt files under {split_dir}; pass a split folder such as LibriSpeech/dev-clean")
    counts: Counter = Counter()
    rows = []
    for trans in transcripts:
        for line in trans.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            utt, _, text = line.strip().partition(" ")
            audio = (trans.parent / f"{utt}.flac").resolve()
            if not text.strip():
                counts["empty text"] += 1
                continue
            try:
                info = audio_info(audio)
            except AudioError:
                counts["missing or unreadable flac"] += 1
                continue
            rows.append({"audio_filepath": str(audio), "text": text.strip(), "duration": round(info.duration, 4),
                         "speaker": trans.parent.parent.name})
    counts["written"] = len(rows)
    write_manifest(manifest, rows, force=force)
    return manifest, counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="asrlib prepare librispeech", description=__doc__.split("\n\n")[0])
    parser.add_argument("split_dir", help="e.g. LibriSpeech/dev-clean")
    parser.add_argument("--out", required=True, help="folder for the manifest")
    parser.add_argument("--name", default=None, help="manifest name without .jsonl (default: the split folder's name)")
    parser.add_argument("--force", action="store_true", help="replace an existing manifest")
    args = parser.parse_args(argv)
    return run_importer("librispeech", prepare_librispeech, args.split_dir, args.out, args.name, args.force)
