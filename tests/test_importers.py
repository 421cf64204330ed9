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
from asrlib.data.importers.an4 import choose_dev_speakers
from asrlib.data.importers.fsdd import build_digits_corpus
from asrlib.data.manifest import ManifestError, read_manifest

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
    assert [r["speaker"] for r in rows] == [Path(r["audio_filepath"]).name.split("-")[0] for r in rows]
    entries, _ = read_manifest(manifest, strict=True)
    got = {Path(e.audio_filepath).stem: (e.text, e.duration, Path(e.audio_filepath)) for e in entries}
    assert got.keys() == expected.keys()
    for utt, (text, seconds, path) in expected.items():
        assert got[utt][0] == text and got[utt][1] == pytest.approx(seconds, abs=1e-4) and got[utt][2] == path
    # never overwrite
    assert cli.main(["prepare", "librispeech", str(split), "--out", str(out)]) == 2
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
    assert [r["speaker"] for r in lines(out / "validated.jsonl")] == ["c0", "c1"]  # the TSV's client_id
    assert cli.main(["prepare", "commonvoice", str(cv), "--split", "validated", "--out", str(out)]) == 2
    assert cli.main(["prepare", "commonvoice", str(cv), "--split", "dev", "--out", str(out)]) == 2
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
    assert cli.main(args) == 2 and "refusing to overwrite" in capsys.readouterr().err
    assert cli.main(args[:3] + ["--out", str(tmp_path / "x")]) == 2  # default speakers: jackson is absent
    assert "no recordings of speaker 'jackson'" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_bundled_digits_corpus():
    out = REPO / "data_samples" / "digits"
    seen, unseen = {"george", "jackson", "lucas", "nicolas"}, {"yweweler"}
    expected = {f"{d}_{s}_{i}" for d in range(10) for s in seen | unseen for i in range(50)}
    check_corpus(out, seen, unseen, None, expected)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert size < 15e6
    assert (out / "tokenizer" / "tokenizer.model").is_file()


# ------------------------------------------------------------------ AN4 (CMU census)

AN4_TRAIN = {  # speaker -> [(utterance id, transcription as written between <s> and </s>, samples)]
    "fabc": [("an1-fabc-b", "YES", 9000), ("cen1-fabc-b", " A  B C ", 12345)],
    "fdef2": [("an2-fdef2-b", "GO", 8001)],
    "mghi": [("an3-mghi-b", "RUBOUT", 7000), ("cen3-mghi-b", "TWENTY ONE", 11111)],
    "mjkl": [("an4-mjkl-b", "STOP", 6400)],
    "mmno": [("an5-mmno-b", "ERASE  H", 10000)],
}
AN4_TEST = {"fqrs": [("an9-fqrs-b", "NO", 5000)], "mtuv": [("cen8-mtuv-b", "OH FIVE", 7777)]}


def make_an4(root: Path, with_test: bool) -> dict[str, np.ndarray]:
    """A miniature AN4 tree (original layout, NIST SPHERE PCM_16) -> {utterance id: int16 samples}."""
    rng = np.random.default_rng(0)
    samples = {}

    def write(folder: str, corpus: dict, trans_name: str, extra: list[str]):
        lines = []
        for spk, utts in corpus.items():
            for utt, text, n in utts:
                t = np.arange(n) / 16000
                x = 0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t) * np.hanning(n) + 0.01 * rng.standard_normal(n)
                samples[utt] = (x * 32767).astype(np.int16)
                path = root / "wav" / folder / spk / f"{utt}.sph"
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, samples[utt], 16000, format="NIST", subtype="PCM_16")
                lines.append(f"<s> {text} </s> ({utt})")
        (root / "etc").mkdir(exist_ok=True)
        (root / "etc" / trans_name).write_text("\n".join(lines + extra) + "\n")
        (root / "etc" / trans_name.replace("transcription", "fileids")).write_text(
            "".join(f"{folder}/{spk}/{u}\n" for spk, utts in corpus.items() for u, _, _ in utts)
        )

    # a line whose .sph is missing, one that does not parse (line 9 of the file), one whose .sph is junk
    extra = ["<s> HELP </s> (an6-mjkl-b)", "HELP (an7-mjkl-b)", "<s> NO </s> (an8-mjkl-b)"]
    write("an4_clstk", AN4_TRAIN, "an4_train.transcription", extra)
    (root / "wav" / "an4_clstk" / "mjkl" / "an8-mjkl-b.sph").write_bytes(b"NIST_1A\n   1024\nnot audio")
    if with_test:
        write("an4test_clstk", AN4_TEST, "an4_test.transcription", [])
    return samples


