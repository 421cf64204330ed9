"""Ctrl-C and SIGTERM lose nothing: the step finishes, a checkpoint is written, the process
exits 128 + signal with the resume command, and ``--resume auto`` continues bit-exactly as if
never interrupted. Checkpoints also fall due on a clock (``trainer.save_every_minutes``).

The interrupted run is a real ``asrlib train`` process that gets the signal right after its
second optimiser step (a deterministic stand-in for a user pressing Ctrl-C then): sent to the
process alone, or to its whole process group with a DataLoader worker in it, as a terminal's
Ctrl-C, Slurm's ``scancel`` and torchrun's agent do. Under torchrun the signal goes to the agent,
which passes it on to each rank's process group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from test_train import RESUME_SET, TINY, _free_port, _full_state, assert_same_run, assert_same_tree, make_manifest

from asrlib import checkpoint as ckpt
from asrlib.config import load_config
from asrlib.resume import launcher
from asrlib.stopping import REPEAT_SECONDS
from asrlib.train import Trainer

ROOT = TINY.parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}  # for the child processes
WORKER = ["train_dataset.num_workers=1", "train_dataset.persistent_workers=true"]  # one persistent loader worker


def sets(over: list[str]) -> list[str]:
    """``--set`` arguments for these overrides."""
    return [a for o in over for a in ("--set", o)]


def run_session(args: list[str], cwd, timeout: float) -> subprocess.CompletedProcess:
    """``args`` in a session of its own (the process group a child signals holds only this run);
    on a timeout the whole group is killed, so that a hung run's ranks and workers do not outlive
    the test."""
    p = subprocess.Popen(args, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise
    return subprocess.CompletedProcess(args, p.returncode, out, err)


def overrides(out, train, valid) -> list[str]:
    """test_train's resume recipe (dropout, speed/gain perturbation, an epoch boundary)."""
    return [f"trainer.output_dir={out}", f"train_dataset.train_manifest={train}",
            f"validation_dataset.validation_manifest={valid}", "trainer.progress_bar=false",
            "logger.log_to_tensorboard=false", "model.encoder.dropout=0.1", "model.prediction.dropout=0.1",
            "train_dataset.speed_perturb=[0.9, 1.0, 1.1]", "train_dataset.gain_db=[-20.0, 6.0]",
            "train_dataset.batch_seconds=2.5", "model.frontend.normalize=true", "train_dataset.max_batch_size=2",
            "train_dataset.num_buckets=2", "trainer.max_steps=6", "trainer.eval_every=3", "optim.warmup_steps=2"]


# The trainer, with its second optimiser step followed by a signal. ``{kill}`` sends it; then
# the rank waits (up to a minute) until its own handler has seen it, so that the stop falls
# after step 2 however long the signal takes to come round (under torchrun, via the agent).
CHILD = """
import os, signal, sys, time
import torch
from asrlib import stopping, train
torch.set_num_threads(1)
seen = []
real_handle = stopping.GracefulStop._handle
def handle(self, signum, frame):
    seen.append(signum)
    real_handle(self, signum, frame)
stopping.GracefulStop._handle = handle
real = train.Trainer.train_step
def step_then_signal(self, batches):
    out = real(self, batches)
    if self.progress.step == 2:
        if self.rank == 0:
            {kill}
        deadline = time.monotonic() + 60
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
    return out
train.Trainer.train_step = step_then_signal
from asrlib import {entry} as entry
sys.exit(entry.main(sys.argv[1:]))
"""
GROUP_TWICE = ("import subprocess; subprocess.run(['sh', '-c', 'trap : INT TERM; kill -s {name} -- -%d; "
               "sleep PAUSE; kill -s {name} -- -%d' % (os.getpgid(0), os.getpgid(0))])")
KILL = {"process": "os.kill(os.getpid(), signal.{sig})",  # the trainer alone
        # the trainer's process group (it and its DataLoader worker), from another process, as a
        # terminal or a scheduler sends it (a worker takes a SIGTERM from its own parent as a
        # request to exit quietly, so the sender must be someone else)
        # (not os.system: system() ignores SIGINT in its caller while the shell runs)
        "group": "import subprocess; subprocess.run(['sh', '-c', 'kill -s {name} -- -%d' % os.getpgid(0)])",
        "agent": "os.kill(os.getppid(), signal.{sig})",  # torchrun's agent, the ranks' parent
        # twice, as someone does whose run does not stop soon enough (the shell, in the group
        # too, traps them)
        "group twice": GROUP_TWICE.replace("PAUSE", str(REPEAT_SECONDS + 1)),
        # one stop delivered twice, a moment apart, as a scheduler and torchrun's agent deliver it
        "group echoed": GROUP_TWICE.replace("PAUSE", "0.2"),
        # every process of a torchrun run at once (``pkill -f``, Slurm at the time limit): the
        # ranks, then the agent, which sends each rank a SIGTERM of its own
        "everyone": "import subprocess; subprocess.run(['sh', '-c', 'pkill -TERM -P %d; sleep 0.2; kill -TERM %d' "
                    "% (os.getppid(), os.getppid())])"}


