"""Training throughput: audio seconds trained per wall-clock second, on this CPU.

For the tiny and demo presets and torch threads 1 and 2: real batches from the digits corpus
(the preset's own bucketing, batch budget, speed perturbation and SpecAugment), loaded ahead
of time so that only the training step is timed: augmentation + forward (frontend, encoder,
both losses) + backward + gradient clipping + AdamW step. A few warm-up steps, then ~10
timed steps.

    .venv/bin/python bench/train_throughput.py [--steps 10] [--warmup 3]
    .venv/bin/python bench/train_throughput.py --processes 2 --threads 1 --presets demo    (make demo's setup)

With ``--processes N`` the script relaunches itself under torchrun: N one-process-per-rank
trainers (DDP, gloo) each time their own shard; the audio seconds of all ranks are summed and
the slowest rank's wall time is used. Each rank uses the preset's batch budget, so a step
then trains N times the audio of a one-process step.

Prints one JSON object (with the load average, since a shared machine skews the numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asrlib.config import load_config  # noqa: E402
from asrlib.model.hybrid import count_parameters  # noqa: E402
from asrlib.train import Trainer  # noqa: E402


def measure(preset: str, threads: int, steps: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="asrlib-bench-") as out:
        cfg = load_config(ROOT / "configs" / f"{preset}.toml", [
            f"trainer.output_dir={out}", "trainer.progress_bar=false", "logger.log_to_tensorboard=false",
            f"trainer.num_threads={threads}", "validation_dataset.validation_manifest=[]",
        ])
        tr = Trainer(cfg)
        tr.setup()  # sets torch threads from trainer.num_threads
        stream = tr.micro_batches()
        batches = [next(stream) for _ in range(warmup + steps)]  # decoded up front: not timed
        for b in batches[:warmup]:
            tr.train_step([b])
        seconds, utts = 0.0, 0
        t0 = time.perf_counter()
        for b in batches[warmup:]:
            v = tr.train_step([b])
            seconds += v["seconds"]  # audio seconds after speed perturbation
            utts += len(b)
        wall = time.perf_counter() - t0
        if tr.world > 1:  # every rank's audio counts; the step ends when the slowest rank ends
            totals = torch.tensor([seconds, float(utts)], dtype=torch.float64)
            dist.all_reduce(totals)
            longest = torch.tensor([wall], dtype=torch.float64)
            dist.all_reduce(longest, op=dist.ReduceOp.MAX)
            seconds, utts, wall = float(totals[0]), int(totals[1]), float(longest[0])
    return {
        "preset": preset,
        "processes": tr.world,
        "threads": torch.get_num_threads(),
        "params_M": round(count_parameters(tr.model) / 1e6, 3),
        "batch_seconds_budget": cfg.train_dataset.batch_seconds,
        "timed_steps": steps,
        "utterances": utts,
        "audio_seconds": round(seconds, 2),
        "wall_seconds": round(wall, 2),
        "audio_seconds_per_second": round(seconds / wall, 2),
        "seconds_per_step": round(wall / steps, 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--presets", nargs="+", default=["tiny", "demo"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--processes", type=int, default=1, help="DDP processes (relaunches under torchrun)")
    args = p.parse_args()
    if args.processes > 1 and "WORLD_SIZE" not in os.environ:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(args.processes), __file__, *sys.argv[1:]]
        env = {**os.environ, "OMP_NUM_THREADS": str(min(args.threads))}
        sys.exit(subprocess.run(cmd, env=env).returncode)
    load_before = os.getloadavg()
    results = [measure(preset, t, args.steps, args.warmup) for preset in args.presets for t in args.threads]
    if dist.is_initialized():
        dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) != 0:
        return
    print(json.dumps({
        "benchmark": "train_throughput",
        "unit": "audio seconds trained per wall second (forward + backward + optimiser step)",
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
