"""Decode + resample throughput of the bundled digits corpus (8 kHz FLAC -> 16 kHz float32).

    .venv/bin/python bench/data_throughput.py [--manifest data_samples/digits/train.jsonl] [--workers 2]

Prints JSON: utterances/s and audio-seconds/s, (a) in this process (one thread: libsndfile
and soxr each run single-threaded here) and (b) through a DataLoader with N worker processes
(AudioDataset + BucketBatchSampler + collate, i.e. the training input path).
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
from asrlib.data.dataset import AudioDataset, BucketBatchSampler  # noqa: E402
from asrlib.data.manifest import read_manifest  # noqa: E402
from asrlib.tokenizer import Tokenizer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--manifest", default=str(REPO / "data_samples" / "digits" / "train.jsonl"))
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    entries, _ = read_manifest(args.manifest, strict=True)
    seconds = sum(e.duration for e in entries)
    torch.set_num_threads(1)

    load_audio(entries[0].audio_filepath, args.sample_rate)  # warm-up
    start = time.perf_counter()
    for e in entries:
        load_audio(e.audio_filepath, args.sample_rate)
    in_process = time.perf_counter() - start

    ds = AudioDataset(entries, args.sample_rate, Tokenizer(REPO / "data_samples" / "digits" / "tokenizer"))
    sampler = BucketBatchSampler([e.duration for e in entries], batch_seconds=60.0, max_batch_size=32, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=ds.collate, num_workers=args.workers)
    start = time.perf_counter()
    n = sum(len(batch) for batch in loader)
    loader_time = time.perf_counter() - start

    print(json.dumps({
        "manifest": os.path.relpath(args.manifest, REPO),
        "utterances": len(entries),
        "audio_seconds": round(seconds, 1),
        "target_sample_rate": args.sample_rate,
        "in_process_threads": 1,
        "in_process_utt_per_s": round(len(entries) / in_process, 1),
        "in_process_audio_s_per_s": round(seconds / in_process, 1),
        "dataloader_workers": args.workers,
        "dataloader_utt_per_s": round(n / loader_time, 1),
        "dataloader_audio_s_per_s": round(seconds / loader_time, 1),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
