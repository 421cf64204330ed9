"""The token-level n-gram model: Kneser-Ney against its definition computed by scanning the
corpus, normalisation, the ARPA format against hand-computed back-off, and ``asrlib ngram``."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import numpy as np
import pytest

from asrlib.ngram import NgramError, NgramLM, main, train_kneser_ney

ROOT = Path(__file__).resolve().parents[1]
PIECES = ["a", "b", "c", "d"]
V = len(PIECES)
EOS, BOS = V, V + 1


def corpus(seed: int, n: int = 40) -> list[list[int]]:
    """Sentences of 0..7 pieces from a skewed Markov chain (repeats and never-seen n-grams)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s, prev = [], 0
        for _ in range(rng.randint(0, 7)):
            prev = rng.choice([prev, prev, (prev + 1) % V, rng.randrange(V)])
            s.append(prev)
        out.append(s)
    return out


def slow_kneser_ney(sentences: list[list[int]], order: int):
    """p(w | h) by the definition (module docstring of asrlib/ngram.py), every count found by
    scanning the padded sentences."""
    padded = [[BOS, *s, EOS] for s in sentences]

    def occurrences(g):  # times g occurs, <s> never predicted (so a gram never starts after position 0 with <s>)
        k = len(g)
        return sum(1 for p in padded for i in range(len(p) - k + 1) if tuple(p[i : i + k]) == g)

    def a(g):  # the adjusted count
        if len(g) == order or g[0] == BOS:
            return occurrences(g)
        return sum(1 for x in range(V + 2) if occurrences((x, *g)) > 0)

    def grams(k):
        return {tuple(p[i : i + k]) for p in padded for i in range(len(p) - k + 1) if p[i + k - 1] != BOS}

    discounts = {}
    for k in range(1, order + 1):
        counts = [a(g) for g in grams(k)]
        n1, n2 = counts.count(1), counts.count(2)
        discounts[k] = n1 / (n1 + 2 * n2) if n1 and n2 else 0.5

    def p(w, h):
        k = len(h) + 1
        lower = 1.0 / (V + 1) if k == 1 else p(w, h[1:])
        nexts = {x: a((*h, x)) for x in range(V + 1)}
        total = sum(nexts.values())
        if total == 0:
            return lower
        d = discounts[k]
        return max(nexts[w] - d, 0) / total + d * sum(c > 0 for c in nexts.values()) / total * lower

    return p


@pytest.mark.parametrize("order, seed", [(1, 0), (2, 1), (3, 2), (4, 3)])
def test_kneser_ney_equals_its_definition(order, seed):
    sentences = corpus(seed)
    lm = train_kneser_ney(sentences, PIECES, order)
    ref = slow_kneser_ney(sentences, order)
    contexts = {lm.context(list(h)) for n in range(order + 1) for h in itertools.product(range(V), repeat=n)}
    assert len(contexts) > 1 or order == 1
    for ctx in contexts:  # seen and unseen contexts, and the <s>-padded ones of short histories
        got = np.exp(lm.logprobs(ctx))
        want = [ref(w, ctx) for w in range(V + 1)]
        np.testing.assert_allclose(got, want, rtol=1e-9, err_msg=str(ctx))


@pytest.mark.parametrize("order", [1, 2, 3, 5, 7])
def test_every_context_is_a_distribution(order):
    lm = train_kneser_ney(corpus(7, 60), PIECES, order)
    rng = random.Random(order)
    for _ in range(200):
        ctx = lm.context([rng.randrange(V) for _ in range(rng.randint(0, 9))])
        p = np.exp(lm.logprobs(ctx))
        assert p.min() > 0 and p.sum() == pytest.approx(1.0, abs=1e-12)


def test_sentence_logprob_is_the_chain_rule():
    lm = train_kneser_ney(corpus(3), PIECES, 3)
    ref = slow_kneser_ney(corpus(3), 3)
    s = [0, 0, 1, 3]
    want = sum(math.log(ref(w, lm.context(s[:i]))) for i, w in enumerate([*s, EOS]))
    assert lm.sentence_logprob(s) == pytest.approx(want, rel=1e-9)


