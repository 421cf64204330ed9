"""Manifests: reading, path resolution, bad lines (strict/lenient), filters, the check CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asrlib.data import manifest_check
from asrlib.data.manifest import ManifestError, read_manifest, write_manifest


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines), encoding="utf-8")
    return path


def wav(path: Path, seconds: float, rate: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.full(int(round(seconds * rate)), 0.1, dtype=np.float32), rate, subtype="PCM_16")
    return path


def test_relative_paths_resolve_against_manifest_folder(tmp_path, monkeypatch):
    a = wav(tmp_path / "data" / "audio" / "a.wav", 0.5)
    b = wav(tmp_path / "elsewhere" / "b.wav", 0.5)
    m = write_lines(tmp_path / "data" / "m.jsonl", [
        {"audio_filepath": "audio/a.wav", "text": "A, b!", "duration": 0.5},
        "",
        {"audio_filepath": str(b), "text": "Привет", "duration": 0.5, "offset": 0.1, "extra": 1},
    ])
    monkeypatch.chdir(tmp_path / "elsewhere")  # the current folder must not matter
    entries, report = read_manifest(m, strict=True)
    assert [Path(e.audio_filepath) for e in entries] == [a.resolve(), b]
    assert [e.line for e in entries] == [1, 3]  # the blank line 2 is skipped but counted in numbering
    assert entries[0].text == "A, b!" and entries[1].text == "Привет"
    assert entries[1].offset == 0.1 and entries[0].offset == 0.0
    assert entries[1].where == f"{m}:3"
    assert report.kept == 2 and report.total_dropped == 0


BAD_LINES = [
    ('{"audio_filepath": "a.wav", "text": "x", "duration": 1.0', "malformed JSON", "not valid JSON"),
    ('[1, 2]', "malformed JSON", "JSON object"),
    ({"audio_filepath": "a.wav", "duration": 1.0}, "missing 'text'", "missing key 'text'"),
    ({"text": "x", "duration": 1.0}, "missing 'audio_filepath'", "missing key 'audio_filepath'"),
    ({"audio_filepath": "a.wav", "text": "x"}, "missing 'duration'", "missing key 'duration'"),
    ({"audio_filepath": "a.wav", "text": "x", "duration": "long"}, "bad duration", "number of seconds"),
    ({"audio_filepath": "a.wav", "text": "x", "duration": -1.0}, "bad duration", "negative"),
    ({"audio_filepath": "a.wav", "text": "  ", "duration": 1.0}, "empty text", "empty"),
    ({"audio_filepath": "missing.wav", "text": "x", "duration": 1.0}, "audio file not found", "missing.wav"),
]


@pytest.mark.parametrize("line,reason,message", BAD_LINES)
def test_bad_line_strict_names_manifest_and_line(tmp_path, line, reason, message):
    wav(tmp_path / "a.wav", 1.0)
    good = {"audio_filepath": "a.wav", "text": "ok", "duration": 1.0}
    m = write_lines(tmp_path / "m.jsonl", [good, good, line])
    with pytest.raises(ManifestError) as err:
        read_manifest(m, strict=True)
    text = str(err.value)
    assert f"{m}:3" in text and message in text and "strict" in text


@pytest.mark.parametrize("line,reason,message", BAD_LINES)
def test_bad_line_lenient_is_skipped_and_counted(tmp_path, line, reason, message):
    wav(tmp_path / "a.wav", 1.0)
    good = {"audio_filepath": "a.wav", "text": "ok", "duration": 1.0}
    m = write_lines(tmp_path / "m.jsonl", [good, line, good])
    entries, report = read_manifest(m)
    assert [e.line for e in entries] == [1, 3]
    assert dict(report.dropped) == {reason: 1}
    assert report.first[reason] == f"{m}:2"
    assert reason in report.summary() and "kept 2" in report.summary()


def test_duration_filters_and_several_manifests(tmp_path):
    wav(tmp_path / "a.wav", 1.0)
    rows = [{"audio_filepath": "a.wav", "text": "t", "duration": d} for d in (0.05, 0.5, 3.0, 30.0)]
    m1 = write_lines(tmp_path / "m1.jsonl", rows)
    m2 = write_lines(tmp_path / "m2.jsonl", rows[1:3])
    entries, report = read_manifest([m1, m2], strict=True, min_duration=0.1, max_duration=20.0)
    assert [(Path(e.manifest).name, e.duration) for e in entries] == [("m1.jsonl", 0.5), ("m1.jsonl", 3.0), ("m2.jsonl", 0.5), ("m2.jsonl", 3.0)]
    assert report.dropped == {"shorter than min_duration 0.1 s": 1, "longer than max_duration 20 s": 1}
    assert report.kept_seconds == pytest.approx(7.0)


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found.*nope.jsonl"):
        read_manifest(tmp_path / "nope.jsonl")


def test_write_manifest_relative_paths_and_no_overwrite(tmp_path):
    audio = wav(tmp_path / "audio" / "x.wav", 0.2)
    m = write_manifest(tmp_path / "out" / "m.jsonl", [{"audio_filepath": str(audio.resolve()), "text": "t", "duration": 0.2}])
    assert json.loads(m.read_text())["audio_filepath"] == "../audio/x.wav"
    assert Path(read_manifest(m, strict=True)[0][0].audio_filepath) == audio.resolve()
    with pytest.raises(ManifestError, match="already exists.*--force"):
        write_manifest(m, [])
    write_manifest(m, [], force=True)
    assert m.read_text() == ""


# ------------------------------------------------------------------ asrlib manifest check


def test_check_cli_ok(tiny_manifest, capsys):
    assert manifest_check.main(["check", str(tiny_manifest)]) == 0
    out = capsys.readouterr().out
    assert "6 lines ok, 0 lines bad" in out


def test_check_cli_reports_each_bad_line(tmp_path, capsys):
    wav(tmp_path / "a.wav", 1.0)
    wav(tmp_path / "tiny.wav", 0.01)
    (tmp_path / "broken.wav").write_bytes(b"not audio at all" * 10)
    m = write_lines(tmp_path / "m.jsonl", [
        {"audio_filepath": "a.wav", "text": "ok", "duration": 1.0},
        {"audio_filepath": "a.wav", "text": "wrong duration", "duration": 1.5},
        {"audio_filepath": "tiny.wav", "text": "too short", "duration": 0.01},
        {"audio_filepath": "broken.wav", "text": "corrupt", "duration": 1.0},
        {"audio_filepath": "a.wav", "text": "within tolerance", "duration": 1.03},
        "{oops",
    ])
    assert manifest_check.main(["check", str(m)]) == 1
    captured = capsys.readouterr()
    err = captured.err
    assert f"{m}:2: stated duration 1.500 s but the audio lasts 1.000 s" in err
    assert f"{m}:3: audio lasts 10.0 ms, shorter than one 25 ms" in err
    assert f"{m}:4: cannot" in err and "broken.wav" in err
    assert f"{m}:6: not valid JSON" in err
    assert f"{m}:1" not in err and f"{m}:5" not in err
    assert "2 lines ok, 4 lines bad" in captured.out


def test_check_cli_noise_manifests_need_no_text(tmp_path, capsys):
    wav(tmp_path / "a.wav", 1.0)
    m = write_lines(tmp_path / "noise.jsonl", [
        {"audio_filepath": "a.wav", "duration": 1.0},
        {"audio_filepath": "a.wav", "text": "", "duration": 1.0},
        {"audio_filepath": "a.wav", "duration": 2.0},
    ])
    assert manifest_check.main(["check", "--noise", str(m)]) == 1
    captured = capsys.readouterr()
    assert f"{m}:3: stated duration 2.000 s" in captured.err and "2 lines ok, 1 lines bad" in captured.out
    assert manifest_check.main(["check", str(m)]) == 1  # a training manifest needs its texts
    err = capsys.readouterr().err
    assert f"{m}:1: missing key 'text'" in err and f"{m}:2: 'text' is empty" in err


def test_check_cli_strict_stops_at_first(tmp_path, capsys):
    wav(tmp_path / "a.wav", 1.0)
    m = write_lines(tmp_path / "m.jsonl", [{"audio_filepath": "a.wav", "text": "x", "duration": 2.0}] * 3)
    assert manifest_check.main(["check", str(m), "--strict"]) == 1
    err = capsys.readouterr().err
    assert f"{m}:1" in err and f"{m}:2" not in err


def test_check_cli_offset_segments(tmp_path, capsys):
    wav(tmp_path / "a.wav", 2.0)
    m = write_lines(tmp_path / "m.jsonl", [
        {"audio_filepath": "a.wav", "text": "fits", "duration": 1.0, "offset": 0.5},
        {"audio_filepath": "a.wav", "text": "runs past", "duration": 1.0, "offset": 1.5},
    ])
    assert manifest_check.main(["check", str(m)]) == 1
    err = capsys.readouterr().err
    assert f"{m}:2: offset 1.5 s + duration 1 s runs past" in err and f"{m}:1" not in err


def test_byte_order_mark_keeps_the_first_line(tiny_manifest):
    """A manifest saved 'UTF-8 with BOM' (Windows editors) loses no line."""
    text = tiny_manifest.read_text(encoding="utf-8")
    tiny_manifest.write_text(text, encoding="utf-8-sig")
    entries, report = read_manifest(tiny_manifest)
    assert report.total_dropped == 0 and len(entries) == len(text.splitlines())
    assert entries[0].line == 1
    assert manifest_check.main(["check", str(tiny_manifest)]) == 0


def test_check_fails_on_an_empty_manifest(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    assert manifest_check.main(["check", str(empty)]) == 1
    assert "empty manifest" in capsys.readouterr().err
