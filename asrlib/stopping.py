"""Graceful stop on SIGINT (Ctrl-C) and SIGTERM (schedulers, ``kill``, torchrun).

The first signal only sets a flag: the trainer finishes the optimiser step it is in, writes a
checkpoint (atomically) and exits with a message naming the resume command. A second signal
aborts at once (``Aborted``, a KeyboardInterrupt), for when saving itself hangs: the trainer
leaves without saving, and the checkpoints written before are whole (written atomically).

A second signal counts only if it comes ``REPEAT_SECONDS`` or more after the first. One stop is
often delivered twice within milliseconds: ``pkill -f``, Slurm at a job's time limit and
``scancel`` signal every process of the run, and torchrun's agent, signalled too, then sends
each rank its own SIGTERM. Taken as "again", that second copy aborted the ranks part-way through
a step, without the checkpoint; one rank left while the other waited in a collective for it,
and both hung until the agent killed them 30 s later (seen on a 19000-step run).

    with GracefulStop() as stop:
        while …:
            train_step()
            if stop.requested: save(); break
        (inside the with-block, so that a second signal during the save also aborts)

Only the trainer decides. A terminal's Ctrl-C, ``kill -- -PGID``, Slurm's ``scancel`` and
torchrun's agent signal every process of the run, DataLoader workers included. Left alone, a
worker dies of SIGTERM (PyTorch's handler in the worker re-raises it unless the worker's own
parent sent it) and the trainer's SIGCHLD check then raises in the middle of the step or of the
checkpoint's write; a SIGINT runs the trainer's handler, inherited through fork, in the worker.
So the loader's ``worker_init_fn`` is ``ignore_stop_signals``: the worker ignores SIGINT, and
takes a SIGTERM only from its parent, the trainer, which sends one when it shuts the loader down
the hard way (PyTorch's last resort, and Python's exit with a loader still open: after an error
or a second signal). A signal meant for the whole run leaves the worker serving batches until
the trainer, having saved, shuts the loader down (its end sentinel); if the trainer itself dies,
the worker's check of its parent ends it within seconds.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

SIGNALS = (signal.SIGINT, signal.SIGTERM)
REPEAT_SECONDS = 2.0  # a signal this soon after the first is the same stop delivered twice


class Aborted(KeyboardInterrupt):
    """A second stop signal: leave now, without saving."""

    def __init__(self, signum: int):
        self.name = signal.Signals(signum).name
        super().__init__(f"second {self.name}: aborting without saving")


class GracefulStop:
    def __init__(self, announce: bool = True):
        self.signum: int | None = None  # the first signal received, if any
        self.first_at = 0.0  # when it came (time.monotonic)
        self.announce = announce
        self._old: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def any_rank(self, world: int = 1, device=None) -> bool:
        """Whether any rank got a signal (under DDP all ranks must stop after the same step)."""
        if world > 1:
            import torch
            import torch.distributed as dist

            flag = torch.tensor([float(self.signum or 0)], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() > 0 and self.signum is None:
                self.signum, self.first_at = int(flag.item()), time.monotonic()
        return self.requested

    def _handle(self, signum, frame) -> None:
        now = time.monotonic()
        if self.signum is not None:
            if now - self.first_at < REPEAT_SECONDS:
                return  # the same stop, delivered twice (see the module docstring)
            raise Aborted(signum)
        self.signum, self.first_at = signum, now
        if self.announce:
            print(f"\n{signal.Signals(signum).name} received: finishing this step and saving a checkpoint "
                  f"(send it again, {REPEAT_SECONDS:g} s or more from now, to abort without saving)",
                  file=sys.stderr, flush=True)

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():  # handlers only work there
            for s in SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()
        return False


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: the worker ignores SIGINT, and SIGTERM from anyone but its
    parent (see the module docstring). A SIGTERM from the parent ends it at once, as PyTorch's own
    handler does; SIGKILL still ends it from anywhere."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # not Linux: SIGTERM stays with PyTorch's handling
        return
    # Python's handlers cannot see who sent a signal; sigwaitinfo can. SIGTERM is blocked in this
    # thread before the worker starts any other (threads inherit the mask), so it reaches only
    # the waiting thread below.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_end_on_parents_sigterm, args=(os.getppid(),), daemon=True,
                     name="asrlib-sigterm").start()


def _end_on_parents_sigterm(parent: int) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
            os._exit(0)
