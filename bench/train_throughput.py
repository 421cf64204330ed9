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
then trains N times the audio of a one-process step. ``--gradient-averages shared_memory gloo``
measures both ways DDP can average the gradients of CPU ranks (``trainer.cpu_gradient_average``)
in the same run. ``--shuffled`` times batches of the shuffled epochs (the recipes' first
``sorted_epochs`` go shortest first, so their first batches are the shortest).

``--losses full pruned`` measures each preset with the full RNN-T loss and with the pruned one
(``loss.rnnt = "pruned"`` + the simple projections) in the same run, so their ratio is fair on a
shared machine; ``--losses full no_phone_ctc`` does the same with the auxiliary phone CTC of a
preset that has one (configs/an4.toml) turned off (``loss.phone_ctc_weight = 0``), so
``speedup_over_full`` is what the phone head costs; ``--precisions fp32 bf16`` does the same for ``trainer.precision`` (bf16
autocast, which also runs on a CPU). ``--v1024`` adds a preset sized for this CPU with a
production-sized vocabulary (d 256, 6 blocks, V = 1024, joint 640; random audio and token ids,
4 x 8 s utterances at 3 tokens/s, since no bundled corpus has 1024 pieces), where the joint is a
large share of the step. Every row also has the model's training FLOPs per audio-second (forward + backward,
``torch.utils.flop_counter``) and the fraction of this machine's measured float32 matmul
FLOP/s (same threads) that the step reaches.

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
sys.path.insert(0, str(ROOT / "bench"))

from asrlib.config import load_config  # noqa: E402
from asrlib.model.hybrid import count_parameters  # noqa: E402
from asrlib.train import Trainer  # noqa: E402
from gpu_step import bare_trainer, count_flops, random_batch  # noqa: E402
from streaming import matmul_flops_per_second  # noqa: E402

PRUNED = ["loss.rnnt=pruned", "model.joint.simple_projections=true"]
NO_PHONES = ["loss.phone_ctc_weight=0", "model.phone_vocab_size=0"]
V1024 = ["model.encoder.d_model=256", "model.encoder.n_blocks=6", "model.encoder.attention.n_heads=4",
         "model.joint.hidden=640", "model.prediction.hidden=320"]


