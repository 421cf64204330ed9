"""``asrlib evaluate`` is honest about what it scores and never destroys a file:

- bad lines (missing audio, negative duration) and corrupt audio are left out of the WER,
  counted by reason in the JSON's ``skipped`` and announced; a corrupt file does not abort;
- an empty manifest is an error, not "WER 0.00 %";
- ``--json`` refuses an existing file (unless ``--force``) and always refuses an input;
- the tokenizer travels with the checkpoint: it decodes with the tokenizer folder gone; a
  different tokenizer of the same size, or a model folder without one, is a one-line error.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from test_run_folder import one_error_line
from test_train import DIGITS, SHORT, make_manifest, tiny_config

from asrlib import evaluate
from asrlib.tokenizer import Tokenizer, train_tokenizer
from asrlib.train import Trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1-step tiny run whose tokenizer copy is deleted afterwards: (checkpoint, best_model folder)."""
    tmp = tmp_path_factory.mktemp("eval")
    tok = tmp / "tok"
    shutil.copytree(DIGITS / "tokenizer", tok)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = tiny_config(tmp / "run", make_manifest(tmp, SHORT), "trainer.max_steps=1", f"tokenizer.tokenizer_path={tok}",
                      valid=make_manifest(tmp, [13], "valid.jsonl"))
    tr = Trainer(cfg)
    tr.setup()
    tr.fit()
    torch.set_num_threads(n)
    shutil.rmtree(tok)  # the model must not need it any more
    return tmp / "run" / "checkpoints" / "step-00000001.pt", tmp / "run" / "best_model"


def test_bad_lines_and_corrupt_audio_are_skipped_counted_and_reported(trained, tmp_path, capsys):
    rows = [json.loads(line) for line in make_manifest(tmp_path, SHORT[:2]).read_text().splitlines()]
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEgarbage" * 10)
    lines = [rows[0],
             {**rows[0], "audio_filepath": str(tmp_path / "missing.wav")},
             {**rows[0], "duration": -1.0},
             {**rows[0], "audio_filepath": str(corrupt)},
             rows[1]]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in lines))
    report = tmp_path / "report.json"
    assert evaluate.main(["--checkpoint", str(trained[0]), "--manifest", str(manifest), "--json", str(report)]) == 0
    r = json.loads(report.read_text())
    assert r["num_utterances"] == 2  # the two good lines, around a corrupt file
    assert r["skipped"]["total"] == 3
    assert r["skipped"]["reasons"] == {"audio file not found": 1, "bad duration": 1, "unreadable audio": 1}
    assert r["skipped"]["first"] == {"audio file not found": f"{manifest}:2", "bad duration": f"{manifest}:3",
                                     "unreadable audio": f"{manifest}:4"}
    err = capsys.readouterr().err
    assert "skipped 3 lines" in err and f"{manifest}:4" in err


def test_empty_manifest_is_an_error(trained, tmp_path, capsys):
    manifest = tmp_path / "empty.jsonl"
    manifest.write_text("\n")
    assert evaluate.main(["--checkpoint", str(trained[0]), "--manifest", str(manifest)]) == 2
    line = one_error_line(capsys.readouterr().err, "evaluate")
    assert str(manifest) in line and "no usable utterance" in line


def test_json_never_overwrites_without_force_and_never_an_input(trained, tmp_path, capsys):
    manifest = make_manifest(tmp_path, SHORT[:1])
    manifest_text = manifest.read_text()
    mine = tmp_path / "notes.json"
    mine.write_text("my own notes\n")
    base = ["--checkpoint", str(trained[0]), "--manifest", str(manifest)]

    assert evaluate.main(base + ["--json", str(mine)]) == 2
    assert "--force" in one_error_line(capsys.readouterr().err, "evaluate")
    assert mine.read_text() == "my own notes\n"

    assert evaluate.main(base + ["--json", str(manifest), "--force"]) == 2  # even with --force
    assert "inputs" in one_error_line(capsys.readouterr().err, "evaluate")
    assert manifest.read_text() == manifest_text

    assert evaluate.main(base + ["--json", str(mine), "--force"]) == 0
    assert json.loads(mine.read_text())["num_utterances"] == 1


