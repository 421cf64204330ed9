"""Frontend: raw audio -> log-mel features, as a small trainable, streamable module.

    audio --frames @ windowed DFT matrix (the STFT)--> (re, im)
          --> magnitude --> trainable mel (Linear, mel-bank init) --> log(x + eps)

* STFT with ``center=False``: frame t covers samples ``[t*hop, t*hop + win)``; no padding,
  so an utterance of S samples has ``(S - win) // hop + 1`` frames (0 when S < win).
* The DFT of each windowed frame is ``torch.fft.rfft``; the ONNX export computes the same
  numbers as a fixed matrix product (``unfold`` then ``@`` a windowed cos/sin kernel, a buffer,
  not a parameter), which exports everywhere and needs no complex numbers.
* The whole frontend computes in float64 and returns the mel weight's dtype (float32).
  In float32 a high bin of a quiet or band-limited signal (e.g. 8 kHz audio resampled to 16 kHz)
  is a sum of large terms that cancel to ~1e-6, i.e. pure round-off; after the log, two
  evaluations of the same frame (whole utterance vs streaming chunks) then differ by ~0.2.
  In float64 they agree to ~1e-6, and autocast (bf16/fp16) leaves float64 ops alone. The cost
  is small next to the encoder. (A conv1d STFT would be the usual choice, but onnxruntime has
  no float64 Conv; unfold + MatMul exports and runs.) Keep the module itself in float32 (use
  autocast, not ``.half()``): a half-precision cast would round the DFT buffer.
* The mel projection is an ``nn.Linear(F, n_mels, bias=False)`` initialised with an HTK
  triangular mel bank (:func:`mel_filterbank`). With ``trainable_mel = False`` it stays frozen.
  Its output is clamped at 0 before the log, so a trained weight that goes negative cannot
  produce NaN. A clamped output is log(eps) whatever the sound, and passes no gradient back;
  with ``mel_nonnegative = true`` the optimiser keeps the weights >= 0 (:meth:`Frontend.project_`
  after every step), so no output is clamped. With ``mel_rectifier = "abs"`` the log takes |x|
  instead of max(x, 0): no output is ever dead, and the weights stay free.
* No per-utterance normalisation: a mean over the utterance looks into the future. Instead,
  with ``normalize = true``, each mel bin is standardised with one fixed mean and standard
  deviation (buffers ``feat_mean``/``feat_std``, saved with the weights), which the trainer
  estimates from training audio before the first step (:func:`feature_stats`). Fixed numbers
  keep streaming exact; centring the inputs (log-mel values sit around -10) lets training
  leave its first plateau sooner.

Streaming: :class:`FrontendCache` keeps the last ``win - hop`` samples already received.
``step`` takes ``n * hop`` new samples and returns exactly the ``n`` frames that end inside
them. Primed with the first ``win - hop`` samples of the stream, the frames are exactly those
of :meth:`Frontend.forward` (see :meth:`Frontend.init_state`).

Shapes:
    audio (B, S) samples; lengths (B,)
    frames (B, T, win); spectrum (B, T, F) with F = n_fft // 2 + 1, n_fft = win
    feats (B, T, M) with M = n_mels
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F_
from torch import Tensor, nn

from asrlib.config import FrontendConfig

_MAG_TINY = 1e-12  # keeps sqrt (and its gradient) finite at an exactly-zero bin


def hz_to_mel(f: Tensor | float) -> Tensor:
    """HTK mel scale: 2595 * log10(1 + f / 700)."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0)


def mel_to_hz(m: Tensor | float) -> Tensor:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (torch.as_tensor(m, dtype=torch.float64) / 2595.0) - 1.0)


def mel_edges(n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float = 0.0) -> tuple[Tensor, float]:
    """The ``n_mels + 2`` filter edges (float64, in mel), equally spaced in mel between ``f_min``
    and ``f_max`` (``f_max = 0`` means Nyquist), and that top frequency in Hz."""
    f_max = f_max if f_max > 0 else sample_rate / 2
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"mel bank: need 0 <= f_min < f_max <= sample_rate/2, got f_min={f_min}, f_max={f_max}")
    return torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2, dtype=torch.float64), f_max


def mel_filterbank(n_freq: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float = 0.0) -> Tensor:
    """Triangular filters equally spaced on the HTK mel scale, peak 1, no area normalisation.

    Filter m rises linearly from edge m to edge m+1 and falls to edge m+2, where the
    ``n_mels + 2`` edges are equally spaced in mel between ``f_min`` and ``f_max``
    (``f_max = 0`` means Nyquist). Bin k of an ``n_fft = 2 * (n_freq - 1)`` FFT sits at
    ``k * sample_rate / n_fft`` Hz.

    Returns (M, F) float32, ready to be the weight of ``nn.Linear(F, M)``.
    """
    edges_mel, _ = mel_edges(n_mels, sample_rate, f_min, f_max)
    n_fft = 2 * (n_freq - 1)
    bins_hz = torch.arange(n_freq, dtype=torch.float64) * sample_rate / n_fft  # (F,)
    edges_hz = mel_to_hz(edges_mel)  # (M + 2,)
    left, center, right = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]  # (M, 1) each
    rising = (bins_hz[None, :] - left) / (center - left)  # (M, F)
    falling = (right - bins_hz[None, :]) / (right - center)  # (M, F)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


