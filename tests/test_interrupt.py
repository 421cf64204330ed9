"""Ctrl-C and SIGTERM lose nothing: the step finishes, a checkpoint is written, the process
exits 128 + signal with the resume command, and ``--resume auto`` continues bit-exactly as if
never interrupted. Checkpoints also fall due on a clock (``trainer.save_every_minutes``).

The interrupted run is a real ``asrlib train`` process that sends itself the signal right
after its second optimiser step (a deterministic stand-in for a user pressing Ctrl-C then).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from test_train import RESUME_SET, TINY, _full_state, assert_same_run, make_manifest

from asrlib import checkpoint as ckpt
from asrlib.config import load_config
from asrlib.train import Trainer

ROOT = TINY.parents[1]


def overrides(out, train, valid) -> list[str]:
    """test_train's resume recipe (dropout, speed/gain perturbation, an epoch boundary)."""
    return [f"trainer.output_dir={out}", f"train_dataset.train_manifest={train}",
            f"validation_dataset.validation_manifest={valid}", "trainer.progress_bar=false",
            "logger.log_to_tensorboard=false", "model.encoder.dropout=0.1", "model.prediction.dropout=0.1",
            "train_dataset.speed_perturb=[0.9, 1.0, 1.1]", "train_dataset.gain_db=[-20.0, 6.0]",
            "train_dataset.batch_seconds=2.5", "model.frontend.normalize=true", "train_dataset.max_batch_size=2",
            "train_dataset.num_buckets=2", "trainer.max_steps=6", "trainer.eval_every=3", "optim.warmup_steps=2"]


CHILD = """
import os, signal, sys
import torch
from asrlib import train
torch.set_num_threads(1)
real = train.Trainer.train_step
def step_then_signal(self, batches):
    out = real(self, batches)
    if self.progress.step == 2:
        os.kill(os.getpid(), signal.{sig})
    return out
train.Trainer.train_step = step_then_signal
sys.exit(train.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_signal_saves_and_resume_is_bit_exact(tmp_path, sig):
    train = make_manifest(tmp_path, RESUME_SET)
    valid = make_manifest(tmp_path, [13], "valid.jsonl")

    straight = Trainer(load_config(TINY, overrides(tmp_path / "a", train, valid)))
    straight.setup()
    straight.fit()
    expected = _full_state(straight)

    out = tmp_path / "b"
    argv = ["--config", str(TINY)]
    for o in overrides(out, train, valid):
        argv += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", CHILD.format(sig=sig), *argv], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 128 + getattr(signal, sig), r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert f"stopped by {sig} at step 2" in r.stderr and "--resume auto" in r.stderr
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step-00000002.pt"]

    resumed = Trainer(load_config(TINY, overrides(out, train, valid) + ["trainer.resume=auto"]))
    resumed.setup()
    assert resumed.progress.step == 2
    resumed.fit()
    assert_same_run(expected, _full_state(resumed), ("step", "epoch", "batches_in_epoch", "audio_seconds", "best_wer"))


def test_checkpoints_on_a_clock(tmp_path):
    train = make_manifest(tmp_path, RESUME_SET)
    over = overrides(tmp_path / "run", train, "[]")
    over = [o for o in over if not o.startswith("validation_dataset")] + [
        "validation_dataset.validation_manifest=[]", "trainer.max_steps=3", "trainer.eval_every=100",
        "trainer.keep_last=5", "trainer.save_every_minutes=1e-9"]  # always due: a save after every step
    tr = Trainer(load_config(TINY, over))
    tr.setup()
    tr.fit()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")] == [
        "step-00000001.pt", "step-00000002.pt", "step-00000003.pt"]

    tr = Trainer(load_config(TINY, [o.replace("save_every_minutes=1e-9", "save_every_minutes=0")
                                    for o in over] + [f"trainer.output_dir={tmp_path / 'off'}"]))
    tr.setup()
    tr.fit()  # off: only the final (evaluation) checkpoint
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "off" / "checkpoints")] == ["step-00000003.pt"]
