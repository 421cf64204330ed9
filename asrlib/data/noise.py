"""Additive noise for training: ``NoiseMixer`` adds a stretch of a recording from a noise
manifest to an utterance at a random signal-to-noise ratio.

Each training utterance, with probability ``prob``, gets noise at an SNR drawn uniformly in
[``snr_db[0]``, ``snr_db[1]``] dB, where SNR = 10 log10(P_speech / P_noise) and P is the mean
square over the utterance's samples, its pauses included. The noise is one line of the noise manifest, chosen uniformly, read from a start uniform
in [0, its duration - the utterance's duration]; a recording shorter than the utterance is
repeated end to end until it covers it.

Any JSONL manifest with ``audio_filepath`` and ``duration`` serves; its texts are ignored:
MUSAN's noise and music, recordings of the room or the line the model will run on, or the
training manifest itself, which mixes in other speakers at a lower level (babble). A noise
file at another sample rate is resampled on the fly.

The draws (whether, which line, where, which SNR) are a pure function of (seed, epoch,
utterance index), from a stream of their own, so that adding noise leaves the speed and gain
draws of ``WavePerturbation`` as they were and a resumed run repeats an uninterrupted one.
The noise is read in the DataLoader workers, a segment at a time (nothing is cached: a noise
corpus can be hours long).

Shapes: S samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from asrlib.audio import AudioError, audio_info, load_audio
from asrlib.data.manifest import ManifestEntry, ManifestReport, read_manifest
from asrlib.errors import UsageError

NOISE_STREAM = 1  # the last key of the noise draws' generator: a stream apart from speed and gain's


class NoiseError(UsageError):
    """A noise recording could not be decoded; the message names manifest:line."""


@dataclass(frozen=True)
class NoiseDraw:
    """What one utterance gets: no noise (``entry`` None), or line ``entry`` of the noise
    manifest read from ``start`` seconds, at ``snr_db``."""

    entry: int | None
    start: float = 0.0
    snr_db: float = 0.0


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``speech`` + ``noise`` scaled so that 10 log10(mean(speech^2) / mean(scaled^2)) = ``snr_db``.
    Both (S,) float32. Silent speech or silent noise leaves ``speech`` as it is."""
    p_speech = float(np.mean(speech.astype(np.float64) ** 2))
    p_noise = float(np.mean(noise.astype(np.float64) ** 2))
    if p_speech == 0.0 or p_noise == 0.0:
        return speech
    scale = np.sqrt(p_speech / (p_noise * 10.0 ** (snr_db / 10.0)))
    return (speech + np.float32(scale) * noise).astype(np.float32)


def cover(noise: np.ndarray, samples: int) -> np.ndarray:
    """The first ``samples`` samples of ``noise`` repeated end to end: (S_noise,) -> (samples,)."""
    if len(noise) >= samples:
        return noise[:samples]
    return np.tile(noise, -(-samples // len(noise)))[:samples]


@dataclass(frozen=True)
class NoiseMixer:
    """Noise from ``entries`` (a noise manifest's lines) added with probability ``prob`` at an SNR
    uniform in [``snr_db[0]``, ``snr_db[1]``] dB; see the module docstring."""

    entries: Sequence[ManifestEntry]
    sample_rate: int
    snr_db: tuple[float, float]
    prob: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if not self.entries:
            raise ValueError("NoiseMixer: the noise manifest has no usable lines")

    def draw(self, epoch: int, index: int, seconds: float) -> NoiseDraw:
        """The noise of utterance ``index`` (lasting ``seconds``) in ``epoch``: a pure function."""
        rng = np.random.default_rng([self.seed, epoch, index, NOISE_STREAM])
        if rng.uniform() >= self.prob:
            return NoiseDraw(None)
        i = int(rng.integers(len(self.entries)))
        start = float(rng.uniform(0.0, max(self.entries[i].duration - seconds, 0.0)))
        return NoiseDraw(i, start, float(rng.uniform(self.snr_db[0], self.snr_db[1])))

    def read(self, draw: NoiseDraw, samples: int) -> np.ndarray:
        """``samples`` samples of the drawn noise line from ``draw.start``, repeated if shorter."""
        entry = self.entries[draw.entry]
        offset, length = entry.span
        seconds = samples / self.sample_rate
        if length is None or draw.start + seconds <= length:  # the line has enough audio after the start
            length = seconds
        try:
            noise = load_audio(entry.audio_filepath, self.sample_rate, offset + draw.start, length)
        except AudioError:  # e.g. a start past the end of a file shorter than its line says
            noise = np.zeros(0, np.float32)
        if len(noise) == 0 or (len(noise) < samples and draw.start > 0):  # take the line whole instead
            try:
                noise = load_audio(entry.audio_filepath, self.sample_rate, *entry.span)
            except AudioError as e:
                raise NoiseError(f"{entry.where}: {e}. Fix or remove this line of the noise manifest.") from None
        return cover(noise, samples)

    def __call__(self, wave: np.ndarray, epoch: int, index: int) -> np.ndarray:
        draw = self.draw(epoch, index, len(wave) / self.sample_rate)
        if draw.entry is None:
            return wave
        return mix_at_snr(wave, self.read(draw, len(wave)), draw.snr_db)


def noise_from_manifest(manifests: Sequence[str], sample_rate: int, snr_db: Sequence[float], prob: float,
                        seed: int) -> tuple[NoiseMixer, ManifestReport]:
    """A ``NoiseMixer`` over the lines of ``manifests`` whose audio header reads, and the report of
    what was kept and dropped (bad lines and unreadable files are skipped and counted)."""
    entries, report = read_manifest(manifests, min_duration=0.0, need_text=False)
    usable = []
    for entry in entries:
        try:
            audio_info(entry.audio_filepath)
        except AudioError:
            report.kept -= 1
            report.kept_seconds -= entry.duration
            report.drop("unreadable audio", entry.where)
            continue
        usable.append(entry)
    if not usable:
        raise UsageError(f"train_dataset.noise_manifest: no usable line in {', '.join(map(str, manifests))} "
                         f"({report.summary()}); point it at a JSONL manifest of noise recordings, or set it to []")
    return NoiseMixer(usable, sample_rate, (float(snr_db[0]), float(snr_db[1])), prob, seed), report