@pytest.mark.parametrize("sig, target", [("SIGINT", "process"), ("SIGTERM", "process"),
                                         ("SIGINT", "group"), ("SIGTERM", "group"), ("SIGTERM", "group echoed")])
def test_signal_saves_and_resume_is_bit_exact(tmp_path, sig, target):
    train = make_manifest(tmp_path, RESUME_SET)
    valid = make_manifest(tmp_path, [13], "valid.jsonl")
    over = overrides(tmp_path / "a", train, valid)
    if target.startswith("group"):  # a loader worker in the group, busy prefetching when the signal comes
        over += WORKER

    straight = Trainer(load_config(TINY, over))
    straight.setup()
    straight.fit()
    expected = _full_state(straight)

    out = tmp_path / "b"
    over = [o.replace(str(tmp_path / "a"), str(out)) for o in over]
    argv = ["--config", str(TINY), *sets(over)]
    child = CHILD.format(kill=KILL[target].format(sig=sig, name=sig[3:]), entry="train")
    r = run_session([sys.executable, "-c", child, *argv], tmp_path, timeout=300)
    assert r.returncode == 128 + getattr(signal, sig), r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"stopped by {sig} at step 2" in r.stderr and "--resume auto" in r.stderr
    assert r.stderr.count(f"{sig} received") == 1  # the trainer's, not also a loader worker's
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step-00000002.pt"]

    resumed = Trainer(load_config(TINY, over + ["trainer.resume=auto"]))
    resumed.setup()
    assert resumed.progress.step == 2
    resumed.fit()
    assert_same_run(expected, _full_state(resumed), ("step", "epoch", "batches_in_epoch", "audio_seconds", "best_wer"))


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_second_signal_aborts_without_saving(tmp_path, sig):
    """The second signal ends the run at once, loader worker included: one line saying so and
    how to continue, the signal's exit status, no checkpoint written after the first signal."""
    train = make_manifest(tmp_path, RESUME_SET)
    valid = make_manifest(tmp_path, [13], "valid.jsonl")
    out = tmp_path / "run"
    argv = ["--config", str(TINY), *sets(overrides(out, train, valid) + WORKER)]
    child = CHILD.format(kill=KILL["group twice"].format(name=sig[3:]), entry="train")
    r = run_session([sys.executable, "-c", child, *argv], tmp_path, timeout=120)
    assert r.returncode == 128 + getattr(signal, sig), r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"second {sig}: stopped without saving at step 2" in r.stderr and "--resume auto" in r.stderr
    assert "stopped by" not in r.stderr
    assert ckpt.list_checkpoints(out / "checkpoints") == []  # the first checkpoint falls at step 3


def test_an_error_with_loader_workers_running_exits(tmp_path):
    """A program that fails (or simply ends) while the training loader's workers run exits:
    Python's exit terminates them, and they take SIGTERM from their parent."""
    train = make_manifest(tmp_path, RESUME_SET)
    over = overrides(tmp_path / "run", train, "[]") + ["train_dataset.num_workers=2",
                                                       "train_dataset.persistent_workers=true"]
    script = f"""
import torch
from asrlib.config import load_config
from asrlib.train import Trainer
torch.set_num_threads(1)
trainer = Trainer(load_config({str(TINY)!r}, {over!r}))
trainer.setup()
stream = trainer.micro_batches()
next(stream)
raise RuntimeError("a bug after the first batch")
"""
    r = run_session([sys.executable, "-c", script], tmp_path, timeout=120)  # it used to wait for its workers for ever
    assert r.returncode == 1 and "RuntimeError: a bug after the first batch" in r.stderr, r.stderr[-3000:]


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


def torchrun_args(*head: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(_free_port()), "--no-python", sys.executable, *head]


def test_sigterm_to_torchrun_saves_and_resume_is_bit_exact(tmp_path):
    """Two DDP ranks, each with a DataLoader worker, under torchrun; one SIGTERM to the agent
    (what ``kill <pid of torchrun>`` or a scheduler does). The agent signals each rank's whole
    process group: the ranks finish step 2 together, rank 0 writes its checkpoint, and
    ``--resume auto`` under torchrun ends bit-exactly where an uninterrupted run ends."""
    train = make_manifest(tmp_path, RESUME_SET)
    valid = make_manifest(tmp_path, [13], "valid.jsonl")

    def torchrun(out, *extra, child=None):
        over = overrides(out, train, valid) + WORKER
        head = ["-c", child] if child else ["-m", "asrlib.train"]
        args = torchrun_args(*head, "--config", str(TINY), *sets(over + list(extra)))
        return run_session(args, tmp_path, timeout=300)

    r = torchrun(tmp_path / "a")
    assert r.returncode == 0, r.stderr[-3000:]
    expected = ckpt.load_checkpoint(tmp_path / "a" / "checkpoints" / "step-00000006.pt")

    out = tmp_path / "b"
    r = torchrun(out, child=CHILD.format(kill=KILL["agent"].format(sig="SIGTERM"), entry="train"))
    assert "stopped by SIGTERM at step 2" in r.stderr, r.stderr[-3000:]
    assert "Continue with: torchrun --standalone --nproc_per_node 2 -m asrlib.train --config" in r.stderr
    assert "DataLoader worker" not in r.stderr, r.stderr[-3000:]
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step-00000002.pt"]

    r = torchrun(out, "trainer.resume=auto")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stderr and "at step 2" in r.stderr
    got = ckpt.load_checkpoint(out / "checkpoints" / "step-00000006.pt")
    for key in ("model", "optimizer", "scheduler", "rng"):
        assert_same_tree(expected[key], got[key], key)
    for k in ("step", "epoch", "batches_in_epoch", "audio_seconds", "best_wer"):
        assert expected["progress"][k] == got["progress"][k], k


