"""CPU speed of the model and of its two mixers; prints JSON to stdout.

    .venv/bin/python bench/model_speed.py [--quick] [--presets tiny demo] [--threads 2 1]

1. Whole model (frontend + encoder + CTC head), per preset and thread count: seconds of compute
   per second of audio (the real-time factor) for forward (no grad) and forward + backward.
2. Mixers alone at the same width (d_model 256): GroupedQueryAttention (computed chunk by
   chunk, as in training; bench/attention_memory.py compares it with the dense T x T path)
   vs Mamba2Mixer (chunked SSD scan) for T = 250, 1000, 4000 encoder frames (10 s, 40 s,
   160 s at 40 ms/frame), forward and forward + backward, in milliseconds per call with batch 1.
3. If ``transformers`` is importable, its Mamba2 mixer (pure-PyTorch path) at the same dims.

Times are the best (minimum) of ``--repeats`` runs after one warm-up: on a shared machine the
minimum is the least disturbed estimate; the load average is recorded next to the numbers.
Nothing here runs in the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asrlib.config import AttentionConfig, Mamba2Config, load_config  # noqa: E402
from asrlib.model.attention import GroupedQueryAttention  # noqa: E402
from asrlib.model.hybrid import build_model, count_parameters  # noqa: E402
from asrlib.model.mamba2 import Mamba2Mixer  # noqa: E402


def timed(fn, repeats: int) -> float:
    """Best wall time of ``fn()`` in seconds over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_model(preset: str, threads: int, seconds: float, batch: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_config(ROOT / "configs" / f"{preset}.toml")
    cfg.model.vocab_size = 256
    model = build_model(cfg.model)
    sr = cfg.model.frontend.sample_rate
    S = int(seconds * sr)
    audio = 0.1 * torch.randn(batch, S)  # (B, S)
    lengths = torch.full((batch,), S)
    audio_seconds = batch * seconds

    def forward():
        with torch.no_grad():
            enc, _ = model(audio, lengths)
            model.ctc_head(enc)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        enc, _ = model(audio, lengths)
        model.ctc_head(enc).sum().backward()

    model.eval()
    fwd = timed(forward, repeats)
    model.train()
    fb = timed(forward_backward, repeats)
    return {
        "preset": preset,
        "threads": threads,
        "parameters": count_parameters(model),
        "batch": batch,
        "seconds_per_item": seconds,
        "forward_s_per_audio_s": round(fwd / audio_seconds, 5),
        "forward_backward_s_per_audio_s": round(fb / audio_seconds, 5),
    }


def bench_mixer(name: str, module: torch.nn.Module, d_model: int, T: int, repeats: int) -> dict:
    torch.manual_seed(0)
    x = torch.randn(1, T, d_model)  # (B, T, D)
    lengths = torch.tensor([T])

    def forward():
        with torch.no_grad():
            module(x, lengths)

    def forward_backward():
        module.zero_grad(set_to_none=True)
        xg = x.clone().requires_grad_(True)
        module(xg, lengths).sum().backward()

    return {
        "mixer": name,
        "T": T,
        "forward_ms": round(1e3 * timed(forward, repeats), 2),
        "forward_backward_ms": round(1e3 * timed(forward_backward, repeats), 2),
        "parameters": count_parameters(module),
    }


def transformers_mamba2(d_model: int, mc: Mamba2Config):
    """transformers' Mamba2Mixer at the same dims (its torch_forward path on CPU), or a reason."""
    try:
        from transformers import Mamba2Config as HFConfig
        from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer as HFMixer
    except Exception as e:  # not installed here; we do not install it
        return None, f"transformers not importable ({type(e).__name__}); skipped"
    hf_cfg = HFConfig(
        hidden_size=d_model, state_size=mc.d_state, conv_kernel=mc.d_conv, expand=mc.expand,
        head_dim=mc.headdim, n_groups=mc.ngroups, chunk_size=mc.chunk_size,
        num_heads=mc.expand * d_model // mc.headdim, num_hidden_layers=1,
    )
    mixer = HFMixer(hf_cfg, layer_idx=0)

    class Wrap(torch.nn.Module):  # (x, lengths) -> y, like ours
        def __init__(self):
            super().__init__()
            self.m = mixer

        def forward(self, x, lengths=None):
            return self.m.torch_forward(x)

    return Wrap(), "transformers Mamba2Mixer.torch_forward"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="+", default=None, help="default: tiny and demo (seed_large if demo is absent)")
    p.add_argument("--threads", nargs="+", type=int, default=[2, 1])
    p.add_argument("--mixer-threads", type=int, default=1)
    p.add_argument("--lengths", nargs="+", type=int, default=[250, 1000, 4000])
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="fewer repeats and shorter audio (a smoke run)")
    args = p.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    presets = args.presets or ["tiny", "demo" if (ROOT / "configs" / "demo.toml").is_file() else "seed_large"]

    result: dict = {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "repeats": repeats,
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "note": "s_per_audio_s = wall seconds of compute per second of audio (real-time factor); "
                "mixer times are ms per call, batch 1, fp32",
        "model": [],
        "mixers": {"d_model": args.d_model, "threads": None, "runs": []},
    }
    for preset in presets:
        big = preset not in ("tiny",)
        seconds, batch = (2.0, 1) if big else (5.0, 4)
        if args.quick:
            seconds, batch = 1.0, 1
        for threads in args.threads:
            result["model"].append(bench_model(preset, threads, seconds, batch, repeats))
            print(json.dumps(result["model"][-1]), file=sys.stderr)

    d = args.d_model
    threads = args.mixer_threads
    torch.set_num_threads(threads)
    result["mixers"]["threads"] = threads
    attn_cfg = AttentionConfig(n_heads=4)  # K = 2 kv heads, head dim 64
    mamba_cfg = Mamba2Config(backend="torch")  # d_state 64, headdim 32, expand 2, chunk 64
    chunk, left = 25, 1  # seed_large chunking in encoder frames: 1 s chunk, 1 s left context
    result["mixers"]["gqa"] = f"n_heads {attn_cfg.n_heads}, kv_heads {attn_cfg.kv_heads()}, chunk {chunk}, left_chunks {left}"
    result["mixers"]["mamba2"] = (f"d_state {mamba_cfg.d_state}, headdim {mamba_cfg.headdim}, expand {mamba_cfg.expand}, "
                                  f"chunk_size {mamba_cfg.chunk_size}")
    hf, hf_note = transformers_mamba2(d, mamba_cfg)
    result["mixers"]["transformers_mamba2"] = hf_note
    for T in args.lengths:
        torch.manual_seed(0)
        mixers = [("gqa", GroupedQueryAttention(d, attn_cfg, chunk, left)), ("mamba2", Mamba2Mixer(d, mamba_cfg))]
        if hf is not None:
            mixers.append(("transformers_mamba2", hf))
        for name, module in mixers:
            result["mixers"]["runs"].append(bench_mixer(name, module, d, T, repeats))
            print(json.dumps(result["mixers"]["runs"][-1]), file=sys.stderr)
    result["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
