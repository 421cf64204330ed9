"""Streaming cost on this CPU, one thread: latency, real-time factor, FLOPs and memory; prints JSON.

    .venv/bin/python bench/streaming.py [--quick] [--chunks 16 32 64 100] [--minutes 1 10 60]

The demo preset (configs/demo.toml, vocabulary 32) with the shipped weights of
models/digits_demo when present (or ``--weights FOLDER``), else random weights (seed 0); random
weights make the RNN-T greedy decoder emit up to its symbol limit on every frame, so its share
of the time is then an upper bound. torch and onnxruntime both run
with one intra-op thread: the cost of one stream on one core.

1. ``chunks``: for each chunk size (``model.encoder.chunk_frames`` = 16, 32, 64, 100 frontend
   frames = 160, 320, 640, 1000 ms; ``left_chunks`` as in the preset) the bundled test_seen
   speech (about ``--audio-seconds`` of it) is fed one chunk of samples per call to a
   :class:`StreamingRecognizer` (RNN-T greedy) on the PyTorch model (eager) and on the ONNX
   export (onnxruntime). Per-chunk compute latency (median, p95; calls that ran one chunk) and the
   real-time factor (compute seconds / audio seconds) for each; and the PyTorch
   ``TorchStreamingBackend.step`` alone (frontend + encoder + CTC head, no decoder). With
   ``--compile``, also the recogniser with its step through ``torch.compile``
   (``torch_compiled``; ``torch_compile_warmup_seconds`` is the wall time of its first 4
   chunks, compilation included).
1b. ``concurrency``: ``--streams`` (1, 8, 32) streams at once, 320 ms chunks, each stream a
   different stretch of the speech, fed one chunk per stream per ``accept_waveforms`` call (the
   ready streams are stepped and RNN-T-decoded as one batch). Aggregate audio-seconds per
   second (all streams' audio / compute seconds) and per-chunk latency (median, p95 of the
   call that runs every stream's chunk: what each stream waits), PyTorch and onnxruntime.
2. ``flops``: FLOPs of one full-chunk streaming step (frontend + encoder, with a full attention
   cache), counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions,
   attention; element-wise operations are not counted), scaled to one second of audio; and the
   machine's measured float32 matmul FLOP/s (1024 x 1024 x 1024, one thread) in the same run.
   ``rtf_compute_floor`` = FLOPs per audio second / matmul FLOP/s: the RTF if every counted
   FLOP ran at dense-matmul speed; the measured RTF over it is the overhead of small operations,
   the decoder and Python.
3. ``memory``: peak resident memory (``VmHWM``, i.e. ``ru_maxrss`` without the peak inherited
   across fork + exec) against stream length. Each length runs in
   its own subprocess feeding synthetic audio (low noise with 1 s tone bursts) in 1 s pieces to
   a PyTorch StreamingRecognizer with the CTC greedy decoder (chunk 32), reporting every
   simulated minute. A child that exceeds ``--max-child-seconds`` is stopped; its last report
   is kept and ``extrapolated_peak_rss_mib`` (linear growth from minute 1, marked
   ``"extrapolated": true``) stands in for the rest.

Timings are medians/percentiles over chunks; the 1-minute load average is recorded next to
them (the machine may be shared). Nothing here runs in the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asrlib.config import load_config  # noqa: E402
from asrlib.model.hybrid import HybridASR, build_model, count_parameters  # noqa: E402
from asrlib.streaming import StreamingRecognizer  # noqa: E402
from asrlib.tokenizer import Tokenizer  # noqa: E402

SHIPPED = ROOT / "models" / "digits_demo"
TOKENIZER = ROOT / "data_samples" / "digits" / "tokenizer"


def make_model(chunk_frames: int, weights: str) -> tuple[HybridASR, Path]:
    """The demo model with ``chunk_frames`` (weights do not depend on it) and its tokenizer."""
    cfg = load_config(ROOT / "configs" / "demo.toml", [f"model.encoder.chunk_frames={chunk_frames}",
                                                        "model.vocab_size=32"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    tok = TOKENIZER
    if weights != "random":
        from asrlib.checkpoint import load_model

        shipped, tok = load_model(weights)
        shipped.cfg.encoder.chunk_frames = chunk_frames
        model = build_model(shipped.cfg)
        model.load_state_dict(shipped.state_dict())
    return model.eval(), tok


def speech(sample_rate: int, seconds: float) -> np.ndarray:
    from asrlib.export import verification_audio

    return verification_audio(sample_rate, int(seconds * sample_rate))[: int(seconds * sample_rate)]


def feed_timed(rec: StreamingRecognizer, wave: np.ndarray, piece: int) -> tuple[list[float], float, str]:
    """Stream ``wave`` ``piece`` samples per call; returns per-call seconds (the first call is
    left out: it only fills the frontend's left context; so is the final flush), the total
    compute seconds and the text."""
    rec.reset()
    walls, result = [], None
    t0 = time.perf_counter()
    for result in rec.stream(wave, piece):
        walls.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
    return walls[1:-1], sum(walls), result.text


def summary(walls: list[float], total: float, audio_seconds: float) -> dict:
    ms = 1000 * np.asarray(walls)
    return {"chunk_ms_median": round(float(np.median(ms)), 3), "chunk_ms_p95": round(float(np.percentile(ms, 95)), 3),
            "chunk_ms_max": round(float(ms.max()), 3), "chunks": len(walls), "rtf": round(total / audio_seconds, 5)}


@torch.no_grad()
def step_flops(model: HybridASR) -> int:
    """FLOPs of one full-chunk step (frontend + encoder) with a full left-context cache."""
    from torch.utils.flop_counter import FlopCounterMode

    rec = StreamingRecognizer(model, None, decoder="ctc_greedy")
    b, c = rec.backend, model.streaming
    rng = np.random.default_rng(0)
    warm = 0.05 * rng.standard_normal(c.context + (model.cfg.encoder.left_chunks + 2) * c.chunk_samples)
    rec.accept_waveform(warm.astype(np.float32))  # fills the attention cache
    samples = (0.05 * rng.standard_normal((1, c.chunk_samples))).astype(np.float32)  # (1, chunk_samples)
    with FlopCounterMode(display=False) as counter:
        b.step(rec.state, [0], samples)
    return int(counter.get_total_flops())


def encoder_step_ms(backend, wave: np.ndarray) -> list[float]:
    """Milliseconds of each ``backend.step`` (frontend + encoder + CTC head, no decoder)."""
    n, c = backend.constants.chunk_samples, backend.constants.context
    state = backend.prime(backend.init_state(1), 0, wave[:c])
    times = []
    for start in range(c, len(wave) - n + 1, n):
        t0 = time.perf_counter()
        _, _, _, state = backend.step(state, [0], wave[None, start : start + n])  # (1, chunk_samples) in
        times.append(1000 * (time.perf_counter() - t0))
    return times


def matmul_flops_per_second(n: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def bench_chunk(chunk_frames: int, weights: str, audio_seconds: float, compile: bool = False) -> dict:
    from asrlib.export import export_onnx
    from asrlib.onnx_runtime import load_onnx_recognizer

    model, tok_path = make_model(chunk_frames, weights)
    tokenizer = Tokenizer(tok_path)
    sr = model.cfg.frontend.sample_rate
    wave = speech(sr, audio_seconds)
    secs = len(wave) / sr
    rec = StreamingRecognizer(model, tokenizer)
    piece = model.streaming.chunk_samples
    feed_timed(rec, wave[: 4 * piece], piece)  # warm-up
    torch_walls, torch_total, torch_text = feed_timed(rec, wave, piece)

    compiled = {}
    if compile:  # the same recogniser with its step through torch.compile; the first chunks pay the compilation
        crec = StreamingRecognizer(model, tokenizer, compile=True)
        t0 = time.perf_counter()
        feed_timed(crec, wave[: 4 * piece], piece)
        compiled["torch_compile_warmup_seconds"] = round(time.perf_counter() - t0, 1)
        walls, total, text = feed_timed(crec, wave, piece)
        compiled["torch_compiled"] = summary(walls, total, secs)
        compiled["torch_compiled_same_text"] = text == torch_text
    enc_ms = encoder_step_ms(rec.backend, wave)
    flops = step_flops(model)
    chunk_seconds = piece / sr
    out = {"chunk_frames": chunk_frames, "chunk_ms": round(1000 * chunk_seconds), "left_context_ms":
           round(1000 * chunk_seconds * model.cfg.encoder.left_chunks), "audio_seconds": round(secs, 3),
           "torch_eager": summary(torch_walls, torch_total, secs), **compiled,
           "torch_encoder_step_ms_median": round(float(np.median(enc_ms)), 3),
           "flops_per_chunk_step": flops, "gflops_per_audio_second": round(flops / chunk_seconds / 1e9, 4)}
    with tempfile.TemporaryDirectory(prefix="asrlib_bench_stream_") as d:
        t0 = time.perf_counter()
        export_onnx(model, d, tok_path)
        out["onnx_export_seconds"] = round(time.perf_counter() - t0, 2)
        onnx_rec = load_onnx_recognizer(d, threads=1)
        feed_timed(onnx_rec, wave[: 4 * piece], piece)  # warm-up
        onnx_walls, onnx_total, onnx_text = feed_timed(onnx_rec, wave, piece)
        out["onnxruntime"] = summary(onnx_walls, onnx_total, secs)
        out["onnx_same_text"] = onnx_text == torch_text
    return out


def concurrent_timed(rec: StreamingRecognizer, waves: list[np.ndarray], piece: int) -> dict:
    """Every stream gets ``piece`` samples per call; per-call seconds and aggregate rate."""
    rec.reset()
    n = min(len(w) for w in waves)
    walls = []
    for start in range(0, n, piece):
        t0 = time.perf_counter()
        rec.accept_waveforms([w[start : start + piece] for w in waves], texts=False)
        walls.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    rec.finalize_all()
    total = sum(walls) + time.perf_counter() - t0
    ms = 1000 * np.asarray(walls[1:])  # the first call only primes the frontends
    audio = len(waves) * n / rec.constants.sample_rate
    return {"streams": len(waves), "audio_seconds_all_streams": round(audio, 2),
            "audio_s_per_s": round(audio / total, 1), "chunk_ms_median": round(float(np.median(ms)), 3),
            "chunk_ms_p95": round(float(np.percentile(ms, 95)), 3)}


def bench_concurrency(weights: str, audio_seconds: float, counts: list[int]) -> dict:
    from asrlib.export import export_onnx
    from asrlib.onnx_runtime import load_onnx_recognizer

    model, tok_path = make_model(32, weights)
    tokenizer = Tokenizer(tok_path)
    sr, piece = model.cfg.frontend.sample_rate, model.streaming.chunk_samples
    n = int(audio_seconds * sr)
    long = speech(sr, audio_seconds + max(counts) * 0.5)
    waves = [long[int(0.5 * i * sr) : int(0.5 * i * sr) + n] for i in range(max(counts))]  # different stretches
    out = {"chunk_ms": round(1000 * piece / sr), "audio_seconds_per_stream": audio_seconds, "torch_eager": [],
           "onnxruntime": []}
    with tempfile.TemporaryDirectory(prefix="asrlib_bench_streams_") as d:
        export_onnx(model, d, tok_path)
        for k in counts:
            for name, rec in (("torch_eager", StreamingRecognizer(model, tokenizer, num_streams=k)),
                              ("onnxruntime", load_onnx_recognizer(d, threads=1, num_streams=k))):
                concurrent_timed(rec, [w[: 4 * piece] for w in waves[:k]], piece)  # warm-up
                out[name].append(concurrent_timed(rec, waves[:k], piece))
    for name in ("torch_eager", "onnxruntime"):
        one = out[name][0]["audio_s_per_s"] if counts[0] == 1 else None
        for row in out[name]:
            if one:
                row["speedup_over_one_stream"] = round(row["audio_s_per_s"] / one, 2)
            row["p95_under_chunk"] = row["chunk_ms_p95"] < out["chunk_ms"]
    return out


# --------------------------------------------------------------------------- memory (child)
def peak_rss_mib() -> float:
    """Peak resident memory of this process image, MiB. ``VmHWM`` is reset by exec; Linux's
    ``ru_maxrss`` is not (a child reports its forking parent's peak if that was higher)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)  # kB
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def memory_child(minutes: float, weights: str) -> None:
    """Stream ``minutes`` of synthetic audio; print a JSON line every simulated minute."""
    torch.set_num_threads(1)
    model, tok_path = make_model(32, weights)
    rec = StreamingRecognizer(model, Tokenizer(tok_path), decoder="ctc_greedy")
    sr = model.cfg.frontend.sample_rate
    rng = np.random.default_rng(0)
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(sr // 2) / sr)).astype(np.float32)
    t0 = time.perf_counter()
    print(json.dumps({"minute": 0, "peak_rss_mib": peak_rss_mib(), "wall_seconds": 0.0}), flush=True)
    for second in range(1, int(minutes * 60) + 1):
        piece = (0.01 * rng.standard_normal(sr)).astype(np.float32)  # (sr,) 1 s
        if second % 3 == 0:
            piece[: len(tone)] += tone
        rec.accept_waveform(piece)
        if second % 60 == 0:
            print(json.dumps({"minute": second // 60, "peak_rss_mib": peak_rss_mib(),
                              "wall_seconds": round(time.perf_counter() - t0, 1),
                              "tokens": len(rec.partial().tokens), "state_numel": rec.state_numel()}), flush=True)


def bench_memory(minutes: float, weights: str, max_seconds: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", str(minutes), "--weights", weights]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    stopped = False
    try:
        proc.wait(timeout=max_seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        stopped = True
    rows = [json.loads(line) for line in proc.stdout.read().splitlines() if line.strip()]
    last = rows[-1] if rows else {}
    out = {"stream_minutes": minutes, "reached_minutes": last.get("minute", 0),
           "peak_rss_mib": last.get("peak_rss_mib"), "peak_rss_mib_before_streaming": rows[0]["peak_rss_mib"] if rows else None,
           "wall_seconds": last.get("wall_seconds"), "state_numel": last.get("state_numel"),
           "completed": not stopped and proc.returncode == 0,
           "peak_rss_mib_every_10_minutes": [r["peak_rss_mib"] for r in rows if r["minute"] % 10 == 0]}
    if out["wall_seconds"] and out["reached_minutes"]:
        out["rtf"] = round(out["wall_seconds"] / (60 * out["reached_minutes"]), 4)
    if not out["completed"] and len(rows) >= 3:  # linear growth from minute 1 to the last report
        slope = (rows[-1]["peak_rss_mib"] - rows[1]["peak_rss_mib"]) / max(rows[-1]["minute"] - 1, 1)
        out["extrapolated"] = True
        out["extrapolated_peak_rss_mib"] = round(rows[-1]["peak_rss_mib"] + slope * (minutes - rows[-1]["minute"]), 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, nargs="*", default=[16, 32, 64, 100], help="chunk_frames values")
    p.add_argument("--minutes", type=float, nargs="*", default=[1, 10, 60], help="stream lengths for memory")
    p.add_argument("--streams", type=int, nargs="*", default=[1, 8, 32], help="concurrent stream counts")
    p.add_argument("--audio-seconds", type=float, default=30.0, help="speech fed per chunk size")
    p.add_argument("--weights", default="auto",
                   help="'random', an exported model folder, or 'auto' (models/digits_demo if present, else random)")
    p.add_argument("--max-child-seconds", type=float, default=1200.0, help="stop a memory child after this")
    p.add_argument("--quick", action="store_true", help="chunks 32, 8 s of audio, 1 minute of memory")
    p.add_argument("--compile", action="store_true",
                   help="also time each chunk size with the step through torch.compile (about a minute each)")
    p.add_argument("--memory-child", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    weights = args.weights if args.weights != "auto" else (str(SHIPPED) if (SHIPPED / "model.safetensors").is_file()
                                                         else "random")
    if args.memory_child is not None:
        memory_child(args.memory_child, weights)
        return 0
    if args.quick:
        args.chunks, args.audio_seconds, args.minutes, args.streams = [32], 8.0, [1], [1, 8]
    for c in args.chunks:
        if c % 4:
            p.error(f"chunk_frames {c} is not a multiple of the subsampling factor 4")

    torch.set_num_threads(1)
    model, _ = make_model(32, weights)
    result = {
        "bench": "streaming", "preset": "demo", "weights": weights, "parameters": count_parameters(model),
        "torch": torch.__version__, "threads": 1, "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
    }
    result["matmul_gflops_per_second_1_thread"] = round(matmul_flops_per_second() / 1e9, 2)
    result["chunks"] = []
    for c in args.chunks:
        r = bench_chunk(c, weights, args.audio_seconds, args.compile)
        r["rtf_compute_floor"] = round(r["gflops_per_audio_second"] / result["matmul_gflops_per_second_1_thread"], 5)
        result["chunks"].append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)
    if args.streams:
        result["concurrency"] = bench_concurrency(weights, min(args.audio_seconds, 10.0), args.streams)
        print(json.dumps(result["concurrency"]), file=sys.stderr, flush=True)
    result["memory"] = []
    for m in args.minutes:
        r = bench_memory(m, weights, args.max_child_seconds)
        result["memory"].append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)
    result["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