def test_sigterm_to_every_process_of_a_torchrun_run_saves(tmp_path):
    """``pkill -f``, or Slurm at a job's time limit, signals the agent and the ranks at once; the
    agent then sends each rank a SIGTERM of its own. One stop, delivered twice: the ranks finish
    step 2 together and save (they used to take the copy for a second signal, abort part-way and
    hang until the agent killed them, with no checkpoint)."""
    train = make_manifest(tmp_path, RESUME_SET)
    valid = make_manifest(tmp_path, [13], "valid.jsonl")
    out = tmp_path / "run"
    args = torchrun_args("-c", CHILD.format(kill=KILL["everyone"], entry="train"), "--config", str(TINY),
                         *sets(overrides(out, train, valid) + WORKER))
    r = run_session(args, tmp_path, timeout=300)
    assert "stopped by SIGTERM at step 2" in r.stderr, r.stderr[-3000:]
    assert "second SIGTERM" not in r.stderr and "forcefully" not in r.stderr, r.stderr[-3000:]
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step-00000002.pt"]


# Rank 0 alone takes a stop signal twice, REPEAT_SECONDS + 1 apart, right after step 2: it aborts
# there, while rank 1 has gone on and waits for it in the next step's stop check (a collective).
ABORT_RANK_0 = """
import os, signal, sys, time
import torch
from asrlib import stopping, train
torch.set_num_threads(1)
real = train.Trainer.train_step
def step_then_abort(self, batches):
    out = real(self, batches)
    if self.progress.step == 2 and self.rank == 0:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(stopping.REPEAT_SECONDS + 1)
        os.kill(os.getpid(), signal.SIGTERM)
    return out
train.Trainer.train_step = step_then_abort
from asrlib import {entry} as entry
sys.exit(entry.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("entry", ["train", "demo"])
def test_a_rank_aborted_out_of_step_does_not_hang_the_run(tmp_path, entry):
    """A rank that aborts (a second signal) while another waits for it in a collective leaves at
    once, without saving and without the exit barrier, where the two would wait for each other
    for ever (they did: both hung past the timeout). The waiting rank's collective then fails
    and torchrun ends the run."""
    train = make_manifest(tmp_path, RESUME_SET)
    valid = make_manifest(tmp_path, [13], "valid.jsonl")
    out = tmp_path / "run"
    head = ["-c", ABORT_RANK_0.format(entry=entry), "--config", str(TINY)]
    if entry == "demo":
        head += ["--out", str(out), "--test", str(valid)]
    r = run_session(torchrun_args(*head, *sets(overrides(out, train, valid))), tmp_path, timeout=120)
    assert "second SIGTERM: stopped without saving at step 2" in r.stderr, r.stderr[-3000:]
    assert r.returncode != 0
    assert ckpt.list_checkpoints(out / "checkpoints") == []  # the first checkpoint falls at step 3


def test_stopped_demo_saves_and_does_not_evaluate(tmp_path):
    """``make demo`` stopped by SIGTERM to torchrun: the checkpoint of the step it stopped at,
    the command that continues it, and no table or metrics.json of a half-trained model."""
    train = make_manifest(tmp_path, RESUME_SET)
    valid = make_manifest(tmp_path, [13], "valid.jsonl")
    out = tmp_path / "demo"
    args = torchrun_args("-c", CHILD.format(kill=KILL["agent"].format(sig="SIGTERM"), entry="demo"),
                         "--config", str(TINY), "--out", str(out), "--test", str(valid))
    args += sets(overrides(out, train, valid) + ["train_dataset.num_workers=1"])
    r = run_session(args, tmp_path, timeout=300)
    assert "stopped by SIGTERM at step 2" in r.stderr, r.stderr[-3000:]
    assert "Continue with: torchrun --standalone --nproc_per_node 2 -m asrlib.demo --config" in r.stderr
    assert "split/decoder" not in r.stdout and not (out / "metrics.json").exists()
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step-00000002.pt"]


def test_launcher_names_torchrun_for_a_run_it_started(monkeypatch):
    for var in ("WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert launcher("asrlib.train", "asrlib train") == "asrlib train"
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert launcher("asrlib.train", "asrlib train") == "torchrun --standalone --nproc_per_node 4 -m asrlib.train"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert launcher("asrlib.demo", "x") == (
        "torchrun --nnodes 2 <your rendezvous options> --nproc_per_node 2 -m asrlib.demo")
