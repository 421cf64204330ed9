"""Training-time augmentation: SpecAugment on log-mel features; speed and gain on audio.

SpecAugment is applied after the frontend, in training only: ``freq_masks`` bands of at most
``freq_width`` mel bins and ``time_masks`` spans of at most ``time_width`` * length frames are
replaced by the mean of the item's valid features (0 would be a loud value in log-mel units).
Augmentation never runs at inference, so using the whole utterance's mean leaks nothing into
streaming.

Gain perturbation scales each utterance by a random gain, uniform in dB. Recording level is
a property of the microphone and the speaker, not of the words: in the bundled corpus the
held-out speaker is 12-17 dB quieter than every training speaker, and a model that never saw
quiet speech confuses and drops digits (log-mel features shift by a constant with the gain).

Shapes: B batch, T frames, M mel bins, S samples.
"""

from __future__ import annotations

import numpy as np
import soxr
import torch
from torch import Tensor

from asrlib.config import SpecAugmentConfig


def spec_augment(feats: Tensor, lengths: Tensor, cfg: SpecAugmentConfig, generator: torch.Generator) -> Tensor:
    """Return a masked copy of ``feats`` (B, T, M); padded frames are left as they are."""
    B, T, M = feats.shape
    out = feats.clone()
    for b in range(B):
        n = int(lengths[b])
        if n == 0:
            continue
        fill = out[b, :n].mean()
        for _ in range(cfg.freq_masks):
            w = int(torch.randint(0, cfg.freq_width + 1, (1,), generator=generator))
            f0 = int(torch.randint(0, max(M - w, 0) + 1, (1,), generator=generator))
            out[b, :n, f0 : f0 + w] = fill
        max_t = int(cfg.time_width * n)
        for _ in range(cfg.time_masks):
            w = int(torch.randint(0, max_t + 1, (1,), generator=generator))
            t0 = int(torch.randint(0, max(n - w, 0) + 1, (1,), generator=generator))
            out[b, t0 : t0 + w, :] = fill
    return out


def speed_perturb(audio: np.ndarray, factor: float, sample_rate: int) -> np.ndarray:
    """Play ``audio`` ``factor`` times faster (tempo and pitch), by resampling with soxr."""
    if factor == 1.0:
        return audio
    return soxr.resample(audio, sample_rate * factor, sample_rate).astype(np.float32)


def gain_perturb(audio: np.ndarray, gain_db: float) -> np.ndarray:
    """Scale ``audio`` by ``gain_db`` decibels (amplitude x 10^(gain_db / 20)); no clipping."""
    return (audio * np.float32(10.0 ** (gain_db / 20.0))).astype(np.float32)