def test_arpa_round_trip(tmp_path):
    lm = train_kneser_ney(corpus(5, 80), PIECES, 4)
    path = tmp_path / "lm.arpa"
    lm.save_arpa(path)
    again = NgramLM.load_arpa(path, PIECES)
    for ctx in {lm.context(list(h)) for n in range(4) for h in itertools.product(range(V), repeat=n)}:
        np.testing.assert_allclose(again.logprobs(ctx), lm.logprobs(ctx), atol=1e-5)  # 6 decimals of log10
    text = path.read_text()
    assert "\\data\\" in text and "ngram 4=" in text and "\\end\\" in text


ARPA = """
\\data\\
ngram 1=4
ngram 2=2

\\1-grams:
-1.0\t<unk>
-0.5\ta\t-0.2
-0.7\t</s>
-99\t<s>\t-0.1

\\2-grams:
-0.1\t<s> a
-0.3\ta </s>

\\end\\
"""


def test_arpa_back_off_by_hand(tmp_path):
    """A file written by hand (as KenLM writes one): listed probabilities, back-off weights times
    the lower order elsewhere, and <unk>'s probability for a piece the file does not list."""
    path = tmp_path / "hand.arpa"
    path.write_text(ARPA)
    lm = NgramLM.load_arpa(path, ["<unk>", "a", "b"])  # "b" is not in the file
    ln = math.log(10)
    unk, a, b, eos = 0, 1, 2, 3
    after_bos = lm.logprobs(lm.context([]))
    assert after_bos[a] == pytest.approx(-0.1 * ln)  # listed
    assert after_bos[eos] == pytest.approx((-0.1 - 0.7) * ln)  # bow(<s>) * p(</s>)
    assert after_bos[b] == pytest.approx((-0.1 - 1.0) * ln)  # bow(<s>) * p(<unk>)
    after_a = lm.logprobs(lm.context([a]))
    assert after_a[eos] == pytest.approx(-0.3 * ln)
    assert after_a[a] == pytest.approx((-0.2 - 0.5) * ln)
    assert after_a[unk] == pytest.approx((-0.2 - 1.0) * ln)
    assert lm.sentence_logprob([a, a]) == pytest.approx((-0.1 - 0.7 - 0.3) * ln)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("ngram 2=2", "ngram 2=3"), "header says 3 2-grams"),
    (lambda t: t.replace("-0.3\ta </s>", "-0.3\ta"), "hand.arpa:14: expected a log10 probability"),
    (lambda t: t.replace("-1.0\t<unk>\n", "").replace("ngram 1=4", "ngram 1=3"), "piece '<unk>' has no unigram and the file has no <unk>"),
    (lambda t: "just text\n", "not an ARPA file"),
])
def test_bad_arpa_files_say_where_and_what(tmp_path, edit, message):
    path = tmp_path / "hand.arpa"
    path.write_text(edit(ARPA))
    with pytest.raises(NgramError, match=message):
        NgramLM.load_arpa(path, ["<unk>", "a", "b"])


def test_cli_counts_manifest_and_text(tmp_path, capsys):
    """Text without audio (--text) is what an external language model adds: a sentence of it
    becomes likelier than in the model of the manifest's texts alone."""
    from asrlib.tokenizer import Tokenizer

    tok = ROOT / "data_samples" / "digits" / "tokenizer"
    manifest = str(ROOT / "data_samples" / "digits" / "train.jsonl")
    text = tmp_path / "more.txt"
    text.write_text("nine nine nine nine\n\nfour four four four\n")
    both, alone = tmp_path / "lm" / "both.arpa", tmp_path / "alone.arpa"
    assert main(["--tokenizer", str(tok), "--manifest", manifest, "--text", str(text), "--order", "3",
                 "--out", str(both)]) == 0
    assert "order 3" in capsys.readouterr().out
    assert main(["--tokenizer", str(tok), "--manifest", manifest, "--order", "3", "--out", str(alone)]) == 0
    t = Tokenizer(tok)
    with_text, without = NgramLM.load_arpa(both, t.pieces()), NgramLM.load_arpa(alone, t.pieces())
    assert with_text.order == 3
    s = t.encode("four four four four")
    assert with_text.sentence_logprob(s) > without.sentence_logprob(s) + 1.0
    before = both.read_bytes()
    assert main(["--tokenizer", str(tok), "--text", str(text), "--out", str(both)]) == 2  # never overwritten
    assert both.read_bytes() == before


