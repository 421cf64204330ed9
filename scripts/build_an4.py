"""Build the bundled corpus data_samples/an4/ from the AN4 training set.

    .venv/bin/python scripts/build_an4.py [AN4_DIR] [--out data_samples/an4] [--vocab-size N]
                                          [--model-type bpe|unigram] [--force]

AN4_DIR defaults to ../shared/data/an4 relative to the repository root. Runs the an4 importer
(``asrlib prepare an4``) with DEV_SPEAKERS training speakers held out as dev (seed SEED),
Ogg Opus audio at OPUS_KBPS kbit/s, and never the official test set (held out for blind
evaluation, even when AN4_DIR has it); trains the SentencePiece tokenizer on the train text
into <out>/tokenizer/; copies AN4's LICENSE (CMU's copyright notice, which redistribution must
keep) to <out>/LICENSE. Deterministic: the same arguments give the same manifests and tokenizer.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from asrlib.data.importers.an4 import prepare_an4  # noqa: E402
from asrlib.tokenizer import Tokenizer, train_tokenizer  # noqa: E402

VOCAB_SIZE = 128
MODEL_TYPE = "bpe"
DEV_SPEAKERS = 10
SEED = 0
OPUS_KBPS = 32  # log-mel distortion ~0.12 on speech bins at ~4 kB/s; see data_samples/README.md


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("an4_dir", nargs="?", default=str(REPO.parent / "shared" / "data" / "an4"))
    parser.add_argument("--out", default=str(REPO / "data_samples" / "an4"))
    parser.add_argument("--vocab-size", type=int, default=VOCAB_SIZE)
    parser.add_argument("--model-type", choices=("bpe", "unigram"), default=MODEL_TYPE)
    parser.add_argument("--force", action="store_true", help="rebuild over an existing corpus")
    args = parser.parse_args()

    out = Path(args.out)
    manifests, counts = prepare_an4(args.an4_dir, out, "opus", OPUS_KBPS, DEV_SPEAKERS, SEED, args.force, with_test=False)
    skipped = {k: v for k, v in counts.items() if k != "written"}
    if skipped:
        print(f"skipped {skipped}")
    tok = train_tokenizer(manifests["train"], args.vocab_size, args.model_type, out / "tokenizer", force=args.force)
    shutil.copyfile(Path(args.an4_dir) / "LICENSE", out / "LICENSE")
    for split, path in manifests.items():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        minutes = sum(r["duration"] for r in rows) / 60
        print(f"{split:<6} {len(rows):4d} utterances  {minutes:6.2f} min  {len({r['speaker'] for r in rows}):3d} speakers  {path}")
    print(f"tokenizer {Tokenizer(tok).vocab_size} pieces ({args.model_type})  {tok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
