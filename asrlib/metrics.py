"""Word and character error rates (via jiwer), and a JSON-ready per-utterance report.

Rates are fractions (0.25, not 25 %): errors (substitutions + deletions + insertions) over
the number of reference words (characters for CER), summed over the corpus first, so long
utterances weigh more than short ones.

Text is compared exactly as given (case and punctuation count) after collapsing runs of
whitespace and stripping the ends. Characters include the single spaces between words.

Empty references: an utterance whose reference is empty adds no reference words, and every
word of its hypothesis counts as an insertion. Its own rate is 0.0 when the hypothesis is
empty too and 1.0 otherwise (all of it is wrong); the same rule applies to a corpus whose
references are all empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import jiwer


def normalize(text: str) -> str:
    """Collapse whitespace runs to one space and strip the ends."""
    return " ".join(text.split())


@dataclass
class EditCounts:
    """Alignment of a hypothesis against a reference, in words or characters."""

    ref_len: int = 0  # reference units (words or characters)
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        if self.ref_len == 0:
            return 0.0 if self.errors == 0 else 1.0
        return self.errors / self.ref_len

    def __add__(self, other: EditCounts) -> EditCounts:
        return EditCounts(
            self.ref_len + other.ref_len,
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
        )


def _count(ref: str, hyp: str, unit: str) -> EditCounts:
    """Edit counts of one pair; ``unit`` is "word" or "char"."""
    ref, hyp = normalize(ref), normalize(hyp)
    ref_units = ref.split() if unit == "word" else list(ref)
    hyp_units = hyp.split() if unit == "word" else list(hyp)
    if not ref_units or not hyp_units:  # nothing to align: all insertions or all deletions
        return EditCounts(len(ref_units), 0, len(ref_units), len(hyp_units))
    out = jiwer.process_words(ref, hyp) if unit == "word" else jiwer.process_characters(ref, hyp)
    return EditCounts(len(ref_units), out.substitutions, out.deletions, out.insertions)


def _pairs(refs: Sequence[str] | str, hyps: Sequence[str] | str) -> list[tuple[str, str]]:
    refs = [refs] if isinstance(refs, str) else list(refs)
    hyps = [hyps] if isinstance(hyps, str) else list(hyps)
    if len(refs) != len(hyps):
        raise ValueError(f"got {len(refs)} references but {len(hyps)} hypotheses; they must pair up one to one")
    return list(zip(refs, hyps))


def _total(refs: Sequence[str] | str, hyps: Sequence[str] | str, unit: str) -> EditCounts:
    total = EditCounts()
    for ref, hyp in _pairs(refs, hyps):
        total = total + _count(ref, hyp, unit)
    return total


def word_counts(refs: Sequence[str] | str, hyps: Sequence[str] | str) -> EditCounts:
    """Summed word edit counts: the corpus WER of several shards is the rate of their sum."""
    return _total(refs, hyps, "word")


def char_counts(refs: Sequence[str] | str, hyps: Sequence[str] | str) -> EditCounts:
    """Summed character edit counts (spaces between words included), the CER's counterpart of
    ``word_counts``."""
    return _total(refs, hyps, "char")


def wer(refs: Sequence[str] | str, hyps: Sequence[str] | str) -> float:
    """Corpus word error rate, a fraction. ``wer(["a b c d"], ["a x c"]) == 0.5``."""
    return word_counts(refs, hyps).rate


def cer(refs: Sequence[str] | str, hyps: Sequence[str] | str) -> float:
    """Corpus character error rate, a fraction (spaces between words are characters)."""
    return char_counts(refs, hyps).rate


def error_report(refs: Sequence[str], hyps: Sequence[str], ids: Sequence[str] | None = None) -> dict:
    """Totals and one entry per utterance; only str/int/float/list/dict, so ``json.dumps`` works.

    ``substitutions``, ``deletions`` and ``insertions`` are word counts.
    """
    pairs = _pairs(refs, hyps)
    ids = [str(i) for i in range(len(pairs))] if ids is None else [str(i) for i in ids]
    if len(ids) != len(pairs):
        raise ValueError(f"got {len(ids)} ids for {len(pairs)} utterances")
    words, chars, rows = EditCounts(), EditCounts(), []
    for uid, (ref, hyp) in zip(ids, pairs):
        w, c = _count(ref, hyp, "word"), _count(ref, hyp, "char")
        words, chars = words + w, chars + c
        rows.append({"id": uid, "ref": ref, "hyp": hyp, "wer": w.rate, "cer": c.rate})
    return {
        "wer": words.rate,
        "cer": chars.rate,
        "substitutions": words.substitutions,
        "deletions": words.deletions,
        "insertions": words.insertions,
        "ref_words": words.ref_len,
        "ref_chars": chars.ref_len,
        "num_utterances": len(pairs),
        "utterances": rows,
    }


def word_alignment(ref: str, hyp: str) -> list[tuple[str, str | None, str | None]]:
    """The word alignment behind the counts: ``(op, ref_word, hyp_word)`` in order, op one of
    "equal", "substitute", "delete" (hyp_word None), "insert" (ref_word None)."""
    r, h = normalize(ref).split(), normalize(hyp).split()
    if not r or not h:
        return [("delete", w, None) for w in r] + [("insert", None, w) for w in h]
    out: list[tuple[str, str | None, str | None]] = []
    for chunk in jiwer.process_words(" ".join(r), " ".join(h)).alignments[0]:
        rs, hs = r[chunk.ref_start_idx : chunk.ref_end_idx], h[chunk.hyp_start_idx : chunk.hyp_end_idx]
        if chunk.type in ("equal", "substitute"):
            out += [(chunk.type, a, b) for a, b in zip(rs, hs)]
        elif chunk.type == "delete":
            out += [("delete", a, None) for a in rs]
        else:
            out += [("insert", None, b) for b in hs]
    return out


def confusions(refs: Sequence[str] | str, hyps: Sequence[str] | str) -> dict[tuple[str | None, str | None], int]:
    """How often each reference word became each hypothesis word, over a corpus, errors only:
    ``{(ref_word, hyp_word): n}`` with None for a deletion's hypothesis or an insertion's reference."""
    counts: dict[tuple[str | None, str | None], int] = {}
    for ref, hyp in _pairs(refs, hyps):
        for op, a, b in word_alignment(ref, hyp):
            if op != "equal":
                counts[(a, b)] = counts.get((a, b), 0) + 1
    return counts
