"""A token-level n-gram language model for shallow fusion in beam search, and ``asrlib ngram``.

    asrlib ngram --tokenizer T (--manifest M | --text F)… [--order 6] --out LM.arpa [--force]

The model counts n-grams of tokenizer pieces (not words: the same units the RNN-T head emits,
so the language model's state is just the last ``order - 1`` pieces and no lexicon is needed;
a letter-level model learns the spelling of words from them). Training text can be the
training manifests' transcripts and any plain text (one sentence per line): text without
audio is what an external language model adds. A sentence with a character the tokenizer lacks
is left out and counted (normalise external text as the transcripts are: case, numbers).

Smoothing is Kneser-Ney (Kneser & Ney 1995) in the interpolated form Chen & Goodman (1998,
"An empirical study of smoothing techniques for language modeling") describe, with one
discount per order, D = n1 / (n1 + 2 n2) from the numbers of n-grams counted once and twice
(Ney, Essen & Kneser 1994). Every order but the highest counts, for an n-gram, how many
different pieces precede it ("continuation counts"; an n-gram that starts with ``<s>`` keeps
its plain count, as nothing can precede it). The lowest order interpolates with the uniform
distribution over the pieces and ``</s>``, so every piece has a probability::

    p(w | h) = max(a(h w) - D, 0) / a(h .) + D * N(h .) / a(h .) * p(w | h')

with a(.) the (continuation) count, a(h .) its sum over w, N(h .) how many w have a(h w) > 0,
and h' the context without its first piece; a context never seen uses p(w | h') alone.

The model is saved as an ARPA file (the standard text format of SRILM and KenLM; log10
probabilities and back-off weights, the words being the tokenizer's pieces, ``<s>`` and
``</s>``), and any ARPA file whose words are the tokenizer's pieces loads: build one with
KenLM (``lmplz -o 6``) from text tokenised into pieces separated by spaces when the text is
large. A piece the file does not list gets the file's ``<unk>`` probability.

Shapes: V pieces; ``logprobs`` returns (V + 1,) natural-log probabilities, the last one ``</s>``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from asrlib.data.manifest import ManifestError
from asrlib.errors import UsageError, refuse_existing_file, report_usage_errors
from asrlib.tokenizer import TokenizerError

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
LN10 = math.log(10.0)
_MIN_LOG10 = -99.0  # ARPA's "probability zero" (the <s> unigram)


class NgramError(UsageError):
    """An ARPA file that cannot be read, or one built for other pieces."""


class NgramLM:
    """A back-off n-gram model over piece ids 0..V-1 (``</s>`` is V, ``<s>`` is V + 1).

    ``probs[k]`` maps a context of k - 1 ids to (next ids, their log10 probabilities) for the
    k-grams the model lists; ``backoffs`` maps a listed n-gram (a context) to its log10
    back-off weight. p(w | h) is the listed probability of h w, else the back-off weight of h
    (1 when h has none) times p(w | h without its first id)."""

    def __init__(self, order: int, pieces: Sequence[str], probs: list[dict], backoffs: dict, unigram: np.ndarray):
        self.order, self.pieces = order, list(pieces)
        self.eos, self.bos = len(self.pieces), len(self.pieces) + 1
        self.probs, self.backoffs = probs, backoffs
        self.unigram = unigram  # (V + 1,) log10 p(w), </s> last
        self._dist = lru_cache(maxsize=1 << 16)(self._dist_uncached)

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def context(self, tokens: Sequence[int]) -> tuple[int, ...]:
        """The state after ``tokens`` (piece ids from the start of the utterance): its last
        order - 1 ids, ``<s>`` in front while it is shorter."""
        keep = self.order - 1
        if keep == 0:
            return ()
        ctx = (self.bos, *tokens[-keep:]) if len(tokens) < keep else tuple(tokens[-keep:])
        return ctx

    def logprobs(self, context: tuple[int, ...]) -> np.ndarray:
        """(V + 1,) natural-log p(w | context) for every piece and ``</s>`` (last)."""
        return self._dist(tuple(context)) * LN10

    def _dist_uncached(self, ctx: tuple[int, ...]) -> np.ndarray:
        """(V + 1,) log10 probabilities after ``ctx``, by the back-off recursion."""
        if not ctx:
            return self.unigram
        out = self._dist(ctx[1:]) + self.backoffs.get(ctx, 0.0)
        listed = self.probs[len(ctx) + 1].get(ctx)
        if listed is not None:
            out = out.copy()
            out[listed[0]] = listed[1]
        return out

    def sentence_logprob(self, tokens: Sequence[int]) -> float:
        """Natural-log p of the whole utterance ``tokens``, ``</s>`` included."""
        total = 0.0
        for i, w in enumerate([*tokens, self.eos]):
            total += float(self.logprobs(self.context(tokens[:i]))[w])
        return total

    # ---- the ARPA format -------------------------------------------------------------------

    def _word(self, i: int) -> str:
        return EOS if i == self.eos else BOS if i == self.bos else self.pieces[i]

    def save_arpa(self, path: str | Path) -> None:
        sections = []
        uni = [(i,) for i in range(self.vocab_size + 1)] + [(self.bos,)]
        sections.append([(g, float(self.unigram[g[0]]) if g[0] != self.bos else _MIN_LOG10) for g in uni])
        for k in range(2, self.order + 1):
            rows = []
            for ctx, (ids, lps) in sorted(self.probs[k].items()):
                rows += [((*ctx, int(w)), float(lp)) for w, lp in zip(ids, lps)]
            sections.append(rows)
        lines = ["", "\\data\\"] + [f"ngram {k}={len(rows)}" for k, rows in enumerate(sections, 1)]
        for k, rows in enumerate(sections, 1):
            lines += ["", f"\\{k}-grams:"]
            for gram, lp in rows:
                words = " ".join(self._word(i) for i in gram)
                bow = self.backoffs.get(gram)
                lines.append(f"{lp:.6f}\t{words}" + (f"\t{bow:.6f}" if bow is not None and k < self.order else ""))
        lines += ["", "\\end\\", ""]
        Path(path).write_text("\n".join(lines), encoding="utf-8")

    @classmethod
    def load_arpa(cls, path: str | Path, pieces: Sequence[str]) -> "NgramLM":
        """Read an ARPA file whose words are ``pieces`` (a tokenizer's, in id order)."""
        path = Path(path)
        if not path.is_file():
            raise NgramError(f"{path}: no such language model file")
        ids = {p: i for i, p in enumerate(pieces)}
        eos, bos = len(pieces), len(pieces) + 1
        ids[EOS], ids[BOS] = eos, bos
        unigrams: dict[int, float] = {}
        # per order, context -> (next ids, their log10 probabilities), grouped while reading
        grouped: dict[int, dict[tuple[int, ...], tuple[list[int], list[float]]]] = defaultdict(dict)
        listed_per_order: dict[int, int] = defaultdict(int)
        backoffs: dict[tuple[int, ...], float] = {}
        counts: dict[int, int] = {}
        order, section = 0, None
        with path.open(encoding="utf-8") as f:
            for n, raw in enumerate(f, 1):
                line = raw.strip()
                if not line:
                    continue
                if line.startswith("ngram ") and section == "data":
                    k, _, c = line[6:].partition("=")
                    counts[int(k)] = int(c)
                    order = max(order, int(k))
                elif line == "\\data\\":
                    section = "data"
                elif line == "\\end\\":
                    break
                elif line.startswith("\\") and line.endswith("-grams:"):
                    section = int(line[1:].split("-")[0])
                elif isinstance(section, int):
                    fields = line.split()
                    if len(fields) not in (section + 1, section + 2):
                        raise NgramError(f"{path}:{n}: expected a log10 probability, {section} words and "
                                         "an optional back-off weight; is this an ARPA file?")
                    try:
                        gram = tuple([ids[w] for w in fields[1 : section + 1]])
                    except KeyError as e:
                        raise NgramError(f"{path}:{n}: '{e.args[0]}' is not a piece of the tokenizer: build the "
                                         "language model from text tokenised with the same tokenizer") from None
                    listed_per_order[section] += 1
                    if section == 1:
                        unigrams[gram[0]] = float(fields[0])
                    else:
                        nexts = grouped[section].setdefault(gram[:-1], ([], []))
                        nexts[0].append(gram[-1])
                        nexts[1].append(float(fields[0]))
                    if len(fields) == section + 2:
                        backoffs[gram] = float(fields[-1])
        if order == 0 or not unigrams:
            raise NgramError(f"{path}: no \\data\\ section or no unigrams: not an ARPA file")
        for k, c in counts.items():
            if listed_per_order[k] != c:
                raise NgramError(f"{path}: the header says {c} {k}-grams, the file lists {listed_per_order[k]}")
        unk_lp = unigrams.get(ids.get(UNK, -1))
        missing = [i for i in range(eos + 1) if i not in unigrams]
        if missing and unk_lp is None:
            raise NgramError(f"{path}: piece '{(list(pieces) + [EOS])[missing[0]]}' has no unigram and the file "
                             "has no <unk> to stand for it")
        unigram = np.array([unigrams.get(i, unk_lp) for i in range(eos + 1)], dtype=np.float64)
        probs: list[dict] = [{}, {}]
        for k in range(2, order + 1):
            table = grouped.pop(k, {})
            for ctx, (w, lp) in table.items():  # in place: one context's lists at a time become arrays
                table[ctx] = (np.array(w, dtype=np.int32), np.array(lp, dtype=np.float32))
            probs.append(table)
        return cls(order, pieces, probs, backoffs, unigram)


def train_kneser_ney(sentences: Iterable[Sequence[int]], pieces: Sequence[str], order: int = 6) -> NgramLM:
    """Interpolated Kneser-Ney over piece-id sentences (see the module docstring), in back-off
    form: a listed k-gram h w gets the interpolated p(w | h), and h the weight D N(h .) / a(h .)
    that multiplies the lower order for every w not listed after it."""
    if order < 1:
        raise UsageError(f"the n-gram order must be at least 1, got {order}")
    V = len(pieces)
    eos, bos = V, V + 1
    raw: list[dict[tuple[int, ...], int]] = [defaultdict(int) for _ in range(order + 1)]
    n_sentences = 0
    for sent in sentences:
        ids = [bos, *sent, eos]
        n_sentences += 1
        for i in range(1, len(ids)):  # every n-gram that ends at position i (<s> is never predicted)
            for k in range(1, min(order, i + 1) + 1):
                raw[k][tuple(ids[i - k + 1 : i + 1])] += 1
    if n_sentences == 0:
        raise UsageError("no training text for the n-gram model")
    # adjusted counts: plain at the top order and for n-grams that start with <s>, else how many
    # different ids precede the n-gram
    adjusted: list[dict[tuple[int, ...], int]] = [defaultdict(int) for _ in range(order + 1)]
    for k in range(1, order + 1):
        for gram, c in raw[k].items():
            if k == order or gram[0] == bos:
                adjusted[k][gram] += c
        if k < order:
            for gram in raw[k + 1]:
                if gram[1] != bos:  # (v, gram...) -> one more distinct predecessor of gram[1:]
                    adjusted[k][gram[1:]] += 1
    probs: list[dict] = [{}, {}]
    backoffs: dict[tuple[int, ...], float] = {}
    unigram = np.zeros(V + 1)
    lower: dict[tuple[int, ...], float] = {}  # the order below's p(w | h), by (h..., w)
    for k in range(1, order + 1):
        n1 = sum(1 for c in adjusted[k].values() if c == 1)
        n2 = sum(1 for c in adjusted[k].values() if c == 2)
        discount = n1 / (n1 + 2 * n2) if n1 and n2 else 0.5
        by_ctx: dict[tuple[int, ...], dict[int, int]] = defaultdict(dict)
        for gram, c in adjusted[k].items():
            by_ctx[gram[:-1]][gram[-1]] = c
        table, here = {}, {}
        for ctx, nexts in by_ctx.items():
            total = sum(nexts.values())
            gamma = discount * len(nexts) / total
            w = list(nexts)
            c = np.array([nexts[x] for x in w], dtype=np.float64)
            # the lower order's p(w | h') is listed for every w listed here: h w occurs, so h' w
            # occurs after something
            below = np.array([lower[(*ctx[1:], x)] for x in w]) if k > 1 else np.full(len(w), 1.0 / (V + 1))
            p = (c - discount).clip(min=0.0) / total + gamma * below
            if k == 1:  # the one empty context: every piece and </s> gets a unigram
                full = np.full(V + 1, gamma / (V + 1))
                full[w] = p
                unigram = np.log10(full)
                here = {(i,): float(full[i]) for i in range(V + 1)}
            else:
                table[ctx] = (np.array(w, dtype=np.int64), np.log10(p))
                backoffs[ctx] = math.log10(gamma)
                here.update({(*ctx, x): float(px) for x, px in zip(w, p)})
        if k > 1:
            probs.append(table)
        lower = here
    return NgramLM(order, pieces, probs, backoffs, unigram)


# ---- command-line use -------------------------------------------------------------------------

def add_decoding_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of shallow fusion, shared by ``asrlib evaluate`` and ``asrlib transcribe``."""
    p.add_argument("--lm", default=None, help="an ARPA n-gram model of the tokenizer's pieces (`asrlib ngram`), "
                   "fused into --decoder rnnt_beam or ctc_beam")
    p.add_argument("--lm-weight", type=float, default=0.3, help="with --lm: weight of its log-probabilities")
    p.add_argument("--token-bonus", type=float, default=None,
                   help="beam searches: score added per emitted token (default 0.5 with --lm, else 0)")


def decoding_options(args: argparse.Namespace, pieces: Sequence[str]) -> dict:
    """``lm``, ``lm_weight`` and ``token_bonus`` for a beam decoder, from the flags above."""
    if args.lm is None and args.token_bonus is None:
        return {"lm": None, "lm_weight": 0.0, "token_bonus": 0.0}
    if args.decoder not in ("rnnt_beam", "ctc_beam"):
        raise UsageError(f"--lm and --token-bonus are for the beam searches (--decoder rnnt_beam or ctc_beam), "
                         f"not {args.decoder}")
    lm = NgramLM.load_arpa(args.lm, pieces) if args.lm is not None else None
    bonus = args.token_bonus if args.token_bonus is not None else (0.5 if lm is not None else 0.0)
    return {"lm": lm, "lm_weight": args.lm_weight if lm is not None else 0.0, "token_bonus": bonus}


def _texts(manifests: Sequence[str], text_files: Sequence[str]) -> Iterable[tuple[str, str]]:
    """(where, sentence) from the manifests' texts and the text files' non-empty lines."""
    from asrlib.data.manifest import read_manifest

    for m in manifests:
        entries, _ = read_manifest(m, strict=False, check_audio=False)
        yield from ((e.where, e.text) for e in entries)
    for t in text_files:
        path = Path(t)
        if not path.is_file():
            raise UsageError(f"{path}: no such text file")
        with path.open(encoding="utf-8") as f:
            yield from ((f"{path}:{i}", line.strip()) for i, line in enumerate(f, 1) if line.strip())


def spelt_sentences(texts: Iterable[tuple[str, str]], tok) -> tuple[list[list[int]], int, tuple[str, str] | None]:
    """The sentences the tokenizer spells without ``<unk>``, as piece ids; the number left out
    and the first one left out (where, text). A sentence with a character the tokenizer lacks
    (other case, digits, accents, punctuation) would teach the model ``<unk>`` in place of the
    letters it has: it is left out and counted, not counted in."""
    sentences, skipped, first = [], 0, None
    for where, text in texts:
        ids = tok.encode(text)
        if tok.unk_id in ids:
            skipped += 1
            first = first or (where, text)
        else:
            sentences.append(ids)
    return sentences, skipped, first


@report_usage_errors("ngram", ManifestError, TokenizerError)
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="asrlib ngram", description="A token-level n-gram language model (ARPA) for "
                                "shallow fusion in RNN-T beam search.")
    p.add_argument("--tokenizer", required=True, help="the model's tokenizer (folder or tokenizer.model)")
    p.add_argument("--manifest", action="append", default=[], help="JSONL manifest whose texts to count (repeatable)")
    p.add_argument("--text", action="append", default=[], help="plain text, one sentence per line (repeatable)")
    p.add_argument("--order", type=int, default=6, help="n-gram order (pieces of context + 1)")
    p.add_argument("--out", required=True, help="the ARPA file to write (a new file)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    args = p.parse_args(argv)
    if not args.manifest and not args.text:
        raise UsageError("give the training text: --manifest M and/or --text F")
    refuse_existing_file(args.out, args.force, [*args.manifest, *args.text], flag="--out")
    from asrlib.tokenizer import Tokenizer

    tok = Tokenizer(args.tokenizer)
    sentences, skipped, first = spelt_sentences(_texts(args.manifest, args.text), tok)
    if first is not None:
        where, text = first
        short = text if len(text) <= 60 else text[:57] + "..."
        if not sentences:
            raise UsageError(f"{where}: no sentence is spelt in the tokenizer's pieces (each has characters it lacks, "
                             f"e.g. {short!r}); normalise the text as the training transcripts are (case, numbers, "
                             "punctuation)")
        print(f"skipped {skipped} of {skipped + len(sentences)} sentences with characters the tokenizer lacks "
              f"(first at {where}: {short!r})")
    lm = train_kneser_ney(sentences, tok.pieces(), args.order)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    lm.save_arpa(args.out)
    n = sum(len(lm.probs[k]) for k in range(2, lm.order + 1))
    print(f"wrote {args.out}: order {lm.order}, {len(sentences)} sentences, {sum(map(len, sentences))} pieces, "
          f"{n} contexts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
