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


# ---------------------------------------------------------------- frequency warp (VTLP)
def _centres_np(n_mels, sr):
    """Mel filter centres in Hz, from the HTK formula written out here (not the library's)."""
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    edges = np.linspace(0.0, mel(sr / 2), n_mels + 2)
    return 700.0 * (10.0 ** (edges[1:-1] / 2595.0) - 1.0), mel


def _warp_loop(feats, lengths, alphas, sr):
    """Reference: Jaitly & Hinton's forward map f -> f' (alpha f up to the cut, then linear to the
    top), inverted numerically on a dense grid, and both interpolations done by np.interp."""
    B, T, M = feats.shape
    centres, mel = _centres_np(M, sr)
    top, f_hi = sr / 2, 0.8 * sr / 2
    grid = np.linspace(0.0, top, 200001)
    out = feats.numpy().astype(np.float64).copy()
    for b in range(B):
        a = float(alphas[b])
        knee = f_hi * min(a, 1.0) / a  # input frequency where the stretch ends
        fwd = np.where(grid <= knee, a * grid,
                       top - (top - f_hi * min(a, 1.0)) / (top - knee) * (top - grid))
        source = np.interp(centres, fwd, grid)  # the input frequency that lands on each centre
        pos = np.interp(mel(source), mel(centres), np.arange(M))
        for t in range(int(lengths[b])):
            out[b, t] = np.interp(pos, np.arange(M), out[b, t])
    return torch.from_numpy(out).float()


def test_freq_warp_equals_the_paper_map_inverted_numerically():
    from asrlib.config import FrontendConfig
    from asrlib.data.augment import apply_freq_warp

    fe = FrontendConfig(n_mels=40)
    feats = torch.randn(5, 9, 40, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([9, 4, 9, 0, 9])
    alphas = torch.tensor([0.9, 1.1, 1.0, 1.05, 0.93], dtype=torch.float64)
    got = apply_freq_warp(feats, lengths, alphas, fe)
    torch.testing.assert_close(got, _warp_loop(feats, lengths, alphas, 16000), rtol=0, atol=2e-4)
    assert torch.equal(got[1, 4:], feats[1, 4:]) and torch.equal(got[3], feats[3])  # padding untouched
    torch.testing.assert_close(got[2], feats[2], rtol=0, atol=1e-5)  # alpha = 1: the identity


@pytest.mark.parametrize("alpha", [0.9, 1.1])
def test_freq_warp_moves_a_tone_to_alpha_times_its_frequency(alpha):
    """Through the real frontend: a 1000 Hz tone warped by alpha peaks in the bin of a tone
    recorded at alpha * 1000 Hz."""
    from asrlib.config import FrontendConfig
    from asrlib.data.augment import apply_freq_warp
    from asrlib.model.frontend import Frontend

    fe = FrontendConfig()
    frontend = Frontend(fe)
    t = torch.arange(16000) / 16000.0
    tone = lambda f: torch.sin(2 * torch.pi * f * t)[None]  # noqa: E731
    with torch.no_grad():
        f1000, f_alpha = (frontend(tone(f), torch.tensor([16000]))[0] for f in (1000.0, 1000.0 * alpha))
    warped = apply_freq_warp(f1000, torch.tensor([f1000.shape[1]]), torch.tensor([alpha]), fe)
    peak = lambda x: int(x[0].mean(0).argmax())  # noqa: E731
    assert peak(f1000) != peak(f_alpha)  # the two tones are bins apart
    assert peak(warped) == peak(f_alpha)


def test_freq_warp_runs_before_the_same_masks_and_is_off_by_default():
    from asrlib.config import FrontendConfig
    from asrlib.data.augment import apply_freq_warp, apply_spec_augment, spec_augment_noise

    fe = FrontendConfig(n_mels=24)
    gen = torch.Generator().manual_seed(5)
    feats, lengths = torch.randn(4, 30, 24, generator=gen), torch.tensor([30, 17, 2, 0])
    off = SpecAugmentConfig(freq_masks=2, freq_width=5, time_masks=3, time_width=0.2)
    on = SpecAugmentConfig(freq_masks=2, freq_width=5, time_masks=3, time_width=0.2, freq_warp=0.1)
    assert spec_augment_noise(4, off, gen).shape == (4, 5, 2)  # off: the same draws as before the warp existed
    noise = spec_augment_noise(4, on, gen)
    assert noise.shape == (4, 6, 2)
    alphas = 1.0 + 0.1 * (2.0 * noise[:, 5, 0].double() - 1.0)
    assert ((alphas >= 0.9) & (alphas <= 1.1)).all()
    got = apply_spec_augment(feats, lengths, on, noise, fe)
    ref = _spec_augment_loop(apply_freq_warp(feats, lengths, alphas, fe), lengths, off, noise[:, :5])
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="frontend"):
        apply_spec_augment(feats, lengths, on, noise)


@pytest.mark.parametrize("value", ["-0.1", "0.5"])
def test_freq_warp_range_is_checked(value):
    with pytest.raises(ConfigError, match="spec_augment.freq_warp"):
        load_config(None, [f"spec_augment.freq_warp={value}"])
