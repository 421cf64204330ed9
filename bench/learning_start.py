"""How fast does a recipe start learning? Steps until dev WER < 90 %, over seeds, as JSON.

    .venv/bin/python bench/learning_start.py --config configs/demo.toml --steps 400 --eval-every 50 \
        --seeds 1 2 3 [--set optim.lr=3e-3 …] [--parallel 2] [--label NAME]

Each seed is one ``asrlib train`` process (one thread, no progress bar, TensorBoard off) in a
fresh folder under ``--work`` (deleted afterwards unless ``--keep``), evaluated on the
config's validation manifest every ``--eval-every`` steps. For each seed the script reads
``metrics.jsonl`` and reports the first evaluated step at which dev WER (CTC and RNN-T greedy)
is below 90 %, and the WER at every evaluation; over seeds, the median and the range.
``--parallel`` runs that many seeds at once (one per core). ``--timeout-s`` stops the runs still
going at a deadline and reports their curves so far (``stopped_at_timeout``).

Prints one JSON object: {"label", "config", "overrides", "steps", "seeds": {seed: {...}},
"median": {...}, "range": {...}, "minutes"}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def first_below(rows: list[dict], suffix: str, level: float = 0.9) -> int | None:
    """Step of the first row with a value under ``level`` for a key ending in ``suffix``."""
    for r in rows:
        if any(k.endswith(suffix) and v < level for k, v in r.items() if k != "split"):
            return int(r["step"])
    return None


def summarise(out: Path) -> dict:
    path = out / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    valid = [r for r in rows if r["split"] == "valid"]
    train = [r for r in rows if r["split"] == "train"]
    wer_keys = sorted({k for r in valid for k in r if k.endswith(("wer_ctc", "wer_rnnt"))})
    res = {"curve": {k: [[r["step"], round(100 * r[k], 1)] for r in valid if k in r] for k in wer_keys}}
    for k in wer_keys:
        res[f"steps_to_90:{k}"] = first_below(valid, k)
        res[f"final:{k}"] = round(100 * valid[-1][k], 2) if valid else None
    res["last_eval_step"] = int(valid[-1]["step"]) if valid else None
    if train:
        res["audio_seconds_per_second"] = round(train[-1].get("audio_seconds_per_second", 0.0), 2)
    return res


def run_seed(args, seed: int, work: Path) -> subprocess.Popen:
    out = work / f"seed{seed}"
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "asrlib.cli", "train", "--config", args.config,
           "--set", f"trainer.output_dir={out}", "--set", f"trainer.seed={seed}",
           "--set", f"trainer.max_steps={args.steps}", "--set", f"trainer.eval_every={args.eval_every}",
           "--set", "trainer.progress_bar=false", "--set", "trainer.num_threads=1",
           "--set", "logger.log_to_tensorboard=false", "--set", "trainer.keep_last=1"]
    for o in args.overrides:
        cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = open(work / f"seed{seed}.log", "w")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def _finite(x: float) -> float | None:
    """JSON has no infinity: a seed that never got below 90 % reads as null."""
    return None if x == float("inf") else x


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo.toml")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--label", default="")
    p.add_argument("--work", default="")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--timeout-s", type=float, default=0.0,
                   help="stop every run after this many seconds (SIGTERM: each saves and exits) and report "
                        "the curves so far; runs compare at equal steps, not at their last ones")
    args = p.parse_args()

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="learning_start_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pending, running, failed, stopped = list(args.seeds), {}, [], []
    deadline = t0 + args.timeout_s if args.timeout_s else float("inf")
    while pending or running:
        while pending and len(running) < args.parallel and time.perf_counter() < deadline:
            s = pending.pop(0)
            running[s] = run_seed(args, s, work)
        if time.perf_counter() >= deadline:  # stop what runs (the trainer saves and exits 143), keep its curve
            for s, proc in running.items():
                proc.terminate()
            for s, proc in running.items():
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                stopped.append(s)
            failed += pending  # never started
            pending, running = [], {}
            break
        time.sleep(1.0)
        for s, proc in list(running.items()):
            if proc.poll() is not None:
                del running[s]
                if proc.returncode != 0:
                    failed.append(s)
    seeds = {}
    for s in args.seeds:
        if s in failed:
            log = work / f"seed{s}.log"
            seeds[str(s)] = {"error": log.read_text()[-2000:] if log.exists() else "not started before --timeout-s"}
        else:
            seeds[str(s)] = summarise(work / f"seed{s}")
            if s in stopped:
                seeds[str(s)]["stopped_at_timeout"] = True
    ok = [v for v in seeds.values() if "error" not in v]
    median, spread = {}, {}
    for key in sorted({k for v in ok for k in v if k.startswith(("steps_to_90", "final"))}):
        vals = [v[key] if v[key] is not None else float("inf") for v in ok]
        median[key] = _finite(statistics.median(vals)) if vals else None
        spread[key] = [_finite(min(vals)), _finite(max(vals))] if vals else None
    report = {"label": args.label, "config": args.config, "overrides": args.overrides, "steps": args.steps,
              "eval_every": args.eval_every, "median": median, "range": spread, "seeds": seeds,
              "minutes": round((time.perf_counter() - t0) / 60, 2)}
    print(json.dumps(report))
    if not args.keep and not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
