"""scripts/speaker_subset.py: a manifest cut down to N whole speakers, nested across N for a seed."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "speaker_subset.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("speaker_subset", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def corpus(tmp_path):
    """8 speakers with 1..8 lines each, audio beside the manifest in per-speaker folders."""
    root = tmp_path / "corpus"
    rows = []
    for s in range(8):
        for k in range(s + 1):
            audio = root / "audio" / f"spk{s}" / f"{k}.flac"
            audio.parent.mkdir(parents=True, exist_ok=True)
            audio.write_bytes(b"not decoded by the script")
            rows.append({"audio_filepath": f"audio/spk{s}/{k}.flac", "text": f"t{s} {k}", "duration": 1.5, "speaker": f"spk{s}"})
    manifest = root / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest, rows


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_keeps_every_line_of_exactly_n_speakers_in_order_with_paths_that_still_resolve(script, corpus, tmp_path):
    manifest, rows = corpus
    out = tmp_path / "elsewhere" / "deeper" / "s3.jsonl"
    assert script.main(["--manifest", str(manifest), "--speakers", "3", "--out", str(out)]) == 0
    kept = read(out)
    speakers = {r["speaker"] for r in kept}
    assert len(speakers) == 3
    lines_per_speaker = Counter(r["speaker"] for r in rows)
    assert Counter(r["speaker"] for r in kept) == {s: lines_per_speaker[s] for s in speakers}
    # the manifest's own order, texts untouched
    expected = [r for r in rows if r["speaker"] in speakers]
    assert [r["text"] for r in kept] == [r["text"] for r in expected]
    for new, old in zip(kept, expected):
        assert not Path(new["audio_filepath"]).is_absolute()
        assert (out.parent / new["audio_filepath"]).resolve() == (manifest.parent / old["audio_filepath"]).resolve()


def test_subsets_of_one_seed_are_nested_and_seeds_choose_differently(script, corpus, tmp_path):
    manifest, _ = corpus
    chosen = {}
    for seed in range(4):
        for n in (2, 5, 8):
            out = tmp_path / f"seed{seed}_n{n}.jsonl"
            assert script.main(["--manifest", str(manifest), "--speakers", str(n), "--out", str(out), "--seed", str(seed)]) == 0
            chosen[seed, n] = {r["speaker"] for r in read(out)}
        assert chosen[seed, 2] < chosen[seed, 5] < chosen[seed, 8]
        assert len(chosen[seed, 8]) == 8
    assert len({frozenset(chosen[seed, 2]) for seed in range(4)}) > 1


def test_refuses_to_overwrite_and_names_bad_input(script, corpus, tmp_path, capsys):
    manifest, _ = corpus
    out = tmp_path / "s2.jsonl"
    out.write_text("mine\n")
    assert script.main(["--manifest", str(manifest), "--speakers", "2", "--out", str(out)]) == 2
    assert out.read_text() == "mine\n"
    assert "exists" in capsys.readouterr().err
    assert script.main(["--manifest", str(manifest), "--speakers", "9", "--out", str(tmp_path / "n9.jsonl")]) == 2
    assert "has 8 speakers" in capsys.readouterr().err
    assert script.main(["--manifest", str(manifest), "--speakers", "2", "--out", str(manifest), "--force"]) == 2
    no_speaker = tmp_path / "nospk.jsonl"
    no_speaker.write_text(json.dumps({"audio_filepath": "a.flac", "text": "x"}) + "\n")
    assert script.main(["--manifest", str(no_speaker), "--speakers", "1", "--out", str(tmp_path / "o.jsonl")]) == 2
    assert f"{no_speaker}:1" in capsys.readouterr().err


def test_share_keeps_every_speaker_with_a_rounded_share_of_their_own_lines(script, corpus, tmp_path):
    manifest, rows = corpus
    out = tmp_path / "half.jsonl"
    assert script.main(["--manifest", str(manifest), "--speakers", "8", "--share", "0.5", "--out", str(out)]) == 0
    kept = read(out)
    per_speaker = Counter(r["speaker"] for r in kept)
    # speaker s has s + 1 lines: round(0.5 * (s + 1)) of them stay, at least one
    assert per_speaker == {f"spk{s}": max(1, round(0.5 * (s + 1))) for s in range(8)}
    texts = {r["text"] for r in rows}
    assert all(r["text"] in texts for r in kept)
    assert [r["text"] for r in kept] == [r["text"] for r in rows if r["text"] in {k["text"] for k in kept}]  # in order
    again = tmp_path / "again.jsonl"
    assert script.main(["--manifest", str(manifest), "--speakers", "8", "--share", "0.5", "--out", str(again)]) == 0
    assert again.read_text() == out.read_text()
    assert script.main(["--manifest", str(manifest), "--speakers", "8", "--share", "1.5", "--out", str(tmp_path / "x.jsonl")]) == 2
