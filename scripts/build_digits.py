"""Build the bundled corpus data_samples/digits/ from the FSDD recordings.

    .venv/bin/python scripts/build_digits.py [RECORDINGS_DIR] [--out data_samples/digits] [--force]

RECORDINGS_DIR defaults to ../shared/data/fsdd/recordings relative to the repository root.
Runs the fsdd importer (``asrlib prepare fsdd``: digit-sequence FLAC + four manifests), then
trains the SentencePiece tokenizer (BPE, 32 pieces) on the train text into
<out>/tokenizer/. Deterministic: the same seed gives the same files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from asrlib.data.importers.fsdd import build_digits_corpus  # noqa: E402
from asrlib.data.manifest import read_manifest  # noqa: E402
from asrlib.tokenizer import Tokenizer, train_tokenizer  # noqa: E402

VOCAB_SIZE = 32
MODEL_TYPE = "bpe"  # unigram cannot reach 32 pieces from ten words; BPE can


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recordings", nargs="?", default=str(REPO.parent / "shared" / "data" / "fsdd" / "recordings"))
    parser.add_argument("--out", default=str(REPO / "data_samples" / "digits"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild over an existing corpus")
    args = parser.parse_args()

    manifests = build_digits_corpus(args.recordings, args.out, seed=args.seed, force=args.force)
    tok = train_tokenizer(manifests["train"], VOCAB_SIZE, MODEL_TYPE, Path(args.out) / "tokenizer", force=args.force)
    for split, path in manifests.items():
        entries, _ = read_manifest(path, strict=True)
        print(f"{split:<12} {len(entries):4d} utterances  {sum(e.duration for e in entries) / 60:6.2f} min  {path}")
    print(f"tokenizer    {Tokenizer(tok).vocab_size} pieces  {tok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
