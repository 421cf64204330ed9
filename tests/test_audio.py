"""asrlib.audio: decoding, down-mix, resampling, segments and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from asrlib.audio import AudioError, audio_info, load_audio, measure_duration


def sine(freq: float, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


def test_resample_8k_to_16k_keeps_frequency_and_length(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, sine(440.0, 1.0, 8000), 8000, subtype="PCM_16")
    y = load_audio(path, 16000)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - 16000) <= 2
    assert abs(peak_hz(y, 16000) - 440.0) < 2.0
    # energy survives: RMS of a 0.4 sine is 0.4 / sqrt(2)
    assert abs(np.sqrt(np.mean(y[1000:-1000] ** 2)) - 0.4 / np.sqrt(2)) < 0.01


def test_downsample_removes_content_above_new_nyquist(tmp_path):
    path = tmp_path / "b.wav"
    sf.write(path, sine(300.0, 1.0, 16000) + sine(6000.0, 1.0, 16000), 16000, subtype="FLOAT")
    y = load_audio(path, 8000)  # 6 kHz is above the 4 kHz Nyquist of 8 kHz: must be filtered
    assert abs(peak_hz(y, 8000) - 300.0) < 2.0
    spectrum = np.abs(np.fft.rfft(y))
    freqs = np.fft.rfftfreq(len(y), 1 / 8000)
    assert spectrum[np.abs(freqs - 2000) < 50].max() < 0.01 * spectrum.max()  # no alias at 8000-6000


def test_stereo_is_averaged_to_mono(tmp_path):
    left, right = sine(300.0, 0.5, 16000), sine(700.0, 0.5, 16000) * 0.5
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    y = load_audio(path, 16000)
    np.testing.assert_allclose(y, (left + right) / 2, atol=1e-6)


@pytest.mark.parametrize("fmt,subtype,ext", [("FLAC", "PCM_16", "flac"), ("OGG", "VORBIS", "ogg"), ("MP3", "MPEG_LAYER_III", "mp3")])
def test_compressed_formats(tmp_path, fmt, subtype, ext):
    if fmt not in sf.available_formats():
        pytest.skip(f"libsndfile without {fmt}")
    path = tmp_path / f"c.{ext}"
    sf.write(path, sine(500.0, 1.0, 16000), 16000, format=fmt, subtype=subtype)
    y = load_audio(path, 16000)
    assert abs(len(y) - 16000) < 0.1 * 16000  # lossy codecs may pad a little
    assert abs(peak_hz(y, 16000) - 500.0) < 3.0


def test_offset_and_duration_select_a_segment(tmp_path):
    x = np.linspace(-0.5, 0.5, 16000, dtype=np.float32)  # a ramp: position is readable from value
    path = tmp_path / "ramp.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    y = load_audio(path, 16000, offset=0.25, duration=0.5)
    np.testing.assert_allclose(y, x[4000:12000], atol=1e-7)
    assert measure_duration(path) == pytest.approx(1.0)
    assert audio_info(path).duration == pytest.approx(1.0)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(AudioError, match="not found.*nope.wav"):
        load_audio(tmp_path / "nope.wav", 16000)


def test_corrupt_file_names_it(tmp_path):
    path = tmp_path / "garbage.wav"
    path.write_bytes(b"RIFF" + bytes(range(256)) * 4)
    with pytest.raises(AudioError, match="garbage.wav"):
        load_audio(path, 16000)


def test_empty_file_names_it(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="empty.wav.*no samples"):
        load_audio(path, 16000)


def test_offset_past_end(tmp_path):
    path = tmp_path / "short.wav"
    sf.write(path, sine(100.0, 0.1, 16000), 16000)
    with pytest.raises(AudioError, match="short.wav.*past the end"):
        load_audio(path, 16000, offset=2.0)
