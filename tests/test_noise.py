"""Additive noise (asrlib/data/noise.py) against formulas and the files' own samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asrlib.config import ConfigError, load_config
from asrlib.data.augment import WavePerturbation, gain_perturb, speed_perturb
from asrlib.data.manifest import read_manifest
from asrlib.data.noise import NoiseDraw, NoiseMixer, cover, mix_at_snr, noise_from_manifest
from asrlib.errors import UsageError

SR = 16000


def snr_of(speech: np.ndarray, mixed: np.ndarray) -> float:
    """10 log10(P_speech / P_added), P the mean square, in float64."""
    added = mixed.astype(np.float64) - speech.astype(np.float64)
    return 10 * np.log10(np.mean(speech.astype(np.float64) ** 2) / np.mean(added ** 2))


def write_noise(folder: Path, seconds: list[float], sample_rate: int = SR) -> tuple[Path, list[np.ndarray]]:
    """PCM_24 WAVs of Gaussian noise (distinct levels) and a manifest of them (no texts, or empty ones)."""
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True, exist_ok=True)
    rows, waves = [], []
    for i, s in enumerate(seconds):
        x = (0.05 * (i + 1) * rng.standard_normal(int(round(s * sample_rate)))).astype(np.float32)
        sf.write(folder / f"n{i}.wav", x, sample_rate, subtype="PCM_24")
        waves.append(sf.read(folder / f"n{i}.wav", dtype="float32")[0])  # the samples as stored
        rows.append({"audio_filepath": f"n{i}.wav", "duration": s} | ({"text": ""} if i % 2 else {}))  # texts not needed
    manifest = folder / "noise.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return manifest, waves


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 10.0, 17.3, 30.0])
def test_mix_reaches_the_snr_asked(snr_db, seeded):
    speech = (0.2 * np.sin(np.arange(8000) * 0.05)).astype(np.float32)
    noise = seeded.standard_normal(8000).astype(np.float32)
    mixed = mix_at_snr(speech, noise, snr_db)
    assert snr_of(speech, mixed) == pytest.approx(snr_db, abs=1e-3)
    # the added part is the noise scaled, not reshaped
    added = mixed.astype(np.float64) - speech
    assert np.corrcoef(added, noise)[0, 1] == pytest.approx(1.0, abs=1e-6)


def test_silent_speech_or_noise_is_left_alone():
    x = np.ones(100, np.float32)
    assert np.array_equal(mix_at_snr(x, np.zeros(100, np.float32), 10.0), x)
    assert np.array_equal(mix_at_snr(np.zeros(100, np.float32), x, 10.0), np.zeros(100, np.float32))


@pytest.mark.parametrize("length, samples", [(7, 3), (7, 7), (3, 10), (4, 12)])
def test_cover_repeats_the_noise_end_to_end(length, samples):
    noise = np.arange(length, dtype=np.float32)
    expected = np.array([noise[k % length] for k in range(samples)], np.float32)  # the loop
    assert np.array_equal(cover(noise, samples), expected)


def test_draws_are_a_pure_function_of_seed_epoch_and_index(tmp_path):
    manifest, _ = write_noise(tmp_path, [0.5, 2.0, 3.0])
    entries, _ = read_manifest(manifest, need_text=False)
    mixer = NoiseMixer(entries, SR, (5.0, 15.0), prob=0.3, seed=4)
    draws = [mixer.draw(e, i, 1.0) for e in range(3) for i in range(1000)]
    noisy = [d for d in draws if d.entry is not None]
    # prob 0.3 of 3000: +- 4 sigma of the binomial
    assert abs(len(noisy) - 900) < 4 * np.sqrt(3000 * 0.3 * 0.7)
    assert all(5.0 <= d.snr_db <= 15.0 for d in noisy)
    for d in noisy:  # a start that leaves a whole utterance's noise, or 0 for the line shorter than it
        assert 0.0 <= d.start <= max(entries[d.entry].duration - 1.0, 0.0)
    assert {d.entry for d in noisy} == {0, 1, 2}
    assert mixer.draw(2, 7, 1.0) == NoiseMixer(entries, SR, (5.0, 15.0), prob=0.3, seed=4).draw(2, 7, 1.0)
    assert NoiseMixer(entries, SR, (5.0, 15.0), prob=0.0).draw(0, 0, 1.0) == NoiseDraw(None)
    assert all(NoiseMixer(entries, SR, (5.0, 15.0), prob=1.0).draw(0, i, 1.0).entry is not None for i in range(50))


def test_read_takes_the_files_samples_from_the_start_and_repeats_a_short_one(tmp_path):
    manifest, waves = write_noise(tmp_path, [0.25, 2.0])
    entries, _ = read_manifest(manifest, need_text=False)
    mixer = NoiseMixer(entries, SR, (10.0, 10.0))
    # a long line: samples [start, start + S) of the file, start on a sample
    got = mixer.read(NoiseDraw(1, start=4000 / SR, snr_db=10.0), 8000)
    assert np.array_equal(got, waves[1][4000:12000])
    # a line shorter than the utterance: the whole file, repeated
    got = mixer.read(NoiseDraw(0, start=0.0, snr_db=10.0), 10000)
    assert np.array_equal(got, np.concatenate([waves[0]] * 3)[:10000])


def test_a_file_shorter_than_its_line_says_is_read_whole_and_repeated(tmp_path):
    manifest, waves = write_noise(tmp_path, [0.25])
    manifest.write_text(json.dumps({"audio_filepath": "n0.wav", "text": "", "duration": 5.0}) + "\n")
    entries, _ = read_manifest(manifest, need_text=False)
    mixer = NoiseMixer(entries, SR, (10.0, 10.0))
    got = mixer.read(NoiseDraw(0, start=2.0, snr_db=10.0), 6000)  # 2 s is past the file's end
    assert np.array_equal(got, np.concatenate([waves[0]] * 2)[:6000])


def test_noise_at_another_rate_is_resampled(tmp_path):
    manifest, _ = write_noise(tmp_path, [1.0], sample_rate=8000)
    entries, _ = read_manifest(manifest, need_text=False)
    got = NoiseMixer(entries, SR, (10.0, 10.0)).read(NoiseDraw(0, 0.0, 10.0), 12000)
    assert got.shape == (12000,)  # 0.75 s at 16 kHz from a 1 s file at 8 kHz, not repeated
    assert not np.array_equal(got[:4000], got[8000:12000])


def test_perturbation_is_speed_then_noise_then_gain(tmp_path):
    manifest, _ = write_noise(tmp_path, [3.0, 4.0])
    entries, _ = read_manifest(manifest, need_text=False)
    mixer = NoiseMixer(entries, SR, (0.0, 20.0), prob=0.5, seed=9)
    with_noise = WavePerturbation(SR, (0.9, 1.1), (-10.0, 6.0), seed=9, noise=mixer)
    without = WavePerturbation(SR, (0.9, 1.1), (-10.0, 6.0), seed=9)
    speech = (0.3 * np.sin(np.arange(16000) * 0.03)).astype(np.float32)
    seen = set()
    for i in range(12):
        assert with_noise.draw(0, i) == without.draw(0, i)  # noise leaves speed and gain's draws alone
        factor, gain = with_noise.draw(0, i)
        fast = speed_perturb(speech, factor, SR)
        draw = mixer.draw(0, i, len(fast) / SR)
        seen.add(draw.entry is None)
        mixed = fast if draw.entry is None else mix_at_snr(fast, mixer.read(draw, len(fast)), draw.snr_db)
        out = with_noise(speech, 0, i)
        assert np.array_equal(out, gain_perturb(mixed, gain))
        if draw.entry is not None:  # the gain scales the mixture: the SNR stays the drawn one
            assert snr_of(gain_perturb(fast, gain), out) == pytest.approx(draw.snr_db, abs=1e-3)
    assert seen == {True, False}
    assert WavePerturbation(SR, noise=mixer).active


def test_unreadable_noise_files_are_skipped_and_counted(tmp_path):
    manifest, _ = write_noise(tmp_path, [0.5, 0.5])
    (tmp_path / "n1.wav").write_bytes(b"not audio at all")
    mixer, report = noise_from_manifest([str(manifest)], SR, [10.0, 20.0], 0.5, 0)
    assert [Path(e.audio_filepath).name for e in mixer.entries] == ["n0.wav"]
    assert report.kept == 1 and report.dropped == {"unreadable audio": 1}
    assert f"{manifest}:2" in report.summary()
    (tmp_path / "n0.wav").write_bytes(b"nor this")
    with pytest.raises(UsageError, match="train_dataset.noise_manifest: no usable line") as e:
        noise_from_manifest([str(manifest)], SR, [10.0, 20.0], 0.5, 0)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("setting, match", [
    ("train_dataset.noise_snr_db=[20.0, 10.0]", "noise_snr_db"),
    ("train_dataset.noise_snr_db=[10.0]", "noise_snr_db"),
    ("train_dataset.noise_prob=1.5", "noise_prob"),
    ("train_dataset.noise_prob=-0.1", "noise_prob"),
])
def test_noise_settings_are_checked(setting, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [setting])


def test_the_noise_manifest_is_found_beside_the_config(tmp_path):
    (tmp_path / "c.toml").write_text('[train_dataset]\nnoise_manifest = "noise/n.jsonl"\n')
    cfg = load_config(tmp_path / "c.toml")
    assert cfg.train_dataset.noise_manifest == [str((tmp_path / "noise" / "n.jsonl").resolve())]
    assert load_config(None).train_dataset.noise_manifest == []  # off by default


def test_noisy_manifest_script_mixes_every_utterance_at_the_snr(tiny_manifest, tmp_path):
    """scripts/noisy_manifest.py: the same texts, each mix at the SNR asked (measured on the 16-bit
    files against the clean utterance), and an existing output kept."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("noisy_manifest", Path(__file__).resolve().parents[1] / "scripts" / "noisy_manifest.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    noise, _ = write_noise(tmp_path / "noise", [0.2, 1.0])
    out = tmp_path / "noisy"
    assert script.main(["--manifest", str(tiny_manifest), "--noise", str(noise), "--snr", "5", "--out", str(out)]) == 0
    clean, _ = read_manifest(tiny_manifest)
    noisy, _ = read_manifest(out / tiny_manifest.name)
    assert [e.text for e in noisy] == [e.text for e in clean]
    for a, b in zip(clean, noisy):
        w, m = sf.read(a.audio_filepath, dtype="float64")[0], sf.read(b.audio_filepath, dtype="float64")[0]
        assert m.shape == w.shape
        assert snr_of(w, m) == pytest.approx(5.0, abs=0.05)  # the tiny corpus is quiet: no clip guard
    assert script.main(["--manifest", str(tiny_manifest), "--noise", str(noise), "--snr", "5", "--out", str(out)]) == 2
