"""A run folder never loses work: a second run into it is refused (or, with --force, the
earlier run is moved aside, never deleted); an empty validation set, an unwritable folder and
a full disk are one-line errors before training; a failed checkpoint write names the folder;
training reports the utterances it skipped, by reason.
"""

from __future__ import annotations

import json
from collections import namedtuple

import pytest
from test_train import SHORT, TINY, make_manifest

from asrlib import cli
from asrlib import checkpoint as ckpt
from asrlib.logger import read_metrics


def train_argv(out, train, valid=None, *extra: str) -> list[str]:
    sets = [f"trainer.output_dir={out}", f"train_dataset.train_manifest={train}",
            f"validation_dataset.validation_manifest={valid}" if valid else "validation_dataset.validation_manifest=[]",
            "trainer.max_steps=2", "trainer.eval_every=2", "trainer.progress_bar=false",
            "logger.log_to_tensorboard=false", "trainer.log_every=1", *extra]
    argv = ["train", "--config", str(TINY)]
    for s in sets:
        argv += ["--set", s]
    return argv


def one_error_line(err: str, command: str = "train") -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(f"asrlib {command}: error: "), err[-2000:]
    assert "Traceback" not in err
    return lines[-1]


def test_second_run_into_the_same_folder_is_refused_and_force_keeps_the_first(tmp_path, capsys):
    train = make_manifest(tmp_path, SHORT)
    valid = make_manifest(tmp_path, [13], "valid.jsonl")
    out = tmp_path / "run"
    assert cli.main(train_argv(out, train, valid)) == 0
    first_best = (out / "checkpoints" / "best.pt").read_bytes()
    first_metrics = (out / "metrics.jsonl").read_text()
    first_weights = (out / "best_model" / "model.safetensors").read_bytes()
    capsys.readouterr()

    assert cli.main(train_argv(out, train, valid, "trainer.max_steps=1", "trainer.eval_every=1")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--resume auto" in line and "--force" in line and str(out) in line
    assert (out / "checkpoints" / "best.pt").read_bytes() == first_best  # nothing touched
    assert (out / "metrics.jsonl").read_text() == first_metrics
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step-00000002.pt"]

    # --force: the earlier run is moved aside whole; the new run's files are its own
    argv = train_argv(out, train, valid, "trainer.max_steps=1", "trainer.eval_every=1") + ["--force"]
    assert cli.main(argv) == 0
    (earlier,) = (out / "earlier-runs").iterdir()
    assert (earlier / "checkpoints" / "best.pt").read_bytes() == first_best
    assert (earlier / "best_model" / "model.safetensors").read_bytes() == first_weights
    assert (earlier / "metrics.jsonl").read_text() == first_metrics
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step-00000001.pt"]
    assert [m["step"] for m in read_metrics(out) if m["split"] == "train"] == [1]  # not mixed with run 1
    assert ckpt.load_checkpoint(out / "checkpoints" / "best.pt")["progress"]["step"] == 1

    # --resume auto continues the new run, not the earlier one
    assert cli.main(train_argv(out, train, valid, "trainer.max_steps=2", "trainer.eval_every=1")
                    + ["--resume", "auto"]) == 0
    assert "resumed from" in capsys.readouterr().err
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step-00000001.pt", "step-00000002.pt"]
    assert [m["step"] for m in read_metrics(out) if m["split"] == "train"] == [1, 2]


@pytest.mark.parametrize("how", ["empty", "filtered"])
def test_empty_validation_set_is_an_error_before_training(tmp_path, capsys, how):
    train = make_manifest(tmp_path, SHORT)
    if how == "empty":
        valid = tmp_path / "valid.jsonl"
        valid.write_text("")
        extra = []
    else:
        valid = make_manifest(tmp_path, [13], "valid.jsonl")
        extra = ["validation_dataset.max_duration=0.01"]  # every line longer: all filtered out
    out = tmp_path / "run"
    assert cli.main(train_argv(out, train, valid, *extra)) == 2
    err = capsys.readouterr().err
    line = one_error_line(err)
    assert str(valid) in line and "no usable utterance" in line
    assert "step 1" not in err and not (out / "checkpoints").exists()  # no training happened


def test_unwritable_output_folder_is_an_error_before_training(tmp_path, capsys):
    train = make_manifest(tmp_path, SHORT)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / "run"  # cannot be created (root ignores permissions, not this)
    assert cli.main(train_argv(out, train)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(out) in line and "trainer.output_dir" in line
    assert blocker.read_text() == "not a folder"


def test_full_disk_is_an_error_before_training(tmp_path, capsys, monkeypatch):
    import asrlib.run_folder as rf

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(rf.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    out = tmp_path / "run"
    assert cli.main(train_argv(out, make_manifest(tmp_path, SHORT))) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(out) in line and "MiB free" in line
    assert not (out / "checkpoints").exists()


def test_failed_checkpoint_write_names_the_folder(tmp_path, capsys, monkeypatch):
    def no_space(obj, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "atomic_save", no_space)
    out = tmp_path / "run"
    assert cli.main(train_argv(out, make_manifest(tmp_path, SHORT))) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(out / "checkpoints") in line and "No space left on device" in line and "--resume auto" in line


@pytest.mark.parametrize("workers", [0, 2])
def test_training_reports_skipped_utterances_by_reason(tmp_path, capsys, workers):
    """Reasons and lines are reported whether the main process or DataLoader workers decode,
    and a corrupt file is also left out of the feature statistics."""
    rows = [json.loads(line) for line in make_manifest(tmp_path, SHORT).read_text().splitlines()]
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEgarbage" * 10)
    rows.append({**rows[0], "audio_filepath": str(corrupt)})
    train = tmp_path / "with_corrupt.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    assert cli.main(train_argv(out, train, None, "train_dataset.batch_seconds=100.0",
                               "train_dataset.num_buckets=1", f"train_dataset.num_workers={workers}",
                               "model.frontend.normalize=true")) == 0
    err = capsys.readouterr().err
    assert f"{train}:4" in err  # the first corrupt line is named when it is met
    assert "skipped training utterances: 2 (2 unreadable audio)" in err  # 2 steps, one whole-set batch each
    state = ckpt.load_checkpoint(out / "checkpoints" / "step-00000002.pt")
    assert state["progress"]["skipped_reasons"] == {"unreadable audio": 2}
