"""SentencePiece tokenizer: train from manifest texts, load from a folder, encode/decode.

Text is used exactly as written: no lower-casing, punctuation kept, no Unicode normalisation
(``normalization_rule_name="identity"``), every character covered (Cyrillic included).
There is no BOS/EOS; id 0 is ``<unk>``. The model heads put blank at id ``vocab_size``.
Training is offline and reproducible (one thread, fixed seed).

    asrlib tokenizer train --manifest M [--manifest M2] --vocab-size N --model-type bpe|unigram --out DIR
    asrlib tokenizer train --manifest M --model-type char --out DIR      (one piece per character)

``char`` is a letter-level vocabulary: every character of the training text is a piece, plus
``<unk>`` and the word-start marker; its size follows from the text (leave ``vocab_size`` 0).

Shapes: text (str) <-> ids (U,) list[int].
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
from pathlib import Path
from typing import Sequence

import sentencepiece as spm

from asrlib.data.manifest import ManifestError, read_manifest
from asrlib.metrics import normalize

MODEL_NAME = "tokenizer.model"
SEED = 1234
MODEL_TYPES = ("bpe", "unigram", "char")


class TokenizerError(ValueError):
    """A tokenizer could not be loaded or trained; the message says where and what to do."""


class Tokenizer:
    """A trained SentencePiece model. ``path``: a folder holding tokenizer.model, or the file."""

    def __init__(self, path: str | Path | None):
        if path is None:
            raise TokenizerError("no tokenizer given and the model carries none; pass --tokenizer (a folder holding "
                                 f"{MODEL_NAME} or the .model file)")
        path = Path(path)
        model = path / MODEL_NAME if path.is_dir() else path
        if not model.is_file():
            raise TokenizerError(f"no tokenizer at {path}: expected {MODEL_NAME} in that folder or a .model file; train one with `asrlib tokenizer train`")
        self._load(model.read_bytes(), model)

    @classmethod
    def from_bytes(cls, data: bytes, source: str | Path = "<bytes>") -> "Tokenizer":
        """A tokenizer from the serialised SentencePiece model (as stored in a checkpoint)."""
        tok = cls.__new__(cls)
        tok._load(bytes(data), Path(source))
        return tok

    def _load(self, data: bytes, where: Path) -> None:
        self.path = where
        self.proto = data  # the SentencePiece model file's bytes: what travels with a model
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(data)
        except (OSError, RuntimeError, TypeError) as e:
            raise TokenizerError(f"{where} is not a SentencePiece model: {e}") from None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.proto).hexdigest()

    def save(self, path: str | Path) -> Path:
        """Write the model file (``tokenizer.model``) to ``path``."""
        Path(path).write_bytes(self.proto)
        return Path(path)

    @property
    def vocab_size(self) -> int:
        return int(self.sp.GetPieceSize())

    @property
    def unk_id(self) -> int:
        return int(self.sp.unk_id())

    def encode(self, text: str) -> list[int]:
        return list(self.sp.EncodeAsIds(text))

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise TokenizerError(f"token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size}); remove blank ({self.vocab_size}) before decoding")
        # A model can emit the word-start piece "▁" alone, last or twice in a row (a letter-level
        # tokenizer has it as a piece of its own); SentencePiece turns each into a space. A
        # transcript is words: the whitespace the metrics compare by (one space between words).
        return normalize(self.sp.DecodeIds(ids))

    def piece(self, i: int) -> str:
        return self.sp.IdToPiece(int(i))

    def pieces(self) -> list[str]:
        """Every piece, in id order (what an n-gram language model's words are: asrlib/ngram.py)."""
        return [self.piece(i) for i in range(self.vocab_size)]

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"


def train_tokenizer(
    manifests: str | Path | Sequence[str | Path],
    vocab_size: int,
    model_type: str = "unigram",
    out_dir: str | Path = "tokenizer",
    force: bool = False,
) -> Path:
    """Train on the ``text`` of every manifest line -> path of out_dir/tokenizer.model.

    Also writes tokenizer.vocab. Refuses to overwrite an existing model unless ``force``.
    ``model_type="char"``: one piece per character; ``vocab_size`` must be 0 (the text decides).
    """
    if model_type not in MODEL_TYPES:
        raise TokenizerError(f"model_type must be one of {', '.join(MODEL_TYPES)}, got {model_type!r}")
    if model_type == "char" and vocab_size != 0:
        raise TokenizerError(f"a char tokenizer has one piece per character of the text; leave vocab_size out "
                             f"(0), got {vocab_size}")
    if vocab_size <= 0 and model_type != "char":
        raise TokenizerError(f"vocab_size must be > 0 for a {model_type} tokenizer, got {vocab_size}")
    out = Path(out_dir)
    model = out / MODEL_NAME
    if model.exists() and not force:
        raise TokenizerError(f"{model} already exists; refusing to overwrite it (use --force to replace it)")
    entries, report = read_manifest(manifests, strict=False, check_audio=False)
    texts = [e.text for e in entries]
    if not texts:
        raise TokenizerError(f"no usable text in {manifests}: {report.summary()}")
    out.mkdir(parents=True, exist_ok=True)
    spm.set_random_generator_seed(SEED)
    buffer = io.BytesIO()  # in-memory: no temp paths end up inside the model file
    try:
        spm.SentencePieceTrainer.Train(
            sentence_iterator=iter(texts),
            model_writer=buffer,
            vocab_size=vocab_size if model_type != "char" else 1 << 20,
            model_type=model_type,
            normalization_rule_name="identity",
            character_coverage=1.0,
            bos_id=-1,
            eos_id=-1,
            unk_id=0,
            num_threads=1,
            minloglevel=2,
            # char: as many pieces as there are characters. Passed only there, so that a bpe or
            # unigram model file stays byte-identical to one trained before this option existed.
            **({"hard_vocab_limit": False} if model_type == "char" else {}),
        )
    except RuntimeError as e:
        raise TokenizerError(f"SentencePiece training failed for vocab_size={vocab_size}, model_type={model_type}: {e}") from None
    model.write_bytes(buffer.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=buffer.getvalue())
    lines = [f"{sp.IdToPiece(i)}\t{sp.GetScore(i):g}" for i in range(sp.GetPieceSize())]
    (out / "tokenizer.vocab").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="asrlib tokenizer", description="SentencePiece tokenizer from manifests.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train on the text of JSONL manifests")
    train.add_argument("--manifest", action="append", required=True, help="JSONL manifest (repeatable)")
    train.add_argument("--vocab-size", type=int, default=0, help="pieces (bpe, unigram; required); char: leave out")
    train.add_argument("--model-type", choices=MODEL_TYPES, default="unigram")
    train.add_argument("--out", required=True, help="folder for tokenizer.model and tokenizer.vocab")
    train.add_argument("--force", action="store_true", help="replace an existing tokenizer.model")
    args = parser.parse_args(argv)
    try:
        model = train_tokenizer(args.manifest, args.vocab_size, args.model_type, args.out, args.force)
    except (TokenizerError, ManifestError) as e:
        print(f"asrlib tokenizer: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"wrote {model} ({Tokenizer(model).vocab_size} pieces)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