def test_the_tokenizer_travels_with_the_checkpoint(trained, tmp_path, capsys):
    manifest = make_manifest(tmp_path, SHORT[:1])
    # the folder the run was trained with is gone (fixture): the checkpoint still decodes
    assert evaluate.main(["--checkpoint", str(trained[0]), "--manifest", str(manifest)]) == 0

    texts = ["the quick brown fox jumps over the lazy dog", "pack my box with five dozen liquor jugs",
             "sphinx of black quartz judge my vow", "how vexingly quick daft zebras jump"]
    other_manifest = tmp_path / "other.jsonl"
    other_manifest.write_text("".join(json.dumps({"audio_filepath": "x.wav", "text": t, "duration": 1.0}) + "\n"
                                      for t in texts))
    other = train_tokenizer(other_manifest, 32, "bpe", tmp_path / "other")
    assert Tokenizer(other).vocab_size == 32  # same size as the model's tokenizer, different pieces
    for ck in trained:
        capsys.readouterr()
        assert evaluate.main(["--checkpoint", str(ck), "--manifest", str(manifest), "--tokenizer", str(other)]) == 2
        line = one_error_line(capsys.readouterr().err, "evaluate")
        assert str(other) in line and "not the tokenizer" in line

    # the right one, given explicitly, is accepted
    assert evaluate.main(["--checkpoint", str(trained[0]), "--manifest", str(manifest),
                          "--tokenizer", str(DIGITS / "tokenizer")]) == 0

    folder = tmp_path / "no_tok"
    shutil.copytree(trained[1], folder)
    (folder / "tokenizer.model").unlink()
    capsys.readouterr()
    assert evaluate.main(["--checkpoint", str(folder), "--manifest", str(manifest)]) == 2
    line = one_error_line(capsys.readouterr().err, "evaluate")
    assert str(folder) in line and "--tokenizer" in line


def test_compare_stream_json_never_overwrites(trained, tmp_path, capsys):
    from asrlib import compare

    audio = str(DIGITS / json.loads((DIGITS / "train.jsonl").read_text().splitlines()[0])["audio_filepath"])
    mine = tmp_path / "notes.json"
    mine.write_text("my own notes\n")
    base = ["--checkpoint", str(trained[1]), "--audio", audio]
    assert compare.main(base + ["--json", str(mine)]) == 2
    assert "--force" in one_error_line(capsys.readouterr().err, "compare-stream")
    assert mine.read_text() == "my own notes\n"
    compare.main(base + ["--json", str(mine), "--force"])
    assert json.loads(mine.read_text())["audio"] == audio


def test_transcribe_uses_the_checkpoints_own_tokenizer(trained, capsys):
    from asrlib import transcribe

    audio = str(DIGITS / json.loads((DIGITS / "train.jsonl").read_text().splitlines()[0])["audio_filepath"])
    assert transcribe.main(["--checkpoint", str(trained[0]), audio]) == 0  # its tokenizer folder is gone
    assert capsys.readouterr().out.startswith(audio)


def test_a_line_with_an_offset_key_is_a_segment_as_in_training(trained, tmp_path):
    """One rule for every reader: an ``offset`` key (even 0) means read [offset, offset + duration);
    without it the whole file is read, whatever its stated duration."""
    import soundfile as sf

    from asrlib.checkpoint import load_model_and_tokenizer
    from asrlib.data.dataset import AudioDataset
    from asrlib.data.manifest import read_manifest

    row = json.loads(make_manifest(tmp_path, [6]).read_text())
    real = sf.info(row["audio_filepath"]).duration
    segment = dict(row, offset=0.0, duration=0.4)
    stated_wrong = dict(row, duration=0.4)  # no offset key: the whole file
    model, tok = load_model_and_tokenizer(trained[1])
    for line, seconds in ((segment, 0.4), (stated_wrong, real)):
        path = tmp_path / "m.jsonl"
        path.write_text(json.dumps(line) + "\n")
        report = evaluate.evaluate_manifest(model, tok, path)
        entries, _ = read_manifest(path, strict=False)
        wave = AudioDataset(entries, 16000)[0][0]
        assert report["audio_seconds"] == pytest.approx(seconds, abs=1e-3)
        assert len(wave) / 16000 == pytest.approx(seconds, abs=1e-3)
