"""Summarise several `make demo` runs (one per seed) as JSON: per run and median / range.

    make demo SEED=2; make demo SEED=3            # runs/demo, runs/demo-seed2, runs/demo-seed3
    .venv/bin/python bench/demo_seeds.py runs/demo runs/demo-seed2 runs/demo-seed3

For each run folder, from its ``metrics.jsonl`` (training curves) and ``metrics.json`` (the
demo's final table): the first evaluated step at which the validation WER of the RNN-T head
(and of the CTC head) is below 90 %, as a step and as a fraction of the run; the last
validation WER and CER of both heads; the WER and CER of every split/decoder in the final
table; training minutes and audio-seconds per second (the trainer's own count, all processes
together).
Then, for every number, the median and [min, max] over the runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from learning_start import first_below  # bench/learning_start.py, beside this script


def summarise(run: Path) -> dict:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    valid = [r for r in rows if r["split"] == "valid"]
    train = [r for r in rows if r["split"] == "train"]
    final = json.loads((run / "metrics.json").read_text())
    steps = int(final["steps"])
    out: dict = {"steps": steps}
    for head, suffix in (("rnnt", "wer_rnnt"), ("ctc", "wer_ctc")):
        s = first_below(valid, suffix)
        out[f"steps_to_90_{head}"] = s
        out[f"fraction_to_90_{head}"] = None if s is None else round(s / steps, 3)
        for unit in ("wer", "cer"):  # runs from before the CER was logged have no cer keys
            last = [v for k, v in valid[-1].items() if k.endswith(f"{unit}_{head}")] if valid else []
            out[f"last_dev_{unit}_{head}"] = round(100 * last[0], 2) if last else None
    for key, r in final["results"].items():
        out[f"wer:{key}"] = round(100 * r["wer"], 2)
        out[f"cer:{key}"] = round(100 * r["cer"], 2)
    out["train_minutes"] = round(final["train_minutes_this_run"], 2)
    if train:
        out["audio_seconds_per_second"] = round(train[-1].get("audio_seconds_per_second", 0.0), 1)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    args = p.parse_args()
    runs = {r: summarise(Path(r)) for r in args.runs}
    median, spread = {}, {}
    for key in sorted({k for v in runs.values() for k in v}):
        vals = [v[key] for v in runs.values() if v.get(key) is not None]
        if vals and len(vals) == len(runs):
            median[key] = statistics.median(vals)
            spread[key] = [min(vals), max(vals)]
        else:
            median[key], spread[key] = None, [v.get(key) for v in runs.values()]
    print(json.dumps({"runs": runs, "median": median, "range": spread}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
