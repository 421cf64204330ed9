"""Read an audio file as the model wants it: mono float32 at a fixed sample rate.

``soundfile`` (libsndfile) decodes wav, flac, ogg and mp3; channels are averaged to mono;
``soxr`` resamples to the requested rate. Anything that goes wrong (no such file, a file
libsndfile cannot decode, an empty file or an offset past the end) raises ``AudioError``
with the file's path in the message, never a bare libsndfile traceback.

Shapes:
    file on disk (S_in, C) at its own rate  ->  returned array (S,) float32 at ``sample_rate``
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

FRAME_SECONDS = 0.025  # one STFT window: audio shorter than this yields no feature frame


class AudioError(RuntimeError):
    """An audio file could not be read; the message names the file and what to check."""


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int  # Hz, as stored in the file
    frames: int  # samples per channel, as the header states
    channels: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise AudioError(f"audio file not found: {path}")
    if not path.is_file():
        raise AudioError(f"audio path is not a file: {path}")


def audio_info(path: str | Path) -> AudioInfo:
    """The header of ``path`` (rate, frames, channels) without decoding the samples."""
    path = Path(path)
    _check_exists(path)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(f"cannot read audio file {path}: {e} (is it a wav/flac/ogg/mp3 file?)") from None
    return AudioInfo(int(info.samplerate), int(info.frames), int(info.channels))


def read_audio(path: str | Path, offset: float = 0.0, duration: float | None = None) -> tuple[np.ndarray, int]:
    """Decode ``path`` at its own rate -> (mono float32 samples (S,), sample rate)."""
    path = Path(path)
    _check_exists(path)
    if offset < 0 or (duration is not None and duration < 0):
        raise AudioError(f"{path}: offset and duration must be >= 0, got offset={offset}, duration={duration}")
    try:
        with sf.SoundFile(str(path)) as f:
            sr = int(f.samplerate)
            start = int(round(offset * sr))
            if start > 0:
                if f.seekable() and (f.frames <= 0 or start < f.frames):
                    f.seek(start)
                else:
                    raise AudioError(f"{path}: offset {offset:.3f} s is past the end of the file ({f.frames / sr:.3f} s)")
            frames = -1 if duration is None else int(round(duration * sr))
            data = f.read(frames, dtype="float32", always_2d=True)  # (S, C)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise AudioError(f"cannot decode audio file {path}: {e} (is it a valid wav/flac/ogg/mp3 file?)") from None
    if data.shape[0] == 0:
        raise AudioError(f"audio file {path} holds no samples (empty, or offset/duration select nothing)")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]  # (S, C) -> (S,)
    return np.ascontiguousarray(mono, dtype=np.float32), sr


def resample(x: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Band-limited resampling with soxr (high quality). Shapes: (S_in,) -> (S_out,)."""
    if from_rate == to_rate:
        return x
    return soxr.resample(x, from_rate, to_rate, quality="HQ").astype(np.float32, copy=False)


def load_audio(
    path: str | Path, sample_rate: int | None, offset: float = 0.0, duration: float | None = None
) -> np.ndarray:
    """Mono float32 samples (S,) of ``path`` at ``sample_rate`` Hz (None keeps the file's rate).

    ``offset``/``duration`` (seconds) select a segment, as NeMo manifests do.
    """
    x, sr = read_audio(path, offset, duration)
    return resample(x, sr, sample_rate) if sample_rate else x


def measure_duration(path: str | Path) -> float:
    """Seconds of audio in ``path``, counted from the decoded samples (exact even for mp3)."""
    x, sr = read_audio(path)
    return len(x) / sr
