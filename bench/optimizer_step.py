"""One AdamW update of a preset's model: the fused kernel against PyTorch's per-tensor loop.

Random gradients on every parameter (a vocabulary of 128 where the preset takes its size from
its tokenizer), a few warm-up updates, then ``--steps`` timed updates of
each kind, interleaved in rounds so that a shared machine's load falls on both alike. The
ratio is the number to read; absolute milliseconds depend on the machine.

    .venv/bin/python bench/optimizer_step.py [--presets an4 demo] [--threads 1] [--steps 30]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asrlib.config import load_config  # noqa: E402
from asrlib.model.hybrid import build_model, count_parameters  # noqa: E402
from asrlib.optim import param_groups  # noqa: E402


def per_update_ms(opt: torch.optim.Optimizer, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return (time.perf_counter() - t0) / steps * 1000


def measure(preset: str, steps: int, rounds: int) -> dict:
    cfg = load_config(ROOT / "configs" / f"{preset}.toml", ["validation_dataset.validation_manifest=[]"])
    cfg.model.vocab_size = cfg.model.vocab_size or 128
    model = build_model(cfg.model)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    kinds = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    opts = {k: torch.optim.AdamW(param_groups(model, cfg.optim), lr=1e-6, betas=tuple(cfg.optim.betas), **kw)
            for k, kw in kinds.items()}
    for opt in opts.values():
        per_update_ms(opt, 3)
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(rounds):
        for k, opt in opts.items():
            times[k].append(per_update_ms(opt, steps))
    best = {k: min(v) for k, v in times.items()}
    return {"preset": preset, "params_M": round(count_parameters(model) / 1e6, 3),
            "tensors": sum(1 for _ in model.parameters()),
            "ms_per_update": {k: round(v, 2) for k, v in best.items()},
            "loop_over_fused": round(best["loop"] / best["fused"], 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["an4", "demo"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(preset, args.steps, args.rounds) for preset in args.presets]
    print(json.dumps({"torch": torch.__version__, "threads": args.threads, "load_avg": os.getloadavg(),
                      "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
