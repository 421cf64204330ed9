"""The shared-memory gradient average (asrlib/shared_memory_average.py) against two references:
the mean of the ranks' own gradients, each computed without DDP, and gloo's average (DDP's default
hook), which for two ranks it must equal to the bit. Real processes, real gloo, several steps (the
two alternating copies of the array) and many buckets (the offsets inside one step)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from asrlib import shared_memory_average as sma
from asrlib.train import NO_FORWARD_BUFFER_SYNC


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(7, 33), torch.nn.Tanh(), torch.nn.Linear(33, 5), torch.nn.Linear(5, 3))


def data(rank: int, step: int) -> torch.Tensor:
    return torch.randn(4 + rank, 7, generator=torch.Generator().manual_seed(100 * step + rank))


def local_grads(step: int, rank: int) -> list[torch.Tensor]:
    """This rank's gradient without DDP (the weights do not move: the test never steps)."""
    m = model()
    m(data(rank, step)).pow(2).mean().backward()
    return [p.grad.clone() for p in m.parameters()]


def listing(directory: str) -> list[str]:
    return sorted(f for f in os.listdir(directory) if f.startswith("asrlib-gradients-")) if os.path.isdir(directory) else []


def worker(rank: int, world: int, port: int, directory: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {"files_before": listing(directory)}
        for kind in ("shared", "gloo"):
            # bucket_cap_mb tiny: one bucket per parameter or so, so one step hands several over
            ddp = DistributedDataParallel(model(), bucket_cap_mb=0.0005, gradient_as_bucket_view=True,
                                          **NO_FORWARD_BUFFER_SYNC)
            why = sma.attach(ddp, rank, world, directory) if kind == "shared" else ""
            results[kind + "_why"] = why
            steps = []
            for step in range(3):
                ddp.zero_grad(set_to_none=True)
                ddp(data(rank, step)).pow(2).mean().backward()
                steps.append([p.grad.clone() for p in ddp.module.parameters()])
            results[kind] = steps
        results["files_after"] = listing(directory)
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.barrier()
        dist.destroy_process_group()


def run(world: int, tmp_path, directory: str) -> list[dict]:
    out = str(tmp_path / "grads")
    mp.start_processes(worker, args=(world, free_port(), directory, out), nprocs=world, start_method="spawn")
    return [torch.load(f"{out}.{r}", weights_only=True) for r in range(world)]


@pytest.mark.skipif(not os.path.isdir(sma.SHARED_MEMORY_DIR), reason="no /dev/shm on this machine")
@pytest.mark.parametrize("world", [2, 3])
def test_the_shared_memory_average_is_the_mean_of_the_ranks_gradients(world, tmp_path):
    results = run(world, tmp_path, sma.SHARED_MEMORY_DIR)
    for step in range(3):
        mean = [sum(g) / world for g in zip(*(local_grads(step, r) for r in range(world)))]
        for r in range(world):
            assert results[r]["shared_why"] == ""
            for got, gloo, want in zip(results[r]["shared"][step], results[r]["gloo"][step], mean):
                torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
                if world == 2:  # a/2 + b/2 in either order: gloo's number to the bit
                    assert torch.equal(got, gloo)
                else:
                    torch.testing.assert_close(got, gloo, rtol=1e-6, atol=1e-7)
    # rank 0 removed the array's name once every rank had mapped it
    assert set(results[0]["files_after"]) <= set(results[0]["files_before"])


def test_without_room_in_shared_memory_gloo_goes_on_averaging(tmp_path):
    results = run(2, tmp_path, str(tmp_path / "no-such-dir"))
    mean = [sum(g) / 2 for g in zip(*(local_grads(0, r) for r in range(2)))]
    for r in range(2):
        assert results[r]["shared_why"] == f"{tmp_path / 'no-such-dir'} does not exist"
        for got, want in zip(results[r]["shared"][0], mean):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
