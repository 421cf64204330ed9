"""Common Voice language folder -> one JSONL manifest per split.

Layout read (a Common Voice release, e.g. ``cv-corpus-17.0/ru``)::

    CV_LANG_DIR/{validated,train,dev,test}.tsv   tab-separated, columns include path, sentence
    CV_LANG_DIR/clips/<path>                      mp3 clips

    asrlib prepare commonvoice CV_LANG_DIR --split validated|train|dev|test --out DIR [--force]

writes DIR/<split>.jsonl pointing at the mp3 clips (relative paths; nothing is converted:
soundfile decodes mp3). The duration is measured by decoding each clip, and the TSV's
``client_id`` (the contributor) becomes the line's ``speaker``. Sentences are kept as written
(case and punctuation). Rows with an empty sentence or a missing/unreadable
clip are skipped and counted.

Shapes: none.
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter
from pathlib import Path

from asrlib.audio import AudioError, measure_duration
from asrlib.data.importers import run_importer
from asrlib.data.manifest import ManifestError, write_manifest

SPLITS = ("validated", "train", "dev", "test")


def prepare_commonvoice(cv_dir: str | Path, split: str, out_dir: str | Path, force: bool = False) -> tuple[Path, Counter]:
    """-> (manifest path, counts: 'written' and one key per skip reason)."""
    cv_dir = Path(cv_dir)
    if split not in SPLITS:
        raise ManifestError(f"unknown Common Voice split {split!r}; choose one of {', '.join(SPLITS)}")
    tsv = cv_dir / f"{split}.tsv"
    if not tsv.is_file():
        raise ManifestError(f"{tsv} not found; pass the language folder of a Common Voice release (it holds {split}.tsv and clips/)")
    manifest = Path(out_dir) / f"{split}.jsonl"
    if manifest.exists() and not force:
        raise ManifestError(f"{manifest} already exists; refusing to overwrite it (pass --force to replace it)")
    counts: Counter = Counter()
    rows = []
    with open(tsv, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = {"path", "sentence"} - set(reader.fieldnames or [])
        if missing:
            raise ManifestError(f"{tsv}: missing column(s) {', '.join(sorted(missing))}; is this a Common Voice TSV?")
        for row in reader:
            text = (row.get("sentence") or "").strip()
            if not text:
                counts["empty sentence"] += 1
                continue
            clip = (cv_dir / "clips" / (row.get("path") or "")).resolve()
            if not clip.is_file():
                counts["missing clip"] += 1
                continue
            try:
                duration = measure_duration(clip)
            except AudioError:
                counts["unreadable clip"] += 1
                continue
            row_out = {"audio_filepath": str(clip), "text": text, "duration": round(duration, 4)}
            if row.get("client_id"):  # the contributor: asrlib speakers and significance group by it
                row_out["speaker"] = row["client_id"]
            rows.append(row_out)
    counts["written"] = len(rows)
    write_manifest(manifest, rows, force=force)
    return manifest, counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="asrlib prepare commonvoice", description=__doc__.split("\n\n")[0])
    parser.add_argument("cv_dir", help="language folder of a Common Voice release, e.g. cv-corpus-17.0/ru")
    parser.add_argument("--split", choices=SPLITS, required=True)
    parser.add_argument("--out", required=True, help="folder for the manifest")
    parser.add_argument("--force", action="store_true", help="replace an existing manifest")
    args = parser.parse_args(argv)
    return run_importer("commonvoice", prepare_commonvoice, args.cv_dir, args.split, args.out, args.force)
