"""Augmentation: each transform checked against what it means physically or by counting."""

import numpy as np
import pytest
import torch

from asrlib.config import ConfigError, SpecAugmentConfig, load_config
from asrlib.data.augment import gain_perturb, spec_augment, speed_perturb


@pytest.mark.parametrize("gain_db", [-25.0, -6.0, 0.0, 3.5])
def test_gain_changes_level_by_the_decibels_asked(gain_db):
    x = np.random.default_rng(0).normal(0, 0.05, 8000).astype(np.float32)
    y = gain_perturb(x, gain_db)
    level = lambda a: 10 * np.log10(np.mean(a.astype(np.float64) ** 2))  # noqa: E731
    assert y.dtype == np.float32 and y.shape == x.shape
    assert level(y) - level(x) == pytest.approx(gain_db, abs=1e-4)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_moves_a_tone_and_the_length_by_the_factor(factor):
    sr, f0 = 16000, 440.0
    x = np.sin(2 * np.pi * f0 * np.arange(sr) / sr).astype(np.float32)
    y = speed_perturb(x, factor, sr)
    assert len(y) == pytest.approx(sr / factor, abs=2)
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y)), n=1 << 16))
    peak_hz = np.argmax(spectrum) * sr / (1 << 16)
    assert peak_hz == pytest.approx(f0 * factor, abs=1.0)


def test_spec_augment_masks_within_bounds_and_leaves_padding():
    B, T, M = 3, 50, 20
    feats = torch.randn(B, T, M)
    lengths = torch.tensor([50, 30, 0])
    cfg = SpecAugmentConfig(freq_masks=1, freq_width=4, time_masks=1, time_width=0.1)
    out = spec_augment(feats, lengths, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(out[1, 30:], feats[1, 30:]) and torch.equal(out[2], feats[2])
    for b in range(2):
        n = int(lengths[b])
        changed = out[b, :n] != feats[b, :n]
        cols = changed.all(dim=0).nonzero().flatten()  # a frequency mask covers every valid frame
        assert len(cols) <= cfg.freq_width
        if len(cols):
            assert cols.max() - cols.min() + 1 == len(cols)  # one contiguous band
        rows = changed.all(dim=1).nonzero().flatten()
        assert len(rows) <= int(cfg.time_width * n)
        masked = out[b, :n][changed]
        assert torch.allclose(masked, feats[b, :n].mean().expand_as(masked))


@pytest.mark.parametrize("value", ["[1.0]", "[6.0, -20.0]"])
def test_gain_range_must_be_low_high(value):
    with pytest.raises(ConfigError, match="train_dataset.gain_db"):
        load_config(None, [f"train_dataset.gain_db={value}"])


def _spec_augment_loop(feats, lengths, cfg, noise):
    """Reference: the masks of ``apply_spec_augment`` written as a loop over items and masks."""
    B, T, M = feats.shape
    out = feats.clone()
    for b in range(B):
        n = int(lengths[b])
        if n == 0:
            continue
        fill = feats[b, :n].mean()
        for k in range(cfg.freq_masks):
            u0, u1 = (float(x) for x in noise[b, k])
            w = int(u0 * (cfg.freq_width + 1))
            f0 = int(u1 * max(M - w + 1, 1))
            out[b, :n, f0 : f0 + w] = fill
        max_t = int(cfg.time_width * n)
        for k in range(cfg.freq_masks, cfg.freq_masks + cfg.time_masks):
            u0, u1 = (float(x) for x in noise[b, k])
            w = int(u0 * (max_t + 1))
            t0 = int(u1 * max(n - w + 1, 1))
            out[b, t0 : min(t0 + w, n), :] = fill
    return out


def test_vectorised_spec_augment_equals_the_loop():
    from asrlib.data.augment import apply_spec_augment, spec_augment_noise

    gen = torch.Generator().manual_seed(0)
    cfg = SpecAugmentConfig(freq_masks=2, freq_width=6, time_masks=3, time_width=0.2)
    feats = torch.randn(5, 60, 24, generator=gen)
    lengths = torch.tensor([60, 41, 7, 1, 0])
    for _ in range(20):
        noise = spec_augment_noise(5, cfg, gen)
        got = apply_spec_augment(feats, lengths, cfg, noise)
        ref = _spec_augment_loop(feats, lengths, cfg, noise)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
