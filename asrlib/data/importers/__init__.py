"""``asrlib prepare CORPUS …``: turn a public corpus into JSONL manifests.

    asrlib prepare fsdd RECORDINGS_DIR --out DIR              (the bundled digits corpus)
    asrlib prepare commonvoice CV_LANG_DIR --split validated|train|dev|test --out DIR
    asrlib prepare librispeech SPLIT_DIR --out DIR
    asrlib prepare an4 AN4_DIR --out DIR [--format flac|opus|wav] [--dev-speakers N]
    asrlib prepare noise NOISE_DIR --out MANIFEST  (noise recordings for train_dataset.noise_manifest)

Every importer writes manifests with ``audio_filepath`` relative to the manifest, and never
overwrites an existing manifest unless ``--force``. Each corpus module has ``main(argv)``.

Shapes: none.
"""

from __future__ import annotations

import importlib
import sys

CORPORA = {
    "fsdd": "Free Spoken Digit Dataset recordings -> digit-sequence corpus (FLAC + manifests)",
    "commonvoice": "Common Voice language folder (TSV + clips/*.mp3) -> manifest",
    "librispeech": "LibriSpeech split folder (*.trans.txt + flac) -> manifest",
    "an4": "AN4 (CMU census) folder (etc/*.transcription + sph) -> train/dev/test (audio + manifests)",
    "noise": "a folder of noise recordings (e.g. MUSAN's noise/) -> manifest without texts",
}


def usage() -> str:
    lines = ["usage: asrlib prepare CORPUS [options]   (asrlib prepare CORPUS --help)", ""]
    return "\n".join(lines + [f"  {name:<12} {text}" for name, text in CORPORA.items()])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in CORPORA:
        print(f"asrlib prepare: unknown corpus '{argv[0]}'\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"asrlib.data.importers.{argv[0]}")
    return int(module.main(argv[1:]) or 0)


def run_importer(name: str, prepare, *args, unit: str = "utterances") -> int:
    """Call ``prepare(*args) -> (manifest, counts)`` and print a one-line summary (exit status)."""
    from asrlib.data.manifest import ManifestError

    try:
        manifest, counts = prepare(*args)
    except ManifestError as e:
        print(f"asrlib prepare {name}: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    skipped = {k: v for k, v in counts.items() if k != "written"}
    print(f"wrote {manifest}: {counts['written']} {unit}" + (f"; skipped {skipped}" if skipped else ""))
    return 0
