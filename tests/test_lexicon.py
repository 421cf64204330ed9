"""The pronunciation lexicon (asrlib/lexicon.py): its file format, the phone targets it spells,
its one-line errors, and the AN4 lexicon shipped in data_samples/an4/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from asrlib.config import load_config
from asrlib.errors import UsageError
from asrlib.lexicon import Lexicon, LexiconError, phone_lexicon

ROOT = Path(__file__).resolve().parents[1]
AN4 = ROOT / "data_samples" / "an4"

# CMUdict's 39 ARPAbet phones (no stress marks): the inventory a hand lexicon must stay within
ARPABET = set("AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH UH UW V W "
              "Y Z ZH".split())


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lexicon.txt"
    path.write_text(text, encoding="utf-8")
    return path


def test_read_ignores_comments_and_blank_lines_and_numbers_the_sorted_phones(tmp_path):
    lex = Lexicon.read(write(tmp_path, "# a header\n\nB  B IY   # the letter\nD D IY\n  W D AH B AH L Y UW\n"))
    assert lex.phones == ["AH", "B", "D", "IY", "L", "UW", "Y"]
    assert lex.size == 7 and lex.blank == 7
    assert lex.pronunciations["W"] == ("D", "AH", "B", "AH", "L", "Y", "UW")
    # B D W = B IY | D IY | D AH B AH L Y UW, by the index of each phone in the list above
    assert lex.encode("B D W") == [1, 3, 2, 3, 2, 0, 1, 0, 4, 6, 5]


def test_targets_are_padded_with_zeros_and_carry_their_lengths(tmp_path):
    lex = Lexicon.read(write(tmp_path, "B B IY\nD D IY\nOH OW\n"))  # phones: B D IY OW
    phones, lengths = lex.targets(["OH", "B D", "D"])
    assert phones.dtype == torch.long and lengths.tolist() == [1, 4, 2]
    assert phones.tolist() == [[3, 0, 0, 0], [0, 2, 1, 2], [1, 2, 0, 0]]


@pytest.mark.parametrize("text, where, what", [
    ("B B IY\nD\n", ":2:", "'D' has no phones"),
    ("B B IY\nD D IY\nB B EE\n", ":3:", "'B' again (first at line 1)"),
    ("# nothing but a comment\n", "lexicon.txt", "no word in it"),
])
def test_a_malformed_file_is_one_line_naming_the_line(tmp_path, text, where, what):
    with pytest.raises(LexiconError) as e:
        Lexicon.read(write(tmp_path, text))
    msg = str(e.value)
    assert where in msg and what in msg and "\n" not in msg
    assert isinstance(e.value, UsageError)  # every command reports it as one line, no traceback


def test_an_unreadable_file_names_the_key_to_fix(tmp_path):
    with pytest.raises(LexiconError, match="loss.phone_lexicon"):
        Lexicon.read(tmp_path / "absent.txt")


def test_words_the_lexicon_lacks_are_counted_and_named(tmp_path):
    lex = Lexicon.read(write(tmp_path, "B B IY\n"))
    assert lex.missing(["B C", "C D C"]) == {"C": 3, "D": 1}
    with pytest.raises(LexiconError, match=r"lacks 2 word\(s\) of the test set: 'C' \(3x\), 'D' \(1x\)"):
        lex.check_covers(["B C", "C D C"], "the test set")
    lex.check_covers(["B", "B B"], "the test set")  # covered: no error
    with pytest.raises(LexiconError, match="no word 'C'"):
        lex.encode("B C")


def test_phone_lexicon_sizes_the_model_and_checks_the_config(tmp_path):
    path = write(tmp_path, "B B IY\nD D IY\nOH OW\n")
    cfg = load_config(None, ["loss.phone_ctc_weight=0.3", f"loss.phone_lexicon={path}"])
    lex = phone_lexicon(cfg, ["B D", "OH"])
    assert lex.size == 4 and cfg.model.phone_vocab_size == 4
    cfg = load_config(None, ["loss.phone_ctc_weight=0.3", f"loss.phone_lexicon={path}", "model.phone_vocab_size=5"])
    with pytest.raises(LexiconError, match="model.phone_vocab_size = 5 but the lexicon .* has 4 phones"):
        phone_lexicon(cfg, ["B"])
    cfg = load_config(None, ["loss.phone_ctc_weight=0.3", f"loss.phone_lexicon={path}"])
    with pytest.raises(LexiconError, match="'ZERO'"):
        phone_lexicon(cfg, ["B ZERO"])
    assert phone_lexicon(load_config(None, []), ["anything"]) is None  # no phone CTC: no lexicon
    with pytest.raises(LexiconError, match="would never train"):
        phone_lexicon(load_config(None, ["model.phone_vocab_size=4"]), ["B"])


def test_the_shipped_an4_lexicon_spells_every_word_of_both_splits_in_arpabet():
    lex = Lexicon.read(AN4 / "lexicon.txt")
    texts = [json.loads(line)["text"] for name in ("train.jsonl", "dev.jsonl")
             for line in (AN4 / name).read_text().splitlines()]
    lex.check_covers(texts, "data_samples/an4")
    assert set(lex.phones) <= ARPABET
    words = {w for t in texts for w in t.split()}
    assert set(lex.pronunciations) == words  # no word the corpus never says
    # the letters the recipe confuses most share their vowel and differ in the onset
    e_set = {w: lex.pronunciations[w] for w in "B C D E G P T V Z".split()}
    assert all(p[-1] == "IY" for p in e_set.values()) and len(set(e_set.values())) == len(e_set)
