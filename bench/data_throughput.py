"""Decode + resample throughput of the bundled digits corpus (8 kHz FLAC -> 16 kHz float32).

    .venv/bin/python bench/data_throughput.py [--manifest data_samples/digits/train.jsonl] [--workers 2]

Prints JSON: utterances/s and audio-seconds/s, (a) in this process (one thread: libsndfile
and soxr each run single-threaded here) and (b) through a DataLoader with N worker processes
(AudioDataset + BucketBatchSampler + collate, i.e. the training input path).

``--gpu-need CONFIG`` adds what a GPU step consumes at that preset's scale, and whether the
loader keeps up with a 20x margin:
- ``model_gflops_per_audio_second``: forward + backward FLOPs of the model per second of
  training audio, counted by torch.utils.flop_counter on the CPU (``--vocab`` pieces,
  ``--tokens-per-second`` targets, one 8 s utterance);
- ``gpu_need_audio_s_per_s`` = stated GPU throughput (``--gpu-tflops`` dense bf16 peak x
  ``--mfu``, the fraction a good step reaches) / those FLOPs;
- ``loader_audio_s_per_s``: the config's ``num_workers`` x this machine's one-core rate of the
  training Dataset (decode, resample, and the preset's speed/gain perturbation and noise, which
  run in the DataLoader workers), a projection with one free core per worker; ``loader_margin`` =
  that / the GPU's need.

``--perturb`` measures the loader with speed [0.9, 1.0, 1.1] and gain [-20, 6] dB, as the
digits recipe trains (the perturbation runs in the workers, drawn by (seed, epoch, index)).
``--noise MANIFEST`` adds noise from MANIFEST to a share ``--noise-prob`` of the utterances at
10-20 dB SNR (``asrlib/data/noise.py``: a segment of a noise file read per noisy utterance), so
the cost of reading the noise shows beside the plain loader's rate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from asrlib.audio import load_audio  # noqa: E402
from asrlib.data.augment import WavePerturbation  # noqa: E402
from asrlib.data.dataset import AudioDataset, BucketBatchSampler  # noqa: E402
from asrlib.data.manifest import read_manifest  # noqa: E402
from asrlib.data.noise import noise_from_manifest  # noqa: E402
from asrlib.tokenizer import Tokenizer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--manifest", default=str(REPO / "data_samples" / "digits" / "train.jsonl"))
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--gpu-need", default=None, metavar="CONFIG", help="e.g. configs/seed_large.toml")
    parser.add_argument("--gpu-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    parser.add_argument("--mfu", type=float, default=0.3, help="fraction of the peak a step reaches")
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--tokens-per-second", type=float, default=3.0)
    parser.add_argument("--perturb", action="store_true", help="speed 0.9/1.0/1.1 and gain -20..6 dB in the loader")
    parser.add_argument("--noise", default=None, metavar="MANIFEST", help="noise recordings mixed in by the loader")
    parser.add_argument("--noise-prob", type=float, default=0.5, help="share of utterances that get noise")
    args = parser.parse_args()
    entries, _ = read_manifest(args.manifest, strict=True)
    seconds = sum(e.duration for e in entries)
    torch.set_num_threads(1)

    load_audio(entries[0].audio_filepath, args.sample_rate)  # warm-up
    start = time.perf_counter()
    for e in entries:
        load_audio(e.audio_filepath, args.sample_rate)
    in_process = time.perf_counter() - start

    noise = noise_from_manifest([args.noise], args.sample_rate, (10.0, 20.0), args.noise_prob, 0)[0] \
        if args.noise else None
    speeds, gains = ((0.9, 1.0, 1.1), (-20.0, 6.0)) if args.perturb else ((), ())
    pert = WavePerturbation(args.sample_rate, speeds, gains, noise=noise)
    # the tokenizer beside the manifest (a corpus's own: another's would reject its texts after decoding)
    tokenizer = Path(args.manifest).parent / "tokenizer"
    tokenizer = tokenizer if tokenizer.is_dir() else REPO / "data_samples" / "digits" / "tokenizer"
    ds = AudioDataset(entries, args.sample_rate, Tokenizer(tokenizer), perturbation=pert)
    sampler = BucketBatchSampler([e.duration for e in entries], batch_seconds=60.0, max_batch_size=32, seed=0,
                                 with_epoch=True)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=ds.collate, num_workers=args.workers)
    start = time.perf_counter()
    n = sum(len(batch) for batch in loader)
    loader_time = time.perf_counter() - start

    extra = gpu_need(args, entries) if args.gpu_need else {}
    print(json.dumps({
        "manifest": os.path.relpath(args.manifest, REPO),
        "utterances": len(entries),
        "audio_seconds": round(seconds, 1),
        "target_sample_rate": args.sample_rate,
        "in_process_threads": 1,
        "in_process_utt_per_s": round(len(entries) / in_process, 1),
        "in_process_audio_s_per_s": round(seconds / in_process, 1),
        "dataloader_workers": args.workers,
        "dataloader_perturbation": args.perturb,
        "dataloader_noise": {"manifest": os.path.relpath(args.noise, REPO), "prob": args.noise_prob} if args.noise else None,
        "dataloader_tokenizer": os.path.relpath(tokenizer, REPO),
        "dataloader_utterances_kept": n,
        "dataloader_utt_per_s": round(n / loader_time, 1),
        "dataloader_audio_s_per_s": round(seconds / loader_time, 1),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        **extra,
    }, indent=1))
    return 0


def one_core_rate(entries, sample_rate: int, perturbation) -> float:
    """Audio-seconds per second of the training Dataset's ``__getitem__`` on one thread."""
    ds = AudioDataset(entries, sample_rate, perturbation=perturbation)
    start = time.perf_counter()
    for i in range(len(ds)):
        ds[(0, i)]
    return sum(e.duration for e in entries) / (time.perf_counter() - start)


