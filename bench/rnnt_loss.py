"""RNN-T loss: time and peak memory of the native (sliced) loss vs the full joint tensor.

    .venv/bin/python bench/rnnt_loss.py                  # all cases, JSON list on stdout
    .venv/bin/python bench/rnnt_loss.py --shapes small   # only the small shape
    .venv/bin/python bench/rnnt_loss.py --case native:big:0   # one case (what the parent runs)

Each case runs in its own subprocess, so its peak resident memory (``ru_maxrss``) is its
own: ``baseline_mib`` is read after imports and input creation, ``peak_mib`` at the end,
``delta_mib`` = the difference = what the loss itself needed. ``seconds`` is the wall time
of forward + backward (median of ``repeats`` runs for the small shape, one run for the big).
Impl "full_joint" builds the (B, T, U+1, V+1) tensor (asrlib.losses.rnnt_ref), "native"
slices it (asrlib.losses.rnnt, ``t_chunk`` 0 = automatic), "torchaudio" when installed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

THREADS = 2
SHAPES = {  # name: (B, T, U, V, joint hidden, encoder dim, prediction dim, repeats)
    "small": (4, 100, 40, 256, 320, 256, 320, 5),
    "big": (16, 250, 100, 1024, 640, 512, 640, 1),
    "wide": (2, 100, 50, 2048, 16, 16, 16, 1),  # cheap to compute, big logits: notebook 03
}


def _rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB


def run_case(impl: str, shape: str, t_chunk: int) -> dict:
    import torch

    from asrlib.config import JointConfig
    from asrlib.losses.rnnt import rnnt_loss, rnnt_loss_torchaudio
    from asrlib.losses.rnnt_ref import rnnt_loss_full_joint
    from asrlib.model.heads import Joint

    torch.set_num_threads(THREADS)
    b, t, u, v, hidden, d_enc, d_pred, repeats = SHAPES[shape]
    torch.manual_seed(0)
    joint = Joint(d_enc, d_pred, v, JointConfig(hidden=hidden, activation="tanh"))
    enc = torch.randn(b, t, d_enc, requires_grad=True)
    pred = torch.randn(b, u + 1, d_pred, requires_grad=True)
    targets = torch.randint(0, v, (b, u))
    enc_lengths = torch.full((b,), t)
    target_lengths = torch.full((b,), u)

    def step() -> float:
        if impl == "native":
            loss, _ = rnnt_loss(joint, enc, pred, targets, enc_lengths, target_lengths, v, t_chunk=t_chunk)
        elif impl == "full_joint":
            loss, _ = rnnt_loss_full_joint(joint, enc, pred, targets, enc_lengths, target_lengths, v)
        else:
            loss, _ = rnnt_loss_torchaudio(joint, enc, pred, targets, enc_lengths, target_lengths, v)
        loss.backward()
        return float(loss.detach())

    baseline = _rss_mib()  # after imports and inputs; the loss's own memory comes on top
    if repeats > 1:
        step()  # warm-up (not timed) for the repeated small case
    times, loss = [], 0.0
    for _ in range(repeats):
        joint.zero_grad(set_to_none=True)
        enc.grad = pred.grad = None
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    peak = _rss_mib()
    if impl == "native" and t_chunk <= 0:
        from asrlib.losses.rnnt import auto_t_chunk

        t_chunk = auto_t_chunk(b, t, u + 1, hidden, v + 1)
    return {
        "impl": impl, "shape": shape, "B": b, "T": t, "U": u, "V": v, "joint_hidden": hidden,
        "t_chunk": t_chunk if impl == "native" else None, "threads": THREADS,
        "seconds": sorted(times)[len(times) // 2], "runs": len(times),
        "peak_mib": round(peak, 1), "baseline_mib": round(baseline, 1), "delta_mib": round(peak - baseline, 1),
        "loss": loss,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", help="impl:shape:t_chunk, run in this process")
    ap.add_argument("--shapes", default="small,big")
    ap.add_argument("--t-chunks", default="0", help="native t_chunk values to try, comma separated")
    args = ap.parse_args()
    if args.case:
        impl, shape, t_chunk = args.case.split(":")
        print(json.dumps(run_case(impl, shape, int(t_chunk))))
        return
    try:
        import torchaudio  # noqa: F401

        impls = ["native", "full_joint", "torchaudio"]
    except ImportError:
        impls = ["native", "full_joint"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    results = []
    for shape in args.shapes.split(","):
        for impl in impls:
            chunks = [int(c) for c in args.t_chunks.split(",")] if impl == "native" else [0]
            for tc in chunks:
                out = subprocess.run([sys.executable, __file__, "--case", f"{impl}:{shape}:{tc}"],
                                     capture_output=True, text=True, env=env)
                if out.returncode != 0:
                    results.append({"impl": impl, "shape": shape, "error": out.stderr.strip().splitlines()[-1:]})
                else:
                    results.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)  # progress
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
