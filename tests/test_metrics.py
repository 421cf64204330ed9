"""WER / CER on hand-computed examples and against a plain Levenshtein distance."""

import json
import random

import pytest

from asrlib.metrics import cer, error_report, wer, word_counts


def levenshtein(a, b):
    """Reference edit distance (substitution, deletion, insertion all cost 1)."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def test_hand_computed_wer():
    assert wer(["a b c d"], ["a x c"]) == pytest.approx(2 / 4)  # 1 substitution + 1 deletion
    assert wer(["a b"], ["a b c"]) == pytest.approx(1 / 2)  # 1 insertion
    assert wer("the cat sat", "the cat sat") == 0.0
    assert wer(["a b"], ["c d e f"]) == pytest.approx(4 / 2)  # rates may exceed 1


def test_wer_is_pooled_over_the_corpus_not_averaged():
    # 0 errors / 2 words and 2 deletions / 4 words: 2 / 6, not mean(0, 0.5) = 0.25
    assert wer(["a b", "c d e f"], ["a b", "c d"]) == pytest.approx(2 / 6)


def test_hand_computed_cer():
    assert cer(["abcd"], ["abxd"]) == pytest.approx(1 / 4)
    assert cer(["ab cd"], ["ab d"]) == pytest.approx(1 / 5)  # the space is a character
    assert cer(["Abc"], ["abc"]) == pytest.approx(1 / 3)  # case counts


def test_whitespace_is_normalised():
    assert wer(["  a   b "], ["a b"]) == 0.0
    assert cer(["a  b"], ["a b "]) == 0.0


def test_empty_references():
    assert wer([""], [""]) == 0.0
    assert wer([""], ["x"]) == 1.0 and cer([""], ["xy"]) == 1.0
    # the empty reference adds insertions but no reference words: 2 / 2
    assert wer(["", "a b"], ["x y", "a b"]) == pytest.approx(1.0)
    assert wer(["a b"], [""]) == 1.0  # all deleted


@pytest.mark.parametrize("seed", range(3))
def test_random_sentences_match_levenshtein(seed):
    rng = random.Random(seed)
    words = ["ab", "c", "de", "f", "gh"]
    refs = [" ".join(rng.choices(words, k=rng.randint(1, 8))) for _ in range(20)]
    hyps = [" ".join(rng.choices(words, k=rng.randint(0, 8))) for _ in range(20)]
    word_errors = sum(levenshtein(r.split(), h.split()) for r, h in zip(refs, hyps))
    char_errors = sum(levenshtein(r, h) for r, h in zip(refs, hyps))
    assert wer(refs, hyps) == pytest.approx(word_errors / sum(len(r.split()) for r in refs))
    assert cer(refs, hyps) == pytest.approx(char_errors / sum(len(r) for r in refs))


def test_error_report():
    report = error_report(["a b c d", "x y", ""], ["a x c", "x y", "z"], ids=["u1", "u2", "u3"])
    json.dumps(report)  # serialisable
    assert report["num_utterances"] == 3
    assert (report["substitutions"], report["deletions"], report["insertions"]) == (1, 1, 1)
    assert report["ref_words"] == 6 and report["wer"] == pytest.approx(3 / 6)
    assert report["cer"] == pytest.approx((3 + 0 + 1) / (7 + 3 + 0))
    u1, u2, u3 = report["utterances"]
    assert u1 == {"id": "u1", "ref": "a b c d", "hyp": "a x c", "wer": 0.5, "cer": pytest.approx(3 / 7)}
    assert u2["wer"] == 0.0 and u3["wer"] == 1.0 and u3["cer"] == 1.0
    assert [u["id"] for u in error_report(["a"], ["a"])["utterances"]] == ["0"]


def test_mismatched_inputs_are_explained():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        wer(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="ids"):
        error_report(["a"], ["a"], ids=["x", "y"])


def test_word_alignment_and_confusions_by_hand():
    from asrlib.metrics import confusions, word_alignment

    # ref  M  E  A  D  O  W        hyp  M  E  D  O  V  W  X
    ops = word_alignment("M E A D O W", "M E D O V W X")
    assert [op for op, _, _ in ops].count("equal") == 5
    assert ("delete", "A", None) in ops and ("insert", None, "X") in ops
    errors = [o for o in ops if o[0] != "equal"]
    assert len(errors) == word_counts("M E A D O W", "M E D O V W X").errors == 3
    assert word_alignment("", "A B") == [("insert", None, "A"), ("insert", None, "B")]
    assert word_alignment("A", "") == [("delete", "A", None)]
    got = confusions(["B E", "B D", "E"], ["D E", "B D", "E E"])
    assert got == {("B", "D"): 1, (None, "E"): 1}