def gpu_need(args, entries) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from asrlib.config import load_config
    from asrlib.losses.hybrid import HybridLoss
    from asrlib.model.hybrid import build_model

    cfg = load_config(args.gpu_need)
    cfg.model.vocab_size = args.vocab
    sr, secs = cfg.model.frontend.sample_rate, 8.0
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    loss = HybridLoss(model, cfg)
    audio = 0.1 * torch.randn(1, int(secs * sr))  # (1, S)
    u = int(args.tokens_per_second * secs)
    with FlopCounterMode(display=False) as fc:
        out = loss(audio, torch.tensor([audio.shape[1]]), torch.randint(0, args.vocab, (1, u)), torch.tensor([u]))
        out["loss"].backward()
    flops_per_s = fc.get_total_flops() / secs
    need = args.gpu_tflops * 1e12 * args.mfu / flops_per_s
    td = cfg.train_dataset
    noise = noise_from_manifest(td.noise_manifest, sr, td.noise_snr_db, td.noise_prob, 0)[0] if td.noise_manifest else None
    pert = WavePerturbation(sr, tuple(td.speed_perturb), tuple(td.gain_db), noise=noise)
    one_core = one_core_rate(entries, sr, pert)
    workers = td.num_workers
    loader = workers * one_core
    return {
        "gpu_need_config": args.gpu_need,
        "model_gflops_per_audio_second": round(flops_per_s / 1e9, 2),
        "stated_gpu": {"bf16_peak_tflops": args.gpu_tflops, "mfu": args.mfu},
        "gpu_need_audio_s_per_s": round(need, 1),
        "config_num_workers": workers,
        "config_perturbation": {"speed_perturb": list(td.speed_perturb), "gain_db": list(td.gain_db),
                                "noise_manifest": list(td.noise_manifest), "noise_prob": td.noise_prob},
        "one_core_dataset_audio_s_per_s": round(one_core, 1),
        "loader_audio_s_per_s": round(loader, 1),
        "loader_margin": round(loader / need, 2),
        "loader_margin_ok_20x": loader >= 20 * need,
    }


if __name__ == "__main__":
    sys.exit(main())