def periodic_hann(n: int) -> Tensor:
    """Periodic Hann window: 0.5 - 0.5 cos(2 pi i / n), i = 0..n-1 (float64)."""
    i = torch.arange(n, dtype=torch.float64)
    return 0.5 - 0.5 * torch.cos(2.0 * math.pi * i / n)


@dataclass
class FrontendCache:
    """Streaming state of the frontend: the last ``win - hop`` samples, (B, win - hop)."""

    samples: Tensor


class Frontend(nn.Module):
    """Raw audio (B, S) -> log-mel (B, T, n_mels); see the module docstring."""

    def __init__(self, cfg: FrontendConfig):
        super().__init__()
        self.cfg = cfg
        sr = cfg.sample_rate
        win = round(cfg.win_ms * sr / 1000)
        hop = round(cfg.hop_ms * sr / 1000)
        if not 0 < hop <= win:
            raise ValueError(f"frontend: need 0 < hop <= win, got win_ms={cfg.win_ms}, hop_ms={cfg.hop_ms}")
        self._win, self._hop = win, hop
        n_freq = win // 2 + 1
        # Windowed DFT kernels: row k of cos/sin = window * cos/sin(2 pi k n / win).
        n = torch.arange(win, dtype=torch.float64)
        k = torch.arange(n_freq, dtype=torch.float64)
        angle = 2.0 * math.pi * k[:, None] * n[None, :] / win  # (F, win)
        window = periodic_hann(win)
        kernel = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window], dim=0)  # (2F, win)
        self.register_buffer("dft_kernel", kernel.T.contiguous(), persistent=False)  # (win, 2F) float64
        self.register_buffer("window", window, persistent=False)  # (win,) float64, for the FFT path
        self.mel = nn.Linear(n_freq, cfg.n_mels, bias=False)
        with torch.no_grad():
            self.mel.weight.copy_(mel_filterbank(n_freq, cfg.n_mels, sr, cfg.f_min, cfg.f_max))
        self.mel.weight.requires_grad_(cfg.trainable_mel)
        if cfg.normalize:
            self.register_buffer("feat_mean", torch.zeros(cfg.n_mels))
            self.register_buffer("feat_std", torch.ones(cfg.n_mels))

    @torch.no_grad()
    def project_(self) -> None:
        """Clamp the mel weights at 0 (``mel_nonnegative``; ``build_optimizer`` calls it after each step)."""
        self.mel.weight.clamp_(min=0.0)

    # ------------------------------------------------------------------ sizes
    @property
    def win_length(self) -> int:
        return self._win

    @property
    def hop_length(self) -> int:
        return self._hop

    @property
    def n_freq(self) -> int:
        return self._win // 2 + 1

    @property
    def n_mels(self) -> int:
        return self.cfg.n_mels

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Frames of ``center=False`` STFT: 0 if S < win else (S - win) // hop + 1."""
        lengths = torch.as_tensor(lengths)
        frames = torch.div(lengths - self._win, self._hop, rounding_mode="floor") + 1
        return torch.where(lengths >= self._win, frames, torch.zeros_like(frames))

    # ------------------------------------------------------------------ compute
    def _magnitude64(self, audio: Tensor) -> Tensor:
        """(B, S) with S >= win -> |STFT| (B, T, F) in float64."""
        frames = audio.to(torch.float64).unfold(-1, self._win, self._hop)  # (B, T, win)
        if torch.jit.is_tracing():  # the ONNX export: a matrix product (onnxruntime has no float64 DFT)
            spec = frames @ self.dft_kernel.to(torch.float64)  # (B, T, 2F)
            re, im = spec[..., : self.n_freq], spec[..., self.n_freq :]  # (B, T, F) each
        else:  # the same DFT by FFT: 8x fewer operations than the matrix product at win = 400
            spec = torch.fft.rfft(frames * self.window.to(torch.float64), dim=-1)  # (B, T, F) complex
            re, im = spec.real, spec.imag
        return torch.sqrt(re * re + im * im + _MAG_TINY)

    def magnitude(self, audio: Tensor) -> Tensor:
        """|STFT| of (B, S) audio with S >= win -> (B, F, T), float32 (for plots and tests)."""
        return self._magnitude64(audio).transpose(1, 2).float()  # (B, T, F) -> (B, F, T)

    def _features(self, audio: Tensor, normalize: bool = True) -> Tensor:
        """(B, S) -> (B, T, M) log-mel, T = output_lengths(S); ``normalize=False`` skips the stats."""
        out_dtype = self.mel.weight.dtype
        if audio.shape[-1] < self._win:  # shorter than one window: no frames, not an error
            return audio.new_zeros(audio.shape[0], 0, self.cfg.n_mels, dtype=out_dtype)
        mag = self._magnitude64(audio)  # (B, T, F)
        mel = F_.linear(mag, self.mel.weight.to(torch.float64))  # (B, T, M)
        mel = mel.abs() if self.cfg.mel_rectifier == "abs" else mel.clamp(min=0.0)
        logmel = torch.log(mel + self.cfg.log_eps)
        if normalize and self.cfg.normalize:
            logmel = (logmel - self.feat_mean.to(torch.float64)) / self.feat_std.to(torch.float64)
        return logmel.to(out_dtype)

    @torch.no_grad()
    def set_normalization(self, mean: Tensor, std: Tensor) -> None:
        """Install per-bin statistics (M,) of the un-normalised log-mel features."""
        if not self.cfg.normalize:
            raise ValueError("set_normalization: this frontend was built with normalize = false")
        self.feat_mean.copy_(mean)
        self.feat_std.copy_(std.clamp(min=1e-3))

    def forward(self, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """audio (B, S) float, lengths (B,) samples -> feats (B, T, M), frame_lengths (B,).

        Frames past an item's ``frame_lengths`` are computed from padding: ignore them.
        """
        if audio.dim() != 2:
            raise ValueError(f"frontend expects audio of shape (batch, samples), got {tuple(audio.shape)}")
        return self._features(audio), self.output_lengths(lengths)

    # ------------------------------------------------------------------ streaming
    def init_state(self, batch: int | Tensor = 1, device: torch.device | str | None = None) -> FrontendCache:
        """Start a stream.

        * ``init_state(first_samples)`` with a (B, win - hop) tensor: the stream is primed with
          its own first ``win - hop`` samples; the frames of the following ``step`` calls are
          then exactly those of ``forward`` on the whole signal (``center=False``).
        * ``init_state(batch, device)``: zeros, i.e. the stream behaves as if preceded by
          ``win - hop`` samples of silence; it yields ``(win - hop) // hop`` extra frames
          at the start compared with ``forward`` when win - hop is a multiple of hop.
        """
        ctx = self._win - self._hop
        if isinstance(batch, Tensor):
            if batch.dim() != 2 or batch.shape[1] != ctx:
                raise ValueError(f"init_state: first_samples must be (batch, {ctx}) = win - hop samples, got {tuple(batch.shape)}")
            return FrontendCache(samples=batch)
        dev = device if device is not None else self.dft_kernel.device
        return FrontendCache(samples=torch.zeros(batch, ctx, device=dev, dtype=self.mel.weight.dtype))

    def step(self, chunk: Tensor, state: FrontendCache) -> tuple[Tensor, FrontendCache]:
        """chunk (B, n * hop) new samples -> feats (B, n, M) and the new cache.

        The frames are those of ``cat(cache, chunk)``: ``win - hop + n*hop`` samples hold
        exactly n windows. Buffer your samples outside until you have a multiple of hop.
        """
        if chunk.shape[-1] % self._hop != 0:
            raise ValueError(
                f"frontend step: chunk length {chunk.shape[-1]} is not a multiple of the hop ({self._hop} samples); "
                "buffer audio until you have whole hops"
            )
        x = torch.cat([state.samples, chunk.to(state.samples.dtype)], dim=1)  # (B, win - hop + n*hop)
        feats = self._features(x)  # (B, n, M)
        ctx = self._win - self._hop
        return feats, FrontendCache(samples=x[:, x.shape[1] - ctx :])


@torch.no_grad()
def feature_stats(frontend: Frontend, waves) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation (M,) per mel bin of the raw log-mel frames of ``waves``.

    ``waves`` yields 1-D float tensors; the statistics are over all their frames together
    (long utterances weigh more), accumulated in float64, with ``normalize`` bypassed.
    """
    total, total_sq, count = 0.0, 0.0, 0
    for w in waves:
        audio = w.reshape(1, -1).to(frontend.dft_kernel.device)
        feats = frontend._features(audio, normalize=False)[0].double()  # (T, M)
        total = total + feats.sum(0)
        total_sq = total_sq + (feats * feats).sum(0)
        count += feats.shape[0]
    if count == 0:
        raise ValueError("feature_stats: no frames (every waveform is shorter than one window)")
    mean = total / count
    std = (total_sq / count - mean * mean).clamp(min=0.0).sqrt()
    return mean.float(), std.float()
