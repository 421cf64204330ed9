"""Importers (`asrlib prepare …`) on miniature copies of the real layouts, and the bundled corpus."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asrlib import cli
from asrlib.data.importers.fsdd import build_digits_corpus
from asrlib.data.manifest import read_manifest

WORDS = "zero one two three four five six seven eight nine".split()
REPO = Path(__file__).resolve().parents[1]


def lines(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]


# ------------------------------------------------------------------ LibriSpeech


def test_librispeech(tmp_path, capsys):
    split = tmp_path / "LibriSpeech" / "dev-clean"
    rate = 16000
    expected = {}
    for spk, chap, n in (("19", "198", 2), ("26", "495", 1)):
        folder = split / spk / chap
        folder.mkdir(parents=True)
        trans = []
        for k in range(n + 1):
            utt = f"{spk}-{chap}-{k:04d}"
            text = f"WORD {spk} NUMBER {k}"
            trans.append(f"{utt} {text}")
            if k < n:  # the last utterance of each chapter has no flac: skipped and counted
                seconds = 0.2 + 0.1 * k
                sf.write(folder / f"{utt}.flac", np.zeros(int(seconds * rate), np.float32), rate, format="FLAC")
                expected[utt] = (text, seconds, (folder / f"{utt}.flac").resolve())
        (folder / f"{spk}-{chap}.trans.txt").write_text("\n".join(trans) + "\n")
    out = tmp_path / "manifests"
    assert cli.main(["prepare", "librispeech", str(split), "--out", str(out)]) == 0
    assert "skipped {'missing or unreadable flac': 2}" in capsys.readouterr().out
    manifest = out / "dev-clean.jsonl"
    rows = lines(manifest)
    assert all(not Path(r["audio_filepath"]).is_absolute() for r in rows)
    entries, _ = read_manifest(manifest, strict=True)
    got = {Path(e.audio_filepath).stem: (e.text, e.duration, Path(e.audio_filepath)) for e in entries}
    assert got.keys() == expected.keys()
    for utt, (text, seconds, path) in expected.items():
        assert got[utt][0] == text and got[utt][1] == pytest.approx(seconds, abs=1e-4) and got[utt][2] == path
    # never overwrite
    assert cli.main(["prepare", "librispeech", str(split), "--out", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["prepare", "librispeech", str(split), "--out", str(out), "--force", "--name", "dev"]) == 0
    assert (out / "dev.jsonl").is_file()


# ------------------------------------------------------------------ Common Voice


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="libsndfile without mp3")
def test_commonvoice(tmp_path, capsys):
    cv = tmp_path / "cv-corpus" / "ru"
    (cv / "clips").mkdir(parents=True)
    rate = 48000
    header = "client_id\tpath\tsentence_id\tsentence\tsentence_domain\tup_votes\tdown_votes\tage\tgender\taccents\tvariant\tlocale\tsegment"
    sentences = [
        ("common_voice_ru_1.mp3", '"Да," — сказал он.', 1.0),
        ("common_voice_ru_2.mp3", "Это — Тест, с пунктуацией!", 1.5),
        ("common_voice_ru_3.mp3", "Клип отсутствует.", None),  # no file
        ("common_voice_ru_4.mp3", "", 1.0),  # empty sentence
    ]
    rows = [header]
    for k, (clip, text, seconds) in enumerate(sentences):
        rows.append(f"c{k}\t{clip}\ts{k}\t{text}\t\t2\t0\t\t\t\t\tru\t")
        if seconds is not None:
            t = np.arange(int(seconds * rate)) / rate
            sf.write(cv / "clips" / clip, (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), rate, format="MP3")
    (cv / "validated.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert cli.main(["prepare", "commonvoice", str(cv), "--split", "validated", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "'empty sentence': 1" in printed and "'missing clip': 1" in printed
    entries, _ = read_manifest(out / "validated.jsonl", strict=True)
    assert [e.text for e in entries] == ['"Да," — сказал он.', "Это — Тест, с пунктуацией!"]
    for e, seconds in zip(entries, (1.0, 1.5)):
        assert Path(e.audio_filepath) == (cv / "clips" / Path(e.audio_filepath).name).resolve()
        assert abs(e.duration - seconds) < 0.08  # mp3 encoders pad a few ms
    assert all(not Path(r["audio_filepath"]).is_absolute() for r in lines(out / "validated.jsonl"))
    assert cli.main(["prepare", "commonvoice", str(cv), "--split", "validated", "--out", str(out)]) == 1
    assert cli.main(["prepare", "commonvoice", str(cv), "--split", "dev", "--out", str(out)]) == 1
    assert "dev.tsv not found" in capsys.readouterr().err


# ------------------------------------------------------------------ FSDD -> digits corpus

SPLIT_RULES = {"train": range(10, 50), "dev": range(5, 10), "test_seen": range(0, 5), "test_unseen": range(0, 50)}


def check_corpus(out: Path, seen: set, unseen: set, sources_dir: Path | None, expected_sources: set):
    used = Counter()
    for split, indices in SPLIT_RULES.items():
        entries, report = read_manifest(out / f"{split}.jsonl", strict=True)
        rows = lines(out / f"{split}.jsonl")
        assert report.kept == len(rows) > 0
        for e, row in zip(entries, rows):
            srcs = row["sources"].split()
            assert 1 <= len(srcs) <= 6
            parsed = [re.fullmatch(r"(\d)_([a-z]+)_(\d+)", s).groups() for s in srcs]
            assert e.text == " ".join(WORDS[int(d)] for d, _, _ in parsed)
            assert {spk for _, spk, _ in parsed} == {row["speaker"]}
            assert row["speaker"] in (unseen if split == "test_unseen" else seen)
            assert all(int(i) in indices for _, _, i in parsed)
            used.update(srcs)
            if sources_dir is not None:
                info = sf.info(e.audio_filepath)
                assert (info.samplerate, info.channels, info.subtype, info.format) == (8000, 1, "PCM_16", "FLAC")
                x, _ = sf.read(e.audio_filepath, dtype="float32")
                assert e.duration == pytest.approx(len(x) / 8000, abs=1e-4)
                lengths = [sf.info(sources_dir / f"{s}.wav").frames for s in srcs]
                assert int((np.abs(x) > 0.01).sum()) == sum(lengths)  # the speech, and only near-silence between
                gaps = len(x) - sum(lengths)
                assert (len(srcs) + 1) * 400 <= gaps <= (len(srcs) + 1) * 2000  # 50-250 ms each
    assert set(used) == expected_sources and set(used.values()) == {1}  # every recording exactly once


def test_fsdd_importer_on_a_miniature(tmp_path, capsys):
    rec = tmp_path / "recordings"
    rec.mkdir()
    names = set()
    for spk in ("george", "yweweler"):
        for digit in range(3):
            for idx in range(12):
                n = 200 + 37 * digit + idx  # a constant level: every sample of speech is loud
                sf.write(rec / f"{digit}_{spk}_{idx}.wav", np.full(n, 0.2 + 0.05 * digit, np.float32), 8000, subtype="PCM_16")
                names.add(f"{digit}_{spk}_{idx}")
    (rec / "README.txt").write_text("not a recording")
    out = tmp_path / "digits"
    args = ["prepare", "fsdd", str(rec), "--out", str(out), "--seen", "george", "--unseen", "yweweler", "--seed", "5"]
    assert cli.main(args) == 0
    check_corpus(out, {"george"}, {"yweweler"}, rec, names)
    # deterministic: a rebuild elsewhere gives the same manifests
    build_digits_corpus(rec, tmp_path / "again", seed=5, seen=("george",), unseen=("yweweler",))
    for split in SPLIT_RULES:
        assert (out / f"{split}.jsonl").read_text() == (tmp_path / "again" / f"{split}.jsonl").read_text()
    assert cli.main(args) == 1 and "refusing to overwrite" in capsys.readouterr().err
    assert cli.main(args[:3] + ["--out", str(tmp_path / "x")]) == 1  # default speakers: jackson is absent
    assert "no recordings of speaker 'jackson'" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_bundled_digits_corpus():
    out = REPO / "data_samples" / "digits"
    seen, unseen = {"george", "jackson", "lucas", "nicolas"}, {"yweweler"}
    expected = {f"{d}_{s}_{i}" for d in range(10) for s in seen | unseen for i in range(50)}
    check_corpus(out, seen, unseen, None, expected)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert size < 15e6
    assert (out / "tokenizer" / "tokenizer.model").is_file()
