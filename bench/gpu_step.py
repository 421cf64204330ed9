"""One training step of a preset on a GPU (or, for a dry run, the CPU): speed, memory, FLOP use.

    python bench/gpu_step.py --config configs/seed_large.toml --device cuda \
        [--modes fp32 bf16 bf16+compile] [--steps 10] [--warmup 3] [--peak-tflops 989]
    python bench/gpu_step.py --config configs/tiny.toml --device cpu --utts 2 --seconds 2 --steps 2   (dry run)

Data: random audio and random token ids of fixed sizes (``--utts`` utterances of ``--seconds``
each; default: the preset's batch budget, capped by its max_batch_size; ``--tokens-per-second``
targets; ``--vocab`` pieces), so no corpus is needed and every step has the same shapes. The
step is the trainer's own ``Trainer.train_step`` (SpecAugment, autocast, GradScaler,
clipping, AdamW, schedule) on a bare Trainer fed a ready batch. Speed and gain perturbation
run in the DataLoader workers, not in the step; their CPU time per batch is timed apart, on
one core (``worker_perturb_seconds_per_batch``).

Per mode (fp32 | bf16 | fp16 | X+compile, X+compile=blocks | X+compile=model: trainer.compile_scope;
plain +compile takes the config's scope): steps/s, audio-seconds/s, peak GPU memory, and
``fraction_of_bf16_peak`` = model FLOPs per step / step time / the GPU's stated dense bf16 peak
(``--peak-tflops``; known GPUs are looked up by name, see PEAK_TFLOPS). Model FLOPs per step
are counted once by torch.utils.flop_counter (forward + backward of the eager fp32 step:
matmuls, convolutions, attention). ``mamba2_scan_share`` = Mamba2 layers x the time of the
pure-PyTorch SSD scan (forward + backward, at this step's shapes and autocast, measured on its
own) / step time: how much a fused scan kernel could save.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asrlib.config import load_config  # noqa: E402
from asrlib.data.augment import WavePerturbation  # noqa: E402
from asrlib.data.dataset import Batch  # noqa: E402
from asrlib.model.hybrid import build_model, count_parameters  # noqa: E402
from asrlib.model.mamba2 import Mamba2Mixer  # noqa: E402
from asrlib.model.ssd import ssd_chunked  # noqa: E402
from asrlib.train import Progress, Trainer  # noqa: E402

# Dense bf16 tensor-core peak (TFLOP/s, no sparsity) from the vendors' data sheets.
PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0,
               "L40S": 362.0, "L4": 121.0, "A10": 125.0, "RTX 4090": 165.0, "RTX 3090": 71.0, "V100": 125.0}


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_TFLOPS.items():
        if key in name:
            return value
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_trainer(cfg, device: torch.device) -> Trainer:
    """A Trainer with model, loss, optimiser and scaler but no data, logger or output folder."""
    tr = Trainer(cfg)
    tr.world, tr.rank, tr.device = 1, 0, device
    torch.manual_seed(0)
    tr.model = build_model(cfg.model).to(device)
    tr.build_training_modules()
    tr.progress = Progress()
    return tr


def random_batch(utts: int, seconds: float, tokens: int, vocab: int, sr: int) -> Batch:
    g = torch.Generator().manual_seed(0)
    samples = int(seconds * sr)
    audio = 0.1 * torch.randn(utts, samples, generator=g)  # (B, S)
    ids = torch.randint(0, vocab, (utts, tokens), generator=g)  # (B, U)
    return Batch(audio, torch.full((utts,), samples), ids, torch.full((utts,), tokens), [""] * utts,
                 list(range(utts)))


def count_flops(tr: Trainer, batch: Batch) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        tr.train_step([batch])
    return float(counter.get_total_flops())


def scan_seconds(tr: Trainer, batch: Batch, amp_dtype, reps: int = 3) -> tuple[float, int]:
    """(seconds of one SSD scan forward + backward at this batch's shapes, Mamba2 layers)."""
    mixers = [m for m in tr.model.modules() if isinstance(m, Mamba2Mixer)]
    if not mixers:
        return 0.0, 0
    m, dev = mixers[0], tr.device
    B = batch.audio.shape[0]
    T = int(tr.model.output_lengths(batch.audio_lengths).max())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, m.n_heads, m.headdim, generator=g).to(dev).requires_grad_()  # (B, T, H, P)
    dt = (0.05 * torch.rand(B, T, m.n_heads, generator=g)).to(dev).requires_grad_()  # (B, T, H)
    A = -torch.rand(m.n_heads, generator=g).to(dev).requires_grad_()  # (H,)
    b = torch.randn(B, T, m.ngroups, m.d_state, generator=g).to(dev).requires_grad_()  # (B, T, G, N)
    c = torch.randn(B, T, m.ngroups, m.d_state, generator=g).to(dev).requires_grad_()  # (B, T, G, N)

    def once():
        with torch.autocast(dev.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            y, _ = ssd_chunked(x, dt, A, b, c, m.cfg.chunk_size)
        y.float().sum().backward()

    once()  # warm-up
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(reps):
        once()
    sync(dev)
    return (time.perf_counter() - t0) / reps, len(mixers)


def run_mode(mode: str, args, base_over: list[str], device: torch.device, batch: Batch, flops: float | None,
             peak: float | None) -> dict:
    precision, _, compiled = mode.partition("+")  # "bf16+compile" or "bf16+compile=model"
    over = base_over + [f"trainer.precision={precision}", f"trainer.compile={'true' if compiled else 'false'}"]
    if "=" in compiled:
        over.append(f"trainer.compile_scope={compiled.partition('=')[2]}")
    cfg = load_config(args.config, over)
    cfg.model.vocab_size = args.vocab
    tr = bare_trainer(cfg, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    first = [tr.train_step([batch]) for _ in range(args.warmup)]
    sync(device)
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    timed = [tr.train_step([batch]) for _ in range(args.steps)]
    sync(device)
    step_s = (time.perf_counter() - t0) / args.steps
    scan_s, n_mamba = scan_seconds(tr, batch, tr.amp_dtype)
    audio_s = float(batch.audio_lengths.sum()) / cfg.model.frontend.sample_rate
    # batches of other shapes (as a real run's length buckets give): the first step at a shape pays
    # for any recompilation, the second shows the step once compiled
    new_shapes = []
    for seconds in args.other_seconds:
        utts = max(1, round(audio_s / seconds))
        other = random_batch(utts, seconds, max(1, int(args.tokens_per_second * seconds)), args.vocab,
                             cfg.model.frontend.sample_rate)
        times = []
        for _ in range(2):
            sync(device)
            t1 = time.perf_counter()
            tr.train_step([other])
            sync(device)
            times.append(round(time.perf_counter() - t1, 3))
        new_shapes.append({"utterances": utts, "seconds_each": seconds, "first_step_s": times[0],
                           "second_step_s": times[1]})
        print(json.dumps({"other_shape": new_shapes[-1], "mode": mode}), file=sys.stderr, flush=True)
    return {
        "steps_per_s": round(1 / step_s, 4),
        "seconds_per_step": round(step_s, 4),
        "audio_seconds_per_s": round(audio_s / step_s, 1),
        "peak_gpu_memory_GiB": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if device.type == "cuda" else None,
        "fraction_of_bf16_peak": round(flops / step_s / (peak * 1e12), 4) if (flops and peak) else None,
        "mamba2_scan_share": round(n_mamba * scan_s / step_s, 4),
        "mamba2_layers": n_mamba,
        "warmup_seconds": round(warmup_s, 2),
        "loss_first": round((first or timed)[0]["loss"], 4),
        "loss_last": round(timed[-1]["loss"], 4),
        "skipped_steps": int(sum(v["skipped"] for v in first + timed)),
        **({"other_shapes": new_shapes} if new_shapes else {}),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "seed_large.toml"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--modes", nargs="+", default=["fp32", "bf16", "bf16+compile"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    p.add_argument("--utts", type=int, default=0, help="utterances per batch (0: budget / seconds, capped)")
    p.add_argument("--seconds", type=float, default=15.0, help="seconds per utterance")
    p.add_argument("--tokens-per-second", type=float, default=3.0)
    p.add_argument("--other-seconds", type=float, nargs="*", default=[],
                   help="after the timed steps, two steps at each of these utterance lengths (same audio per "
                        "batch): what a new shape costs, recompilation included")
    p.add_argument("--vocab", type=int, default=1024, help="token pieces (seed_large's tokenizer is a real corpus's)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak (default: by name)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the +compile modes "
                   "(aot_eager: capture only, no code generation; the dry run uses it on a CPU)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compile_backend != "inductor":
        import functools

        torch.compile = functools.partial(torch.compile, backend=args.compile_backend)
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", device.index or 0)  # set_device needs an index: "cuda" alone is refused
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here; TF32 would be a 4th mode
    out = tempfile.mkdtemp(prefix="asrlib-gpu-step-")
    base_over = [f"trainer.output_dir={out}", "trainer.progress_bar=false", "logger.log_to_tensorboard=false",
                 "validation_dataset.validation_manifest=[]", f"trainer.device={args.device}", *args.overrides]
    cfg = load_config(args.config, base_over)
    td, sr = cfg.train_dataset, cfg.model.frontend.sample_rate
    utts = args.utts or max(1, min(td.max_batch_size, int(td.batch_seconds // args.seconds)))
    batch = random_batch(utts, args.seconds, max(1, int(args.tokens_per_second * args.seconds)), args.vocab, sr)

    # speed and gain perturbation: CPU work the DataLoader workers do per batch, off the step
    # (timed apart, one core; the step below is timed on a ready batch)
    perturb_s = None
    if td.speed_perturb or td.gain_db:
        pert = WavePerturbation(sr, tuple(td.speed_perturb), tuple(td.gain_db), cfg.trainer.seed)
        t0 = time.perf_counter()
        for b in range(len(batch)):
            pert(batch.audio[b, : batch.audio_lengths[b]].numpy(), 0, b)
        perturb_s = round(time.perf_counter() - t0, 3)

    # model FLOPs of one step, counted on the eager fp32 step
    cfg = load_config(args.config, base_over + ["trainer.precision=fp32", "trainer.compile=false"])
    cfg.model.vocab_size = args.vocab
    tr = bare_trainer(cfg, device)
    flops = count_flops(tr, batch)
    params = count_parameters(tr.model)
    del tr
    peak = peak_tflops(device, args.peak_tflops)

    modes = {}
    for mode in args.modes:
        try:
            modes[mode] = run_mode(mode, args, base_over, device, batch, flops, peak)
        except Exception as e:  # one failing mode (out of memory, a compile error) must not hide the others
            modes[mode] = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"}
        print(json.dumps({"mode": mode, **modes[mode]}), file=sys.stderr, flush=True)  # survives a timeout
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(json.dumps({
        "benchmark": "gpu_step",
        "config": args.config,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu"),
        "torch": torch.__version__,
        "params_M": round(params / 1e6, 2),
        "batch": {"utterances": utts, "seconds_each": args.seconds, "tokens_each": int(batch.token_lengths[0]),
                  "vocab": args.vocab, "audio_seconds": round(utts * args.seconds, 1)},
        "model_tflops_per_step": float(f"{flops / 1e12:.4g}"),
        "stated_bf16_peak_tflops": peak,
        "compile_backend": args.compile_backend,
        "worker_perturb_seconds_per_batch": perturb_s,
        "modes": modes,
    }, indent=1))
    return 0 if all("error" not in m for m in modes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
