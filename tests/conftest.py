"""Shared fixtures: a seeded RNG and a tiny generated corpus (sine/noise WAVs + a manifest)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

TINY_TEXTS = ["one two", "three", "four five six", "seven", "eight nine", "zero one"]

# The tests run tiny tensors: one thread is fastest, and two threads collapse (10x and more)
# when anything else shares this 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_thread():
    """Every test starts on one thread and leaves it so (the trainer's setup may change it)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def seeded() -> np.random.Generator:
    """Seed python, numpy and torch (0) and hand back a numpy Generator."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    return np.random.default_rng(0)


def write_tiny_corpus(folder: Path, sample_rate: int = 16000, n: int = 6) -> Path:
    """``n`` mono PCM_16 WAVs under folder/wav/ (sines at 200·(i+1) Hz, odd ones with noise),
    0.3 + 0.1·i s long, and folder/manifest.jsonl with relative paths. Returns the manifest."""
    rng = np.random.default_rng(0)
    (folder / "wav").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        S = int(round((0.3 + 0.1 * i) * sample_rate))
        t = np.arange(S) / sample_rate  # (S,)
        x = 0.3 * np.sin(2 * np.pi * 200 * (i + 1) * t)
        if i % 2:
            x = x + 0.05 * rng.standard_normal(S)
        sf.write(folder / "wav" / f"utt{i}.wav", x.astype(np.float32), sample_rate, subtype="PCM_16")
        rows.append({"audio_filepath": f"wav/utt{i}.wav", "text": TINY_TEXTS[i % len(TINY_TEXTS)], "duration": S / sample_rate})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return manifest


@pytest.fixture
def tiny_manifest(tmp_path: Path) -> Path:
    """A 6-line manifest of 16 kHz WAVs (0.3-0.8 s) in tmp_path; see ``write_tiny_corpus``."""
    return write_tiny_corpus(tmp_path)
