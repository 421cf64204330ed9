"""RNN-T loss: time and peak memory of the native (sliced) loss, the pruned loss and the full
joint tensor, and of the lattice forward-backward alone.

    .venv/bin/python bench/rnnt_loss.py                  # all cases, JSON list on stdout
    .venv/bin/python bench/rnnt_loss.py --shapes small   # only the small shape
    .venv/bin/python bench/rnnt_loss.py --impls pruned,full_joint --shapes big
    .venv/bin/python bench/rnnt_loss.py --case native:big:0   # one case (what the parent runs)

Each case runs in its own subprocess, so its peak resident memory (``ru_maxrss``) is its
own: ``baseline_mib`` is read after imports and input creation, ``peak_mib`` at the end,
``delta_mib`` = the difference = what the loss itself needed. ``seconds`` is the wall time
of forward + backward (median of ``repeats`` runs for the small shape, one run for the big;
at least 3 after a warm-up for the cheap cases: pruned, fb_*); ``cpu_seconds`` is the
process's CPU time over the same runs, steadier than wall time on a shared, loaded machine.
Impl "full_joint" builds the (B, T, U+1, V+1) tensor (asrlib.losses.rnnt_ref), "native"
slices it (asrlib.losses.rnnt, ``t_chunk`` 0 = automatic), "torchaudio" when installed;
both end in the analytic lattice forward-backward (asrlib.losses.lattice). "pruned" is the
pruned RNN-T loss (asrlib.losses.rnnt_pruned, R = ``PRUNE_RANGE``): simple loss + pruned
loss together, 0.5 * simple + pruned, forward + backward, simple projections included.
"fb_analytic" and "fb_recursion" time the lattice alone on random (B, T, U+1) tables:
the analytic forward-backward vs the alpha recursion differentiated by autograd (what the
native loss used before), loss + backward to the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

THREADS = 2
PRUNE_RANGE = 5
IMPLS = ("native", "full_joint", "pruned", "fb_analytic", "fb_recursion")
CHEAP = ("pruned", "fb_analytic", "fb_recursion")
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
    from asrlib.losses.lattice import lattice_loss
    from asrlib.losses.rnnt import forward_variables, rnnt_loss, rnnt_loss_torchaudio, sequence_losses
    from asrlib.losses.rnnt_pruned import pruned_rnnt_loss
    from asrlib.losses.rnnt_ref import rnnt_loss_full_joint
    from asrlib.model.heads import Joint, SimpleProjections

    torch.set_num_threads(THREADS)
    b, t, u, v, hidden, d_enc, d_pred, repeats = SHAPES[shape]
    if impl in CHEAP:  # seconds at most: a median of 3 (after a warm-up) tames a loaded machine
        repeats = max(repeats, 3)
    torch.manual_seed(0)
    joint = Joint(d_enc, d_pred, v, JointConfig(hidden=hidden, activation="tanh"))
    simple = SimpleProjections(d_enc, d_pred, v)
    enc = torch.randn(b, t, d_enc, requires_grad=True)
    pred = torch.randn(b, u + 1, d_pred, requires_grad=True)
    targets = torch.randint(0, v, (b, u))
    enc_lengths = torch.full((b,), t)
    target_lengths = torch.full((b,), u)
    lp_blank = torch.log_softmax(torch.randn(b, t, u + 1, 2), -1)[..., 0].requires_grad_(True)  # fb_* only
    lp_label = (-5 * torch.rand(b, t, u)).requires_grad_(True)

    def step() -> float:
        if impl == "fb_analytic":
            loss = lattice_loss(lp_blank, lp_label, enc_lengths, target_lengths)[0].sum()
        elif impl == "fb_recursion":
            alpha = forward_variables(lp_blank, lp_label)
            loss = sequence_losses(alpha, lp_blank, enc_lengths, target_lengths).sum()
        elif impl == "pruned":
            (s_loss, _), (p_loss, _) = pruned_rnnt_loss(joint, simple, enc, pred, targets, enc_lengths,
                                                        target_lengths, v, prune_range=PRUNE_RANGE,
                                                        t_chunk=t_chunk)
            loss = 0.5 * s_loss + p_loss
        elif impl == "native":
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
    times, cpu_times, loss = [], [], 0.0
    for _ in range(repeats):
        joint.zero_grad(set_to_none=True)
        simple.zero_grad(set_to_none=True)
        enc.grad = pred.grad = lp_blank.grad = lp_label.grad = None
        t0, c0 = time.perf_counter(), time.process_time()
        loss = step()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    peak = _rss_mib()
    if impl in ("native", "pruned") and t_chunk <= 0:
        from asrlib.losses.rnnt import auto_t_chunk
        from asrlib.losses.rnnt_pruned import BAND_BUDGET_MIB

        if impl == "native":
            t_chunk = auto_t_chunk(b, t, u + 1, hidden, v + 1)
        else:
            t_chunk = auto_t_chunk(b, t, PRUNE_RANGE, hidden, v + 1, BAND_BUDGET_MIB)
    return {
        "impl": impl, "shape": shape, "B": b, "T": t, "U": u, "V": v, "joint_hidden": hidden,
        "t_chunk": t_chunk if impl in ("native", "pruned") else None, "threads": THREADS,
        "prune_range": PRUNE_RANGE if impl == "pruned" else None,
        "seconds": sorted(times)[len(times) // 2], "cpu_seconds": sorted(cpu_times)[len(cpu_times) // 2],
        "runs": len(times),
        "peak_mib": round(peak, 1), "baseline_mib": round(baseline, 1), "delta_mib": round(peak - baseline, 1),
        "loss": loss,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", help="impl:shape:t_chunk, run in this process")
    ap.add_argument("--shapes", default="small,big")
    ap.add_argument("--t-chunks", default="0", help="native t_chunk values to try, comma separated")
    ap.add_argument("--impls", default="", help="comma separated subset of " + ",".join(IMPLS) + ",torchaudio")
    args = ap.parse_args()
    if args.case:
        impl, shape, t_chunk = args.case.split(":")
        print(json.dumps(run_case(impl, shape, int(t_chunk))))
        return
    try:
        import torchaudio  # noqa: F401

        impls = [*IMPLS, "torchaudio"]
    except ImportError:
        impls = list(IMPLS)
    if args.impls:
        impls = args.impls.split(",")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    results = []
    for shape in args.shapes.split(","):
        for impl in impls:
            chunks = [int(c) for c in args.t_chunks.split(",")] if impl in ("native", "pruned") else [0]
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