def measure(preset: str, threads: int, steps: int, warmup: int, loss: str = "full", precision: str = "fp32",
            average: str = "shared_memory", shuffled: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="asrlib-bench-") as out:
        cfg = load_config(ROOT / "configs" / f"{preset}.toml", [
            f"trainer.output_dir={out}", "trainer.progress_bar=false", "logger.log_to_tensorboard=false",
            f"trainer.num_threads={threads}", "validation_dataset.validation_manifest=[]",
            *(PRUNED if loss == "pruned" else []), *(NO_PHONES if loss == "no_phone_ctc" else []),
            f"trainer.precision={precision}",
            f"trainer.cpu_gradient_average={average}", *(["train_dataset.sorted_epochs=0"] if shuffled else []),
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
        flops_per_audio_s = count_flops(tr, batches[-1]) / (float(batches[-1].audio_lengths.sum()) / 16000)
        if tr.world > 1:  # every rank's audio counts; the step ends when the slowest rank ends
            totals = torch.tensor([seconds, float(utts)], dtype=torch.float64)
            dist.all_reduce(totals)
            longest = torch.tensor([wall], dtype=torch.float64)
            dist.all_reduce(longest, op=dist.ReduceOp.MAX)
            seconds, utts, wall = float(totals[0]), int(totals[1]), float(longest[0])
    return {
        "preset": preset,
        "loss": loss,
        "precision": precision,
        "processes": tr.world,
        "gradient_average": (average if tr.ddp is not None and tr.device.type == "cpu" else "none"),
        "threads": torch.get_num_threads(),
        "params_M": round(count_parameters(tr.model) / 1e6, 3),
        "batch_seconds_budget": cfg.train_dataset.batch_seconds,
        "timed_steps": steps,
        "utterances": utts,
        "audio_seconds": round(seconds, 2),
        "wall_seconds": round(wall, 2),
        "audio_seconds_per_second": round(seconds / wall, 2),
        "seconds_per_step": round(wall / steps, 3),
        "gflops_per_audio_second": round(flops_per_audio_s / 1e9, 2),
        "gflops_per_second": round(flops_per_audio_s * seconds / wall / 1e9, 2),
    }


def measure_v1024(threads: int, steps: int, warmup: int, loss: str, precision: str = "fp32") -> dict:
    """The CPU-sized V = 1024 preset on a fixed random batch (4 x 8 s, 24 tokens each)."""
    torch.set_num_threads(threads)
    cfg = load_config(ROOT / "configs" / "demo.toml", ["validation_dataset.validation_manifest=[]",
                                                         "trainer.compile=false", *V1024,
                                                         *(PRUNED if loss == "pruned" else []),
                                                         f"trainer.precision={precision}"])
    cfg.model.vocab_size = 1024
    tr = bare_trainer(cfg, torch.device("cpu"))
    batch = random_batch(4, 8.0, 24, 1024, cfg.model.frontend.sample_rate)
    for _ in range(warmup):
        tr.train_step([batch])
    t0 = time.perf_counter()
    for _ in range(steps):
        tr.train_step([batch])
    wall = (time.perf_counter() - t0) / steps
    audio = float(batch.audio_lengths.sum()) / cfg.model.frontend.sample_rate
    flops = count_flops(tr, batch)
    return {"preset": "demo@d256x6,V1024", "loss": loss, "precision": precision, "processes": 1,
            "gradient_average": "none", "threads": threads,
            "params_M": round(count_parameters(tr.model) / 1e6, 3), "batch": "4 x 8 s random, 24 tokens",
            "timed_steps": steps, "audio_seconds_per_second": round(audio / wall, 2),
            "seconds_per_step": round(wall, 3), "gflops_per_audio_second": round(flops / audio / 1e9, 2),
            "gflops_per_second": round(flops / wall / 1e9, 2)}


def twin(results: list[dict], r: dict, field: str, value: str) -> dict | None:
    """The result that differs from ``r`` only in having ``field`` = ``value``."""
    keys = ("preset", "threads", "loss", "precision", "gradient_average")
    return next((q for q in results if q[field] == value
                 and all(q[k] == r[k] for k in keys if k != field)), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--presets", nargs="+", default=["tiny", "demo"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--processes", type=int, default=1, help="DDP processes (relaunches under torchrun)")
    p.add_argument("--losses", nargs="+", default=["full"], choices=["full", "pruned", "no_phone_ctc"])
    p.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    p.add_argument("--v1024", action="store_true", help="add the CPU-sized V = 1024 preset (one process)")
    p.add_argument("--gradient-averages", nargs="+", default=["shared_memory"], choices=["shared_memory", "gloo"],
                   help="with --processes > 1: trainer.cpu_gradient_average, each in turn")
    p.add_argument("--shuffled", action="store_true", help="time batches of the shuffled epochs (sorted_epochs = 0)")
    args = p.parse_args()
    if args.processes > 1 and "WORLD_SIZE" not in os.environ:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(args.processes), __file__, *sys.argv[1:]]
        env = {**os.environ, "OMP_NUM_THREADS": str(min(args.threads))}
        sys.exit(subprocess.run(cmd, env=env).returncode)
    load_before = os.getloadavg()
    results = [measure(preset, t, args.steps, args.warmup, loss, prec, avg, args.shuffled) for preset in args.presets
               for t in args.threads for loss in args.losses for prec in args.precisions
               for avg in (args.gradient_averages if args.processes > 1 else ["shared_memory"])]
    if dist.is_initialized():
        dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if args.v1024:
        results += [measure_v1024(t, args.steps, args.warmup, loss, prec) for t in args.threads
                    for loss in args.losses for prec in args.precisions]
    matmul = {t: 0.0 for t in args.threads}
    for t in args.threads:
        torch.set_num_threads(t)
        matmul[t] = matmul_flops_per_second()
    for r in results:
        r["fraction_of_matmul_peak"] = round(r["gflops_per_second"] * 1e9 / matmul[r["threads"]] / r["processes"], 4)
    for r in results:  # pruned (or no phone CTC) against full and bf16 against fp32, the rest alike, same run
        for field, base in (("loss", "full"), ("precision", "fp32"), ("gradient_average", "gloo")):
            other = twin(results, r, field, base)
            if r[field] != base and other:
                r[f"speedup_over_{base}"] = round(r["audio_seconds_per_second"] / other["audio_seconds_per_second"], 3)
    print(json.dumps({
        "benchmark": "train_throughput",
        "unit": "audio seconds trained per wall second (forward + backward + optimiser step)",
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "matmul_gflops_per_second_by_threads": {t: round(v / 1e9, 1) for t, v in matmul.items()},
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
