"""Resume survives a damaged newest checkpoint and explains a changed model in one line;
rotation never deletes checkpoints of a later step than the run's own."""

from __future__ import annotations

import pytest
from test_run_folder import one_error_line, train_argv
from test_train import SHORT, make_manifest, tiny_config

from asrlib import checkpoint as ckpt
from asrlib import cli
from asrlib.train import Trainer


@pytest.fixture
def run_of_4(tmp_path):
    """A tiny run of 4 steps with checkpoints at 2 and 4: (output folder, train manifest)."""
    train = make_manifest(tmp_path, SHORT)
    out = tmp_path / "run"
    assert cli.main(train_argv(out, train, None, "trainer.max_steps=4", "trainer.eval_every=2")) == 0
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step-00000002.pt", "step-00000004.pt"]
    return out, train


def test_truncated_newest_checkpoint_falls_back_to_the_previous(run_of_4, capsys):
    out, train = run_of_4
    newest = out / "checkpoints" / "step-00000004.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a crash mid-copy, a full disk
    capsys.readouterr()
    tr = Trainer(tiny_config(out, train, "trainer.max_steps=4", "trainer.eval_every=2", "trainer.resume=auto"))
    tr.setup()
    assert tr.progress.step == 2
    err = capsys.readouterr().err
    assert str(newest) in err and "falling back to" in err and "step-00000002.pt" in err

    # an explicitly named unreadable checkpoint is a one-line error
    assert cli.main(train_argv(out, train, None, "trainer.max_steps=4") + ["--resume", str(newest)]) == 2
    assert str(newest) in one_error_line(capsys.readouterr().err)


def test_model_mismatch_on_resume_is_one_line(run_of_4, capsys):
    out, train = run_of_4
    capsys.readouterr()
    argv = train_argv(out, train, None, "trainer.max_steps=6", "model.encoder.d_model=64") + ["--resume", "auto"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    line = one_error_line(err)
    assert "model.encoder.d_model = 48 in the checkpoint, 64 now" in line
    assert "size mismatch" not in err


def test_rotation_keeps_later_steps(tmp_path):
    for step in (1, 2, 3, 9):
        (tmp_path / f"step-{step:08d}.pt").write_bytes(b"x")
    ckpt.rotate(tmp_path, keep_last=2, up_to_step=3)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000002.pt", "step-00000003.pt",
                                                                 "step-00000009.pt"]


def test_resume_with_another_tokenizer_is_one_line(run_of_4, tmp_path, capsys):
    import json

    from asrlib.tokenizer import Tokenizer, train_tokenizer

    out, train = run_of_4
    texts = ["the quick brown fox jumps over the lazy dog", "pack my box with five dozen liquor jugs",
             "sphinx of black quartz judge my vow", "how vexingly quick daft zebras jump"]
    m = tmp_path / "other.jsonl"
    m.write_text("".join(json.dumps({"audio_filepath": "x.wav", "text": t, "duration": 1.0}) + "\n" for t in texts))
    other = train_tokenizer(m, 32, "bpe", tmp_path / "other")
    assert Tokenizer(other).vocab_size == 32  # same size: only the pieces differ
    capsys.readouterr()
    argv = train_argv(out, train, None, "trainer.max_steps=6", f"tokenizer.tokenizer_path={other.parent}")
    assert cli.main(argv + ["--resume", "auto"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "another tokenizer" in line and str(other) in line


def test_resume_with_other_data_is_one_line(run_of_4, tmp_path, capsys):
    out, _ = run_of_4
    other = make_manifest(tmp_path, SHORT[:2], "other.jsonl")  # the sampler was saved for 3 utterances
    capsys.readouterr()
    assert cli.main(train_argv(out, other, None, "trainer.max_steps=6") + ["--resume", "auto"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "cannot resume" in line and "same data" in line
