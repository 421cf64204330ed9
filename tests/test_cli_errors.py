"""Every command answers a user's mistake with one line ``asrlib <command>: error: …`` and exit
status 2, and ``--debug`` shows the traceback instead; each class of mistake per command."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_run_folder import one_error_line

from asrlib import cli

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "digits_demo"
AN4 = ROOT / "models" / "an4"  # a model with a phone head
AUDIO = next((ROOT / "data_samples" / "digits" / "audio" / "test_seen").glob("*.flac"))
MANIFEST = ROOT / "data_samples" / "digits" / "test_seen.jsonl"


def cases(tmp: Path) -> list[tuple[str, list[str]]]:
    corrupt = tmp / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 8)
    empty = tmp / "empty.jsonl"
    empty.write_text("")
    lm = tmp / "digits.arpa"  # a language model of the digits tokenizer's pieces
    lm.write_text("\\data\\\nngram 1=2\n\n\\1-grams:\n-0.3\t<unk>\n-0.3\t</s>\n\n\\end\\\n")
    other = tmp / "other.arpa"  # one whose words the digits tokenizer does not have
    other.write_text("\\data\\\nngram 1=2\n\n\\1-grams:\n-0.3\tXYZZY\n-0.3\t</s>\n\n\\end\\\n")
    small_lexicon = tmp / "lexicon.txt"  # 3 phones, where the AN4 model's head has 33
    small_lexicon.write_text("B B IY\nTWO T UW\n")
    renamed = tmp / "renamed_lexicon.txt"  # the AN4 lexicon with its phone Z called ZZ: 33 phones, other ids
    renamed.write_text("\n".join(" ".join("ZZ" if f == "Z" else f for f in line.split("#")[0].split())
                                 for line in (AN4 / "lexicon.txt").read_text().splitlines()) + "\n")
    shouting = tmp / "upper.txt"  # text the digits tokenizer (lower case) cannot spell
    shouting.write_text("NINE NINE\nFOUR\n")
    return [
        ("evaluate", ["evaluate", "--checkpoint", str(tmp / "nope"), "--manifest", str(MANIFEST)]),  # missing checkpoint
        ("evaluate", ["evaluate", "--checkpoint", str(MODEL), "--manifest", str(empty)]),  # empty manifest
        ("evaluate", ["evaluate", "--checkpoint", str(MODEL), "--manifest", str(MANIFEST), "--stream",
                      "--decoder", "ctc_greedy", "--lm", str(lm)]),  # a language model for a greedy decoder
        ("evaluate", ["evaluate", "--checkpoint", str(MODEL), "--manifest", str(MANIFEST), "--decoder", "ctc_beam",
                      "--lm", str(other)]),  # a language model of other pieces, for CTC beam search
        ("evaluate", ["evaluate", "--checkpoint", str(MODEL), "--manifest", str(MANIFEST), "--lm", str(lm)]),  # not beam
        ("evaluate", ["evaluate", "--checkpoint", str(MODEL), "--manifest", str(MANIFEST), "--decoder", "rnnt_beam",
                      "--lm", str(tmp / "nope.arpa")]),  # missing language model
        ("evaluate", ["evaluate", "--checkpoint", str(MODEL), "--manifest", str(MANIFEST), "--decoder", "rnnt_beam",
                      "--lm", str(other)]),  # a language model of other pieces
        ("transcribe", ["transcribe", "--checkpoint", str(MODEL), "--decoder", "rnnt_beam", "--lm", str(MANIFEST),
                        str(AUDIO)]),  # not an ARPA file
        ("ngram", ["ngram", "--tokenizer", str(ROOT / "data_samples" / "digits" / "tokenizer"), "--out",
                   str(tmp / "x.arpa")]),  # no text
        ("ngram", ["ngram", "--tokenizer", str(ROOT / "data_samples" / "digits" / "tokenizer"), "--manifest",
                   str(tmp / "none.jsonl"), "--out", str(tmp / "x.arpa")]),  # missing manifest
        ("ngram", ["ngram", "--tokenizer", str(ROOT / "data_samples" / "digits" / "tokenizer"), "--manifest",
                   str(MANIFEST), "--out", str(lm)]),  # an existing file
        ("ngram", ["ngram", "--tokenizer", str(ROOT / "data_samples" / "digits" / "tokenizer"), "--text",
                   str(shouting), "--out", str(tmp / "y.arpa")]),  # no sentence the tokenizer spells
        ("evaluate", ["evaluate", "--checkpoint", str(MODEL), "--manifest", str(MANIFEST), "--streams", "0"]),
        ("evaluate", ["evaluate", "--checkpoint", str(AN4), "--manifest", str(MANIFEST), "--phone-weight", "0.5"]),  # greedy
        ("evaluate", ["evaluate", "--checkpoint", str(MODEL), "--manifest", str(MANIFEST), "--decoder", "rnnt_beam",
                      "--phone-weight", "0.5"]),  # a model without a phone head
        ("evaluate", ["evaluate", "--checkpoint", str(AN4), "--manifest", str(MANIFEST), "--decoder", "rnnt_beam",
                      "--phone-weight", "0.5", "--lexicon", str(small_lexicon)]),  # another lexicon than the model's
        ("transcribe", ["transcribe", "--checkpoint", str(AN4), "--decoder", "rnnt_beam", "--phone-weight", "0.5",
                        "--lexicon", str(renamed), str(AUDIO)]),  # as many phones as the model's, but other ones
        ("transcribe", ["transcribe", "--checkpoint", str(AN4), "--decoder", "rnnt_beam", "--lexicon",
                        str(small_lexicon), str(AUDIO)]),  # --lexicon without --phone-weight
        ("transcribe", ["transcribe", "--checkpoint", str(tmp / "nope"), str(AUDIO)]),
        ("transcribe", ["transcribe", "--checkpoint", str(MODEL), str(tmp / "missing.wav")]),  # missing audio
        ("transcribe", ["transcribe", "--checkpoint", str(MODEL), str(corrupt)]),  # corrupt audio
        ("transcribe", ["transcribe", "--checkpoint", str(MODEL), "--stream", "--decoder", "ctc_greedy",
                        "--token-bonus", "0.5", str(AUDIO)]),  # a token bonus for a greedy decoder
        ("transcribe", ["transcribe", "--checkpoint", str(MODEL), "--compile", str(AUDIO)]),  # --compile without --stream
        ("average", ["average", str(tmp / "nope.pt"), "--out", str(tmp / "avg")]),  # missing checkpoint
        ("significance", ["significance", str(tmp / "nope.json"), str(tmp / "nope.json")]),  # missing report
        ("speakers", ["speakers", str(tmp / "nope.json")]),  # missing report
        ("compare-stream", ["compare-stream", "--checkpoint", str(tmp / "nope"), "--audio", str(AUDIO)]),
        ("compare-stream", ["compare-stream", "--checkpoint", str(MODEL), "--audio", str(corrupt)]),
        ("export", ["export", "--checkpoint", str(tmp / "nope"), "--out", str(tmp / "exp")]),
        ("train", ["train", "--config", str(tmp / "missing.toml")]),
        ("train", ["train", "--config", str(ROOT / "configs" / "tiny.toml"), "--set", "optim.lr=fast"]),  # bad --set
        ("summary", ["summary", "--config", str(ROOT / "configs" / "tiny.toml"), "--set", "model.encoder.d_modle=3"]),
        ("tokenizer", ["tokenizer", "train", "--manifest", str(tmp / "none.jsonl"), "--vocab-size", "8",
                       "--out", str(tmp / "tok")]),
    ]


def test_each_mistake_is_one_line_and_status_2(tmp_path, capsys):
    for command, argv in cases(tmp_path):
        assert cli.main(argv) == 2, argv
        one_error_line(capsys.readouterr().err, command)


def test_debug_shows_the_traceback(tmp_path):
    before = os.environ.pop("ASRLIB_DEBUG", None)
    try:
        with pytest.raises(FileNotFoundError, match="nope"):
            cli.main(["--debug", "transcribe", "--checkpoint", str(tmp_path / "nope"), str(AUDIO)])
    finally:  # cli.main set it for the rest of the process: put back what was there
        os.environ.pop("ASRLIB_DEBUG", None)
        if before is not None:
            os.environ["ASRLIB_DEBUG"] = before


def test_compile_without_a_cpp_compiler_is_one_line(monkeypatch, capsys):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    assert cli.main(["transcribe", "--checkpoint", str(MODEL), "--stream", "--compile", str(AUDIO)]) == 2
    err = one_error_line(capsys.readouterr().err, "transcribe")
    assert "C++ compiler" in err and "--compile" in err
