"""The benchmark scripts run: the GPU step's CPU dry run (what a GPU session runs first) and the
training-throughput comparisons, on small settings. Their numbers are measurements, not asserted;
what is asserted is that they finish, learn on their fixed batch, and derive their ratios right."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_json(*args: str) -> dict:
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout[out.stdout.index("{\n"):])  # the last, indented object


@pytest.mark.slow
def test_gpu_step_dry_run_on_cpu():
    """bench/gpu_step.py on a bare Trainer (no setup()): every mode steps and the loss falls."""
    report = run_json("bench/gpu_step.py", "--config", "configs/tiny.toml", "--device", "cpu", "--utts", "2",
                      "--seconds", "2", "--steps", "3", "--modes", "fp32", "bf16")
    assert set(report["modes"]) == {"fp32", "bf16"}
    for mode in report["modes"].values():
        assert mode["skipped_steps"] == 0
        assert mode["loss_last"] < mode["loss_first"]  # 3 + 3 warm-up AdamW steps on one fixed batch


@pytest.mark.slow
def test_train_throughput_ratios():
    """Each bf16 row carries its speed over the fp32 row of the same preset (same run)."""
    report = run_json("bench/train_throughput.py", "--presets", "tiny", "--threads", "1", "--steps", "2",
                      "--warmup", "1", "--precisions", "fp32", "bf16", "--v1024")
    rows = {(r["preset"], r["precision"]): r for r in report["results"]}
    assert set(rows) == {(p, q) for p in ("tiny", "demo@d256x6,V1024") for q in ("fp32", "bf16")}
    for preset in ("tiny", "demo@d256x6,V1024"):
        fp32, bf16 = rows[preset, "fp32"], rows[preset, "bf16"]
        assert "speedup_over_fp32" not in fp32
        expected = bf16["audio_seconds_per_second"] / fp32["audio_seconds_per_second"]
        assert bf16["speedup_over_fp32"] == pytest.approx(expected, abs=1e-3)  # both rounded in the JSON


def test_decoding_bench_runs_every_decoder_and_streams_what_it_decodes():
    """bench/decoding.py on three AN4 utterances: every decoder's streaming text equals its
    offline text, and the ratios are taken against greedy from the same run."""
    report = run_json("bench/decoding.py", "--limit", "3", "--repeats", "1", "--lm-order", "4")
    assert set(report["decoders"]) == {"rnnt_greedy", "rnnt_beam", "rnnt_beam_lm", "ctc_greedy", "ctc_beam",
                                       "ctc_beam_lm"}
    for row in report["decoders"].values():
        assert row["streaming_equals_offline"] and row["decoder_only_rtf"] > 0
    assert report["decoders"]["rnnt_greedy"]["rtf_over_greedy"] == 1.0
    assert report["lm"]["order"] == 4 and report["lm"]["ngrams"] > 28
