"""Time and peak memory of attention forward + backward, chunked vs dense; prints JSON to stdout.

    .venv/bin/python bench/attention_memory.py [--lengths 1000 2000 4000 8000 16000]
                                               [--dense-max 8000] [--repeats 2]

GroupedQueryAttention at the demo model's sizes by default (d_model 128, 4 heads, 2 kv groups,
chunk 8 encoder frames, 4 left chunks; 25 encoder frames per second of audio), batch 1, fp32,
one thread. ``chunked`` is ``forward`` (each chunk against its window of (left + 1) * chunk
keys: O(T) memory), ``dense`` is ``forward_dense`` (full (T, T) scores under the chunk mask:
O(T^2)), run only up to ``--dense-max`` frames.

Every (path, T) runs in its own subprocess: ``peak_growth_mb`` is the growth of the process's
peak resident set (ru_maxrss) over one forward + backward at length T, measured from a baseline
taken after a short warm-up. ``forward_backward_s`` is the best of ``--repeats`` timed calls.
Nothing here runs in the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asrlib.config import AttentionConfig  # noqa: E402
from asrlib.model.attention import GroupedQueryAttention  # noqa: E402


def peak_rss_bytes() -> int:
    return 1024 * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def measure_one(path: str, T: int, d: int, heads: int, chunk: int, left: int, repeats: int) -> dict:
    """One forward + backward of ``path`` at length T in THIS process (call in a fresh one)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = GroupedQueryAttention(d, AttentionConfig(n_heads=heads), chunk, left)
    fn = m.forward if path == "chunked" else m.forward_dense
    x = torch.randn(1, T, d)  # (B, T, D)
    lengths = torch.tensor([T])

    def fwd_bwd(n: int) -> None:
        m.zero_grad(set_to_none=True)
        xg = x[:, :n].clone().requires_grad_(True)
        fn(xg, lengths.clamp(max=n)).sum().backward()

    fwd_bwd(4 * chunk)  # warm-up: kernels and allocator, before the baseline
    base = peak_rss_bytes()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fwd_bwd(T)
        times.append(time.perf_counter() - t0)
    return {"path": path, "T": T, "audio_s": round(T / 25, 1), "forward_backward_s": round(min(times), 4),
            "peak_growth_mb": round((peak_rss_bytes() - base) / 2**20, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", nargs="+", type=int, default=[1000, 2000, 4000, 8000, 16000])
    p.add_argument("--dense-max", type=int, default=8000, help="longest T the dense reference runs at")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--chunk", type=int, default=8)
    p.add_argument("--left", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--one", nargs=2, metavar=("PATH", "T"), help=argparse.SUPPRESS)  # child process
    args = p.parse_args(argv)
    dims = (args.d_model, args.heads, args.chunk, args.left, args.repeats)
    if args.one:
        print(json.dumps(measure_one(args.one[0], int(args.one[1]), *dims)))
        return 0

    result = {
        "torch": torch.__version__, "machine": platform.machine(), "cpu_count": os.cpu_count(), "threads": 1,
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "config": {"d_model": args.d_model, "n_heads": args.heads, "chunk": args.chunk, "left_chunks": args.left,
                   "batch": 1, "dtype": "float32", "repeats": args.repeats},
        "note": "forward_backward_s: best wall time of one forward + backward; peak_growth_mb: growth of the "
                "peak RSS over that call, each (path, T) in a fresh process",
        "runs": [],
    }
    for T in args.lengths:
        for path in ("chunked", "dense"):
            if path == "dense" and T > args.dense_max:
                continue
            cmd = [sys.executable, __file__, "--one", path, str(T), "--d-model", str(args.d_model),
                   "--heads", str(args.heads), "--chunk", str(args.chunk), "--left", str(args.left),
                   "--repeats", str(args.repeats)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            run = json.loads(out.stdout.strip().splitlines()[-1])
            result["runs"].append(run)
            print(json.dumps(run), file=sys.stderr, flush=True)
    result["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
