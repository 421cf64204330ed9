"""Training-time augmentation: SpecAugment (and a frequency warp) on log-mel features; speed and
gain on audio.

SpecAugment is applied after the frontend, in training only: ``freq_masks`` bands of at most
``freq_width`` mel bins and ``time_masks`` spans of at most ``time_width`` * length frames are
replaced by the mean of the item's valid features (0 would be a loud value in log-mel units).
Augmentation never runs at inference, so using the whole utterance's mean leaks nothing into
streaming. The random numbers are drawn first (``spec_augment_noise``: uniforms from a CPU
generator, one pair per mask) and applied by tensor operations only (``apply_spec_augment``),
so the masking runs on the GPU and traces into one torch.compile graph.

The frequency warp (``freq_warp`` > 0; VTLP, Jaitly & Hinton 2013) runs before the masks. Each
utterance draws alpha uniform in [1 - freq_warp, 1 + freq_warp], and its spectrum is stretched
by alpha: what sat at f Hz now sits at alpha * f, up to a cut at 80 % of the mel bank's top
frequency; above the cut the band is stretched linearly so that the top stays where it is
(their piecewise-linear warp). A speaker's formants move with the length of the vocal tract;
the warp makes new speakers from the training ones and keeps the tempo, which speed
perturbation cannot. It is computed on the (normalised) log-mel features: output bin m
(centre c_m Hz) reads the features at the source frequency of c_m, interpolated linearly
between the two mel bins around it (edges repeat the first or last bin), the same for every
frame of the utterance.

Gain perturbation scales each utterance by a random gain, uniform in dB. Recording level is
a property of the microphone and the speaker, not of the words: in the bundled corpus the
held-out speaker is 12-17 dB quieter than every training speaker, and a model that never saw
quiet speech confuses and drops digits (log-mel features shift by a constant with the gain).

Additive noise (``asrlib/data/noise.py``) runs between the two: speed on the speech, then the
noise at its SNR, then the gain on the mixture, as a microphone's level scales both.

Speed, noise and gain run in the Dataset (``WavePerturbation``), so DataLoader workers do them
while the model trains. Each draw comes from a generator seeded by (seed, epoch, utterance index)
alone, so an utterance gets the same perturbation whichever worker loads it, in whatever
order, and a resumed run repeats an uninterrupted one exactly.

Shapes: B batch, T frames, M mel bins, S samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import soxr
import torch
from torch import Tensor

from asrlib.config import FrontendConfig, SpecAugmentConfig
from asrlib.data.noise import NoiseMixer
from asrlib.model.frontend import hz_to_mel, mel_edges, mel_to_hz

WARP_CUT = 0.8  # the frequency warp is a pure stretch up to this fraction of the mel bank's top


def spec_augment_noise(batch: int, cfg: SpecAugmentConfig, generator: torch.Generator) -> Tensor:
    """The uniforms one SpecAugment call needs: (B, freq_masks + time_masks (+ 1 with freq_warp), 2)
    in [0, 1); [..., 0] picks a mask's width and [..., 1] its start; the last row's [..., 0] picks
    the warp factor when ``freq_warp`` > 0. Drawn on the CPU from ``generator``."""
    rows = cfg.freq_masks + cfg.time_masks + (1 if cfg.freq_warp > 0 else 0)
    return torch.rand(batch, rows, 2, generator=generator)


def warp_source_hz(centres: Tensor, alpha: Tensor, top: float) -> Tensor:
    """(B, M) source frequency each output bin reads, for stretch factors ``alpha`` (B,): the
    inverse of f -> alpha f below the cut and of the linear band above it (see module doc)."""
    a = alpha.to(torch.float64)[:, None]  # (B, 1)
    cut = WARP_CUT * top * torch.clamp(a, max=1.0)  # where the pure stretch ends, in output Hz (input Hz: cut / alpha)
    below = centres[None] / a
    above = top - (top - cut / a) / (top - cut) * (top - centres[None])
    return torch.where(centres[None] <= cut, below, above)


def apply_freq_warp(feats: Tensor, lengths: Tensor, alpha: Tensor, frontend: FrontendConfig) -> Tensor:
    """``feats`` (B, T, M) with each item's mel axis stretched by ``alpha`` (B,) (see module doc);
    padded frames are left as they are."""
    B, T, M = feats.shape
    edges, top = mel_edges(frontend.n_mels, frontend.sample_rate, frontend.f_min, frontend.f_max)
    mels = edges[1:-1].to(feats.device)  # the filters' centres at their mel-bank initialisation
    src_mel = hz_to_mel(warp_source_hz(mel_to_hz(mels), alpha.to(feats.device), top))  # (B, M)
    pos = ((src_mel - mels[0]) / (mels[1] - mels[0])).clamp(0, M - 1)  # fractional bin index (B, M)
    lo = torch.floor(pos).clamp(max=M - 2).long()  # (B, M)
    frac = (pos - lo).to(feats.dtype)[:, None, :]  # (B, 1, M)
    idx = lo[:, None, :].expand(B, T, M)
    out = feats.gather(2, idx) * (1 - frac) + feats.gather(2, idx + 1) * frac
    valid = torch.arange(T, device=feats.device)[None] < lengths.to(feats.device)[:, None]  # (B, T)
    return torch.where(valid[:, :, None], out, feats)


def apply_spec_augment(feats: Tensor, lengths: Tensor, cfg: SpecAugmentConfig, noise: Tensor,
                       frontend: FrontendConfig | None = None) -> Tensor:
    """Masked (and, with ``freq_warp`` > 0, first warped) copy of ``feats`` (B, T, M) from
    ``noise`` (see ``spec_augment_noise``).

    Per item with n valid frames: a frequency mask has width w = floor(u0 (freq_width + 1)) and
    start floor(u1 (M - w + 1)); a time mask width floor(u0 (floor(time_width n) + 1)) and start
    floor(u1 (n - w + 1)). Masked cells of valid frames get the mean of the item's valid
    features; padded frames are left as they are. The warp factor is
    alpha = 1 + freq_warp (2 u - 1); it needs ``frontend``, whose mel bank the features come from.
    """
    B, T, M = feats.shape
    if cfg.freq_warp > 0:
        if frontend is None:
            raise ValueError("spec_augment.freq_warp > 0 needs the frontend config (its mel bank) to warp the mel axis")
        u = noise[:, cfg.freq_masks + cfg.time_masks, 0].to(torch.float64)
        feats = apply_freq_warp(feats, lengths, 1.0 + cfg.freq_warp * (2.0 * u - 1.0), frontend)
    noise = noise.to(device=feats.device, dtype=torch.float64)  # float64: floor() of exact products
    n = lengths.to(feats.device, torch.float64)[:, None]  # (B, 1)
    valid = torch.arange(T, device=feats.device)[None] < lengths.to(feats.device)[:, None]  # (B, T)
    count = (lengths.to(feats.device).clamp(min=1) * M).to(feats.dtype)  # (B,) valid cells
    fill = (feats * valid[:, :, None]).sum(dim=(1, 2)) / count  # (B,) mean of the valid features
    nf = cfg.freq_masks
    w = torch.floor(noise[:, :nf, 0] * (cfg.freq_width + 1))  # (B, Fm)
    f0 = torch.floor(noise[:, :nf, 1] * (M - w + 1).clamp(min=1))  # (B, Fm)
    bins = torch.arange(M, device=feats.device, dtype=torch.float64)  # (M,)
    fmask = ((bins >= f0[..., None]) & (bins < (f0 + w)[..., None])).any(dim=1)  # (B, Fm, M) -> (B, M)
    max_t = torch.floor(cfg.time_width * n)  # (B, 1)
    nt = nf + cfg.time_masks
    w = torch.floor(noise[:, nf:nt, 0] * (max_t + 1))  # (B, Tm)
    t0 = torch.floor(noise[:, nf:nt, 1] * (n - w + 1).clamp(min=1))  # (B, Tm)
    frames = torch.arange(T, device=feats.device, dtype=torch.float64)  # (T,)
    tmask = ((frames >= t0[..., None]) & (frames < (t0 + w)[..., None])).any(dim=1)  # (B, Tm, T) -> (B, T)
    mask = (fmask[:, None, :] | tmask[:, :, None]) & valid[:, :, None]  # (B, T, M)
    return torch.where(mask, fill[:, None, None].to(feats.dtype), feats)


def spec_augment(feats: Tensor, lengths: Tensor, cfg: SpecAugmentConfig, generator: torch.Generator,
                 frontend: FrontendConfig | None = None) -> Tensor:
    """Return a masked copy of ``feats`` (B, T, M); padded frames are left as they are."""
    return apply_spec_augment(feats, lengths, cfg, spec_augment_noise(feats.shape[0], cfg, generator), frontend)


def speed_perturb(audio: np.ndarray, factor: float, sample_rate: int) -> np.ndarray:
    """Play ``audio`` ``factor`` times faster (tempo and pitch), by resampling with soxr."""
    if factor == 1.0:
        return audio
    return soxr.resample(audio, sample_rate * factor, sample_rate).astype(np.float32)


def gain_perturb(audio: np.ndarray, gain_db: float) -> np.ndarray:
    """Scale ``audio`` by ``gain_db`` decibels (amplitude x 10^(gain_db / 20)); no clipping."""
    return (audio * np.float32(10.0 ** (gain_db / 20.0))).astype(np.float32)


@dataclass(frozen=True)
class WavePerturbation:
    """Speed, then noise, then gain, for one utterance: a factor from ``speed_factors`` (chosen
    uniformly), ``noise`` (a ``NoiseMixer`` or None) and a gain uniform in [``gain_db[0]``,
    ``gain_db[1]``] dB. Empty lists and None turn a part off."""

    sample_rate: int
    speed_factors: tuple[float, ...] = ()
    gain_db: tuple[float, ...] = field(default=())  # () or (low, high)
    seed: int = 0
    noise: NoiseMixer | None = None

    @property
    def active(self) -> bool:
        return bool(self.speed_factors) or bool(self.gain_db) or self.noise is not None

    def draw(self, epoch: int, index: int) -> tuple[float, float]:
        """(speed factor, gain in dB) of utterance ``index`` in ``epoch``: a pure function."""
        rng = np.random.default_rng([self.seed, epoch, index])
        factor = float(self.speed_factors[rng.integers(len(self.speed_factors))]) if self.speed_factors else 1.0
        gain = float(rng.uniform(self.gain_db[0], self.gain_db[1])) if self.gain_db else 0.0
        return factor, gain

    def __call__(self, wave: np.ndarray, epoch: int, index: int) -> np.ndarray:
        factor, gain = self.draw(epoch, index)
        wave = speed_perturb(wave, factor, self.sample_rate)
        if self.noise is not None:
            wave = self.noise(wave, epoch, index)
        return gain_perturb(wave, gain) if gain != 0.0 else wave
