"""A pronunciation lexicon: words -> phones, and phone targets for an auxiliary CTC head.

The file is plain text, one word a line: the word as it is written in the transcripts, then its
phones, separated by white space (``B  B IY``, ``W  D AH B AH L Y UW``). Blank lines and text
after ``#`` are ignored; one pronunciation per word. The phone inventory is the sorted set of the
phones used, so phone ids depend on the file alone: phone i is ``phones[i]`` and the CTC blank is
``len(phones)``.

Why: with letters or word pieces as the only targets, each unit is a class of its own. Spelled as
phones, B is B IY and D is D IY: the E-set letters share a vowel and differ in an onset that
other words share too, and a CTC head over phones asks the encoder to tell those onsets apart
wherever they occur (``loss.phone_ctc_weight``, asrlib/losses/hybrid.py). At inference the head
can rescore a beam search's final hypotheses, each spelled in phones through the lexicon
(asrlib/decoding/rescore.py).

Shapes: ``targets(texts)`` -> phones (B, P) int64 padded with 0, lengths (B,) int64.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from asrlib.errors import UsageError


class LexiconError(UsageError, ValueError):
    """A lexicon file is malformed, or lacks words a transcript uses; the message says where."""


class Lexicon:
    def __init__(self, pronunciations: dict[str, tuple[str, ...]], source: str = "<lexicon>"):
        if not pronunciations:
            raise LexiconError(f"{source}: no word in it; expected lines 'WORD PHONE PHONE ...'")
        self.source = source
        self.pronunciations = pronunciations
        self.phones = sorted({p for pron in pronunciations.values() for p in pron})
        self.phone_id = {p: i for i, p in enumerate(self.phones)}
        self.blank = len(self.phones)

    @classmethod
    def read(cls, path: str | Path) -> "Lexicon":
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise LexiconError(f"cannot read the lexicon {path}: {e}; point loss.phone_lexicon at a UTF-8 "
                               "text file of lines 'WORD PHONE PHONE ...'") from None
        pronunciations: dict[str, tuple[str, ...]] = {}
        first_line: dict[str, int] = {}
        for n, line in enumerate(lines, 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            word, phones = fields[0], tuple(fields[1:])
            if not phones:
                raise LexiconError(f"{path}:{n}: '{word}' has no phones; write 'WORD PHONE PHONE ...'")
            if word in pronunciations:
                raise LexiconError(f"{path}:{n}: '{word}' again (first at line {first_line[word]}); keep one "
                                   "pronunciation per word")
            pronunciations[word], first_line[word] = phones, n
        return cls(pronunciations, str(path))

    @property
    def size(self) -> int:
        """Number of phones (the CTC head has size + 1 outputs: the blank is last)."""
        return len(self.phones)

    def missing(self, texts: Iterable[str]) -> Counter:
        """Words of ``texts`` (split on white space) that the lexicon lacks, with their counts."""
        return Counter(w for t in texts for w in t.split() if w not in self.pronunciations)

    def check_covers(self, texts: Iterable[str], where: str) -> None:
        """Raise a one-line LexiconError if any word of ``texts`` is not in the lexicon."""
        gaps = self.missing(texts)
        if gaps:
            shown = ", ".join(f"{w!r} ({c}x)" for w, c in gaps.most_common(8))
            raise LexiconError(f"the lexicon {self.source} lacks {len(gaps)} word(s) of {where}: {shown}"
                               f"{' ...' if len(gaps) > 8 else ''}; add a line 'WORD PHONE PHONE ...' for each")

    def encode(self, text: str) -> list[int]:
        """Phone ids of a transcript: the words' pronunciations, one after the other."""
        try:
            return [self.phone_id[p] for w in text.split() for p in self.pronunciations[w]]
        except KeyError as e:
            raise LexiconError(f"the lexicon {self.source} has no word {e.args[0]!r}; add a line for it") from None

    def targets(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Padded phone targets (B, P) (padding 0) and their lengths (B,) for a batch of transcripts."""
        ids = [torch.tensor(self.encode(t), dtype=torch.long) for t in texts]
        return pad_sequence(ids, batch_first=True), torch.tensor([len(x) for x in ids], dtype=torch.long)


def phone_lexicon(cfg, train_texts: Iterable[str]) -> Lexicon | None:
    """The trainer's lexicon: ``loss.phone_lexicon`` read and checked against the training
    transcripts, with ``model.phone_vocab_size`` filled from it when 0 and ``model.phone_block``
    from ``loss.phone_ctc_block`` (``cfg`` is the run's Config, changed in place). None when
    ``loss.phone_ctc_weight`` is 0."""
    loss, model = cfg.loss, cfg.model
    if loss.phone_ctc_weight == 0:
        if model.phone_vocab_size:
            raise LexiconError(f"model.phone_vocab_size = {model.phone_vocab_size} but loss.phone_ctc_weight = 0: "
                               "the phone head would never train; set model.phone_vocab_size = 0, or a "
                               "phone_ctc_weight > 0 and a loss.phone_lexicon")
        return None
    lexicon = Lexicon.read(loss.phone_lexicon)
    try:
        lexicon.check_covers(train_texts, "the training manifest")
    except LexiconError as e:  # e.g. a recipe's config (configs/an4.toml) pointed at other data
        raise LexiconError(f"{e}, or set loss.phone_ctc_weight = 0 to train without the phone CTC") from None
    model.phone_block = loss.phone_ctc_block  # the model records where its phone head reads (validated equal or 0)
    if model.phone_vocab_size == 0:
        model.phone_vocab_size = lexicon.size
    elif model.phone_vocab_size != lexicon.size:
        raise LexiconError(f"model.phone_vocab_size = {model.phone_vocab_size} but the lexicon {lexicon.source} "
                           f"has {lexicon.size} phones; set model.phone_vocab_size = 0 to take the lexicon's")
    return lexicon
