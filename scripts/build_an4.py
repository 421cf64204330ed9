"""Build the bundled corpus data_samples/an4/ from the AN4 training set.

    .venv/bin/python scripts/build_an4.py [AN4_DIR] [--out data_samples/an4] [--force]

AN4_DIR defaults to ../shared/data/an4 relative to the repository root. Runs the an4 importer
(``asrlib prepare an4``) with DEV_SPEAKERS training speakers held out as dev (seed SEED),
Ogg Opus audio at OPUS_KBPS kbit/s, and never the official test set (held out for blind
evaluation, even when AN4_DIR has it); trains two SentencePiece tokenizers on the train text,
the recipe's letter-level one into <out>/tokenizer/ and a 128-piece BPE (in practice one piece
per AN4 word) into <out>/tokenizer_bpe128/, to compare with; copies AN4's LICENSE (CMU's
copyright notice, which redistribution must keep) to <out>/LICENSE. Deterministic: the same
arguments give the same manifests and tokenizers.
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

# folder -> (model_type, vocab_size): the letter-level vocabulary is the configs' (dev RNN-T WER
# about half the BPE's in the 15-minute recipe: see configs/an4.toml), BPE-128 the comparison
TOKENIZERS = {"tokenizer": ("char", 0), "tokenizer_bpe128": ("bpe", 128)}
DEV_SPEAKERS = 10
SEED = 0
OPUS_KBPS = 32  # log-mel distortion ~0.12 on speech bins at ~4 kB/s; see data_samples/README.md


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("an4_dir", nargs="?", default=str(REPO.parent / "shared" / "data" / "an4"))
    parser.add_argument("--out", default=str(REPO / "data_samples" / "an4"))
    parser.add_argument("--force", action="store_true", help="rebuild over an existing corpus")
    args = parser.parse_args()

    out = Path(args.out)
    manifests, counts = prepare_an4(args.an4_dir, out, "opus", OPUS_KBPS, DEV_SPEAKERS, SEED, args.force, with_test=False)
    skipped = {k: v for k, v in counts.items() if k != "written"}
    if skipped:
        print(f"skipped {skipped}")
    toks = {name: train_tokenizer(manifests["train"], size, kind, out / name, force=args.force)
            for name, (kind, size) in TOKENIZERS.items()}
    shutil.copyfile(Path(args.an4_dir) / "LICENSE", out / "LICENSE")
    for split, path in manifests.items():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        minutes = sum(r["duration"] for r in rows) / 60
        print(f"{split:<6} {len(rows):4d} utterances  {minutes:6.2f} min  {len({r['speaker'] for r in rows}):3d} speakers  {path}")
    for name, tok in toks.items():
        print(f"{name:<17} {Tokenizer(tok).vocab_size:3d} pieces ({TOKENIZERS[name][0]})  {tok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