def test_cli_leaves_out_sentences_the_tokenizer_cannot_spell(tmp_path, capsys):
    """A line with characters the tokenizer lacks (the digits tokenizer is lower case) would put
    <unk> where letters were: it is left out and counted, and the model is the one of the other
    lines, byte for byte; the file written is not touched when no line is left."""
    tok = str(ROOT / "data_samples" / "digits" / "tokenizer")
    mixed, clean = tmp_path / "mixed.txt", tmp_path / "clean.txt"
    mixed.write_text("nine nine four\nNINE NINE\n\nfour one\nfünf\n")
    clean.write_text("nine nine four\nfour one\n")
    a, b = tmp_path / "a.arpa", tmp_path / "b.arpa"
    assert main(["--tokenizer", tok, "--text", str(mixed), "--order", "3", "--out", str(a)]) == 0
    out = capsys.readouterr().out
    assert f"skipped 2 of 4 sentences with characters the tokenizer lacks (first at {mixed}:2: 'NINE NINE')" in out
    assert "2 sentences" in out
    assert main(["--tokenizer", tok, "--text", str(clean), "--order", "3", "--out", str(b)]) == 0
    assert a.read_bytes() == b.read_bytes()
    upper = tmp_path / "upper.txt"
    upper.write_text("NINE\nFÜNF\n")
    assert main(["--tokenizer", tok, "--text", str(upper), "--out", str(tmp_path / "c.arpa")]) == 2
    assert f"{upper}:1: no sentence is spelt in the tokenizer's pieces" in capsys.readouterr().err
    assert not (tmp_path / "c.arpa").exists()


def test_the_shipped_an4_language_model_is_what_its_command_builds(tmp_path):
    """models/an4/lm.arpa comes from the command in models/an4/README.md, byte for byte."""
    shipped = ROOT / "models" / "an4" / "lm.arpa"
    if not shipped.is_file():
        pytest.skip("models/an4/lm.arpa not built")
    out = tmp_path / "lm.arpa"
    assert main(["--tokenizer", str(ROOT / "models" / "an4" / "tokenizer.model"), "--manifest",
                 str(ROOT / "data_samples" / "an4" / "train.jsonl"), "--order", "8", "--out", str(out)]) == 0
    assert out.read_bytes() == shipped.read_bytes()


def test_kenlm_reads_our_arpa_files_to_the_same_probabilities(tmp_path):
    """KenLM (an independent ARPA reader, where installed: `pip install kenlm`) scores sentences,
    seen and random, with the probabilities our back-off recursion gives."""
    kenlm = pytest.importorskip("kenlm")
    lm = train_kneser_ney(corpus(9, 120), PIECES, 5)  # the pip build of KenLM stops at order 6
    path = tmp_path / "lm.arpa"
    lm.save_arpa(path)
    theirs = kenlm.Model(str(path))
    rng = random.Random(1)
    sentences = corpus(9, 30) + [[rng.randrange(V) for _ in range(rng.randint(0, 12))] for _ in range(100)]
    for s in sentences:
        words = " ".join(PIECES[i] for i in s)
        assert theirs.score(words, bos=True, eos=True) == pytest.approx(lm.sentence_logprob(s) / math.log(10),
                                                                        abs=1e-5)