def check_an4_split(out: Path, split: str, corpus: dict, samples: dict, ext: str) -> set[str]:
    """Rows of ``split`` against the tree's own texts, speakers and sample counts -> its speakers."""
    expected = {utt: (spk, " ".join(text.split())) for spk, utts in corpus.items() for utt, text, _ in utts}
    rows = lines(out / f"{split}.jsonl")
    entries, _ = read_manifest(out / f"{split}.jsonl", strict=True)
    for row, e in zip(rows, entries):
        spk, text = expected[row["id"]]
        assert (row["speaker"], row["text"]) == (spk, text) and e.text == text
        assert row["audio_filepath"] == f"audio/{split}/{spk}/{row['id']}.{ext}"
        assert row["duration"] == len(samples[row["id"]]) / 16000  # exact
        info = sf.info(e.audio_filepath)
        assert (info.samplerate, info.channels) == (16000, 1)
        y, _ = sf.read(e.audio_filepath, dtype="int16")
        assert len(y) == len(samples[row["id"]])
        if ext != "opus":  # lossless
            assert np.array_equal(y, samples[row["id"]])
    return {r["speaker"] for r in rows}


def test_an4_importer_on_a_miniature(tmp_path, capsys):
    an4 = tmp_path / "an4"
    samples = make_an4(an4, with_test=True)
    out = tmp_path / "out"
    args = ["prepare", "an4", str(an4), "--out", str(out), "--dev-speakers", "2", "--seed", "3"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "'missing audio': 1" in printed and "9 utterances" in printed
    assert "'unreadable or not 16 kHz mono audio': 1" in printed
    assert f"first at {an4 / 'etc' / 'an4_train.transcription'}:9\": 1" in printed
    train = check_an4_split(out, "train", AN4_TRAIN, samples, "flac")
    dev = check_an4_split(out, "dev", AN4_TRAIN, samples, "flac")
    test = check_an4_split(out, "test", AN4_TEST, samples, "flac")
    assert train | dev == set(AN4_TRAIN) and not train & dev and test == set(AN4_TEST)  # split by speaker
    assert sorted(s[0] for s in dev) == ["f", "m"]  # 2 of 5 speakers, 2 f : 3 m -> 1 f + 1 m
    assert sum(len(lines(out / f"{s}.jsonl")) for s in ("train", "dev")) == 7  # every training utterance once
    # deterministic for a seed
    assert cli.main(args[:3] + ["--out", str(tmp_path / "again")] + args[5:]) == 0
    for split in ("train", "dev", "test"):
        assert (out / f"{split}.jsonl").read_text() == (tmp_path / "again" / f"{split}.jsonl").read_text()
    # never overwrite without --force; --force rebuilds without stale splits
    capsys.readouterr()
    assert cli.main(args) == 2 and "refusing to overwrite" in capsys.readouterr().err
    assert cli.main(args[:5] + ["--force"]) == 0
    assert not (out / "dev.jsonl").exists() and not (out / "audio" / "dev").exists()
    assert check_an4_split(out, "train", AN4_TRAIN, samples, "flac") == set(AN4_TRAIN)


def test_an4_without_test_set_and_opus(tmp_path, capsys):
    an4 = tmp_path / "an4"
    samples = make_an4(an4, with_test=False)
    sizes = {}
    for name, kbps in (("opus16", "16"), ("opus64", "64"), ("again", "16")):
        out = tmp_path / name
        assert cli.main(["prepare", "an4", str(an4), "--out", str(out), "--format", "opus", "--opus-bitrate", kbps]) == 0
        assert not (out / "test.jsonl").exists() and not (out / "dev.jsonl").exists()
        assert check_an4_split(out, "train", AN4_TRAIN, samples, "opus") == set(AN4_TRAIN)
        sizes[name] = sum(p.stat().st_size for p in (out / "audio").rglob("*.opus"))
        info = sf.info(out / "audio" / "train" / "mghi" / "an3-mghi-b.opus")
        assert (info.format, info.subtype) == ("OGG", "OPUS")
    assert sizes["opus16"] < 0.6 * sizes["opus64"]  # the bitrate option reaches the encoder
    for path in (tmp_path / "opus16").rglob("*.opus"):  # byte-identical rebuilds (fixed Ogg serial)
        assert path.read_bytes() == (tmp_path / "again" / path.relative_to(tmp_path / "opus16")).read_bytes()
    # decoded Opus is aligned with the source: cross-correlation peaks at lag 0
    x = samples["cen3-mghi-b"].astype(np.float64)
    y, _ = sf.read(tmp_path / "opus64" / "audio" / "train" / "mghi" / "cen3-mghi-b.opus", dtype="float64")
    corr = np.correlate(y, x[1000:-1000], mode="valid")  # lag k -> index 1000 + k
    assert int(np.argmax(corr)) == 1000
    assert cli.main(["prepare", "an4", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "an4_train.transcription not found" in capsys.readouterr().err


def test_an4_dev_speakers_are_stratified_and_deterministic():
    speakers = [f"f{i:02d}" for i in range(21)] + [f"m{i:02d}" for i in range(53)]  # AN4 train: 21 f, 53 m
    dev = choose_dev_speakers(speakers, 10, seed=0)
    assert len(dev) == 10 and sum(s[0] == "f" for s in dev) == 3  # 10 * 21/74 = 2.84 -> 3 f, 7 m
    assert dev == choose_dev_speakers(list(reversed(speakers)), 10, seed=0)
    assert dev != choose_dev_speakers(speakers, 10, seed=1)
    with pytest.raises(ManifestError, match="--dev-speakers 74"):
        choose_dev_speakers(speakers, 74, seed=0)


def test_bundled_an4_corpus():
    out = REPO / "data_samples" / "an4"
    by_split = {}
    for split in ("train", "dev"):
        entries, report = read_manifest(out / f"{split}.jsonl", strict=True)
        by_split[split] = {r["speaker"] for r in lines(out / f"{split}.jsonl")}
        assert report.kept == len(entries) > 0
    assert len(by_split["dev"]) == 10 and not by_split["dev"] & by_split["train"]
    assert len(by_split["train"] | by_split["dev"]) == 74
    assert not (out / "test.jsonl").exists()  # the official test set is held out
    assert sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) < 20e6
    assert (out / "tokenizer" / "tokenizer.model").is_file() and (out / "LICENSE").is_file()


# ------------------------------------------------------------------ noise recordings


def test_noise_folder_to_a_manifest_the_mixer_reads(tmp_path, capsys):
    from asrlib.data.noise import noise_from_manifest

    noise = tmp_path / "musan" / "noise"
    (noise / "free-sound").mkdir(parents=True)
    (noise / "sound-bible").mkdir()
    rng = np.random.default_rng(0)
    made = {"free-sound/a.wav": (16000, 1.5), "free-sound/b.flac": (8000, 0.75), "sound-bible/c.ogg": (16000, 2.0),
            "sound-bible/short.wav": (16000, 0.05), "sound-bible/d.mp3": (16000, 1.0)}
    for name, (sr, seconds) in made.items():
        sf.write(noise / name, (0.1 * rng.standard_normal(int(sr * seconds))).astype(np.float32), sr,
                 format="MP3" if name.endswith(".mp3") else None)
    (noise / "sound-bible" / "broken.wav").write_bytes(b"RIFF but not audio")
    (noise / "LICENSE").write_text("not audio, not listed")
    out = tmp_path / "noise.jsonl"
    assert cli.main(["prepare", "noise", str(noise), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "4 recordings" in said and "'unreadable': 1" in said and "'shorter than 0.1 s': 1" in said
    rows = lines(out)
    assert [r["audio_filepath"] for r in rows] == ["musan/noise/free-sound/a.wav", "musan/noise/free-sound/b.flac",
                                                   "musan/noise/sound-bible/c.ogg", "musan/noise/sound-bible/d.mp3"]
    assert [r["duration"] for r in rows] == [1.5, 0.75, 2.0, 1.0] and all("text" not in r for r in rows)
    mixer, report = noise_from_manifest([str(out)], 16000, [10.0, 20.0], 1.0, 0)
    assert len(mixer.entries) == 4 and report.kept == 4
    # never overwritten without --force; a folder without audio and a missing folder: one line, status 2
    assert cli.main(["prepare", "noise", str(noise), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["prepare", "noise", str(noise / "free-sound"), "--out", str(out), "--force"]) == 0
    assert len(lines(out)) == 2
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "missing"):
        assert cli.main(["prepare", "noise", str(folder), "--out", str(tmp_path / "x.jsonl")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("asrlib prepare noise: error:")
