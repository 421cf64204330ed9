"""SentencePiece tokenizer: training from manifests, round trip, Cyrillic, case/punctuation."""

from __future__ import annotations

import json

import pytest

from asrlib import tokenizer as tok_mod
from asrlib.tokenizer import Tokenizer, TokenizerError, train_tokenizer

TEXTS = [
    "Привет, мир! Как дела?",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Hello, World. How are you?",
    "The quick brown fox jumps over the lazy dog!",
    "Москва — столица России.",
    "Speech recognition, streaming; Mamba and attention.",
]


@pytest.fixture
def manifests(tmp_path):
    paths = []
    for k in range(2):
        p = tmp_path / f"m{k}.jsonl"
        rows = [{"audio_filepath": f"a{i}.wav", "text": t, "duration": 1.0} for i, t in enumerate(TEXTS[k::2] * 5)]
        p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        paths.append(p)
    return paths


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_round_trip_keeps_case_punctuation_and_cyrillic(manifests, tmp_path, model_type):
    # audio files do not exist: training reads text only
    model = train_tokenizer(manifests, 85, model_type, tmp_path / "tok")
    assert model == tmp_path / "tok" / "tokenizer.model" and (tmp_path / "tok" / "tokenizer.vocab").is_file()
    tok = Tokenizer(tmp_path / "tok")
    assert tok.vocab_size == 85 and tok.unk_id == 0
    for text in TEXTS:
        ids = tok.encode(text)
        assert tok.unk_id not in ids
        assert tok.decode(ids) == text
    assert tok.encode("Hello") != tok.encode("hello")  # no lower-casing
    pieces = "".join(tok.piece(i) for i in tok.encode("Привет, мир!"))
    assert pieces.replace("▁", " ").strip() == "Привет, мир!"


def test_unknown_character_is_unk(manifests, tmp_path):
    tok = Tokenizer(train_tokenizer(manifests, 85, "bpe", tmp_path / "tok"))
    ids = tok.encode("☃")
    assert tok.unk_id in ids and all(tok.piece(i) in ("▁", "<unk>") for i in ids)


def test_training_is_reproducible(manifests, tmp_path):
    a = train_tokenizer(manifests, 85, "unigram", tmp_path / "a").read_bytes()
    b = train_tokenizer(manifests, 85, "unigram", tmp_path / "b").read_bytes()
    assert a == b


def test_load_from_model_path_and_errors(manifests, tmp_path):
    model = train_tokenizer(manifests, 85, "bpe", tmp_path / "tok")
    assert Tokenizer(model).encode("Hello") == Tokenizer(tmp_path / "tok").encode("Hello")
    with pytest.raises(TokenizerError, match="no tokenizer at .*missing"):
        Tokenizer(tmp_path / "missing")
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        Tokenizer(model).decode([85])  # the blank id of the heads


def test_cli_refuses_overwrite_without_force(manifests, tmp_path, capsys):
    base = ["train", "--manifest", str(manifests[0]), "--manifest", str(manifests[1]), "--model-type", "bpe", "--out", str(tmp_path / "tok")]
    assert tok_mod.main(base + ["--vocab-size", "85"]) == 0
    before = (tmp_path / "tok" / "tokenizer.model").read_bytes()
    assert tok_mod.main(base + ["--vocab-size", "82"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "tok" / "tokenizer.model").read_bytes() == before
    assert tok_mod.main(base + ["--vocab-size", "82", "--force"]) == 0
    assert Tokenizer(tmp_path / "tok").vocab_size == 82


def test_too_large_vocab_is_a_clear_error(manifests, tmp_path):
    with pytest.raises(TokenizerError, match="vocab_size=5000"):
        train_tokenizer(manifests, 5000, "unigram", tmp_path / "tok")


def test_char_tokenizer_has_one_piece_per_character(manifests, tmp_path):
    tok = Tokenizer(train_tokenizer(manifests, 0, "char", tmp_path / "tok"))
    chars = {c for t in TEXTS for c in t if c != " "}
    pieces = {tok.piece(i) for i in range(tok.vocab_size)}
    assert pieces == chars | {"<unk>", "▁"}  # every character, the word-start marker, unk: nothing more
    for text in TEXTS:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert all(len(tok.piece(i)) == 1 for i in ids)
    # a lone word-start piece emitted last, first or twice in a row (as a letter model's decoder can)
    # is a word boundary, not text: single spaces between the words, none at the ends
    ids = tok.encode("Hello World")
    space = ids[0]
    assert tok.piece(space) == "▁"
    assert tok.decode([*ids, space]) == "Hello World"
    assert tok.decode([space, *ids]) == "Hello World"
    i = ids.index(space, 1)
    assert tok.decode([*ids[:i], space, *ids[i:]]) == "Hello World"
    with pytest.raises(TokenizerError, match="vocab_size must be > 0 for a bpe"):
        train_tokenizer(manifests, 0, "bpe", tmp_path / "bpe")
    with pytest.raises(TokenizerError, match="one piece per character"):  # a bound would turn letters into <unk>
        train_tokenizer(manifests, 10, "char", tmp_path / "char10")
