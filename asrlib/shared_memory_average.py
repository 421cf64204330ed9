"""DDP's gradient average through shared memory, for CPU processes on one machine.

On a CPU, DDP averages gradients with gloo, which sends them over TCP even between two processes
on the same machine: 8 ms for the AN4 recipe's 8.5 MB of gradients on the 2-core machine, on
cores that have nothing else to do the work with, once per step. Processes on one machine can
share memory instead. This module is a DDP communication hook that does that:

    every rank divides its bucket of gradients by W and writes it to its own row of a shared array
    -> barrier (every row written) -> every rank sums the W rows, in rank order, into its bucket

The sum of rows 0..W-1 of (gradient / W) is what gloo's allreduce of the same divided buckets
computes; for two ranks it is the same number to the bit (a + b is a + b in any order), for more
it can differ in the last bits, as two orders of a float sum do.

The array is a file in /dev/shm (tmpfs: memory, not disk) that rank 0 creates at its full size
(``posix_fallocate``, so a /dev/shm too small for it fails here, not with a SIGBUS mid-run) and
every rank maps; once all have mapped it, rank 0 removes its name, so nothing is left behind
however the run ends. It holds two copies of W rows of the model's size (``2 * W * numel * 4``
bytes: 34 MB for the AN4 recipe on 2 ranks): step k uses copy k % 2, so a rank that has finished
step k and writes step k + 1 cannot overwrite rows another rank is still summing for step k
(that rank has not yet passed step k + 1's barrier, which the writer waits at before any later
write to copy k % 2).

``attach`` returns the reason when it cannot be used (no /dev/shm, no room in it); the trainer
then keeps gloo's average and says so in its log.
"""

import os
import tempfile

import torch
import torch.distributed as dist

SHARED_MEMORY_DIR = "/dev/shm"


class SharedMean:
    """The shared array and where this step's buckets go in it (the hook's state)."""

    def __init__(self, rows: torch.Tensor, rank: int, world: int):
        self.rows = rows  # (2, world, numel) float32, mapped by every rank
        self.rank, self.world = rank, world
        self.copy, self.offset = 1, 0

    def average(self, bucket: dist.GradBucket) -> torch.Tensor:
        grads = bucket.buffer()
        if bucket.index() == 0:  # DDP hands the buckets over in index order, bucket 0 first
            self.copy, self.offset = 1 - self.copy, 0
        n = grads.numel()
        if grads.dtype != torch.float32 or self.offset + n > self.rows.shape[2]:
            raise RuntimeError(f"shared-memory gradient average: a bucket of {n} {grads.dtype} values does not fit "
                               f"the float32 array of {self.rows.shape[2]} set up for this model; set "
                               "trainer.cpu_gradient_average = \"gloo\"")
        window = self.rows[self.copy, :, self.offset : self.offset + n]
        self.offset += n
        grads.div_(self.world)
        window[self.rank].copy_(grads)
        dist.barrier()  # every rank's row is written
        torch.sum(window, dim=0, out=grads)
        return grads


def average_hook(state: SharedMean, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """The DDP communication hook (``ddp.register_comm_hook(state, average_hook)``; DDP checks
    these annotations, so this module must not postpone their evaluation)."""
    done: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    done.set_result(state.average(bucket))
    return done


def _create(numel: int, world: int, directory: str) -> tuple[str | None, str]:
    """Rank 0: the array's file at its full size; (path, "") or (None, why not)."""
    size = 2 * world * numel * 4
    if not os.path.isdir(directory):
        return None, f"{directory} does not exist"
    try:
        fd, path = tempfile.mkstemp(prefix="asrlib-gradients-", dir=directory)
    except OSError as e:
        return None, f"cannot create a file in {directory} ({e.strerror})"
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        os.unlink(path)
        return None, f"{directory} has no room for {size / 2**20:.0f} MB ({e.strerror})"
    finally:
        os.close(fd)
    return path, ""


def attach(ddp: torch.nn.parallel.DistributedDataParallel, rank: int, world: int,
           directory: str = SHARED_MEMORY_DIR) -> str:
    """Average ``ddp``'s gradients through shared memory from now on. Every rank calls it (it
    synchronises them). Returns "" when attached, else why not (then gloo goes on averaging)."""
    numel = sum(p.numel() for p in ddp.module.parameters() if p.requires_grad)
    if any(p.dtype != torch.float32 for p in ddp.module.parameters() if p.requires_grad):
        return "the parameters are not all float32"
    made = _create(numel, world, directory) if rank == 0 else (None, "")
    message = [made]
    dist.broadcast_object_list(message, src=0)
    path, why = message[0]
    if path is None:
        return why
    rows = torch.from_file(path, shared=True, size=2 * world * numel, dtype=torch.float32).view(2, world, numel)
    dist.barrier()  # every rank has mapped the file
    if rank == 0:
        os.unlink(path)  # the mappings stay; the name goes, so no run can leave the file behind
    ddp.register_comm_hook(SharedMean(rows, rank, world), average_hook)
    return ""
