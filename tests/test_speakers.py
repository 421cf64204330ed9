"""``asrlib speakers``: per-speaker counts against hand-counted ones, Spearman's rho against the
textbook formula and a hand-worked case with ties, and the one-line errors."""

from __future__ import annotations

import json
import math

import pytest

from asrlib.speakers import main, per_speaker, rank_correlation


def test_rank_correlation_matches_the_formula_without_ties():
    """rho = 1 - 6 sum d^2 / (n (n^2 - 1)) when no values tie."""
    x, y = [10.0, 20.0, 30.0, 40.0, 50.0], [1.0, 3.0, 2.0, 5.0, 4.0]
    d2 = sum((a - b) ** 2 for a, b in zip([1, 2, 3, 4, 5], [1, 3, 2, 5, 4]))
    assert rank_correlation(x, y) == pytest.approx(1 - 6 * d2 / (5 * 24))
    assert rank_correlation(x, [-v for v in x]) == pytest.approx(-1.0)


def test_rank_correlation_with_ties_by_hand():
    """x ranks 1, 2.5, 2.5, 4 against 1, 2, 3, 4: covariance 4.5, variances 4.5 and 5."""
    assert rank_correlation([1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert math.isnan(rank_correlation([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


def test_per_speaker_counts_by_hand():
    utts = [{"ref": "A B C D", "hyp": "A X C"},      # ann: 1 substitution, 1 deletion
            {"ref": "E F", "hyp": "E F G"},          # ann: 1 insertion
            {"ref": "ONE TWO", "hyp": "ONE TWO"}]    # bob: none
    lines = [{"speaker": "ann", "duration": 2.0}, {"speaker": "ann", "duration": 1.0},
             {"speaker": "bob", "duration": 3.0}]
    ann, bob = per_speaker(utts, lines)
    assert (ann["speaker"], ann["utterances"], ann["words"]) == ("ann", 2, 6)
    assert (ann["substitutions"], ann["deletions"], ann["insertions"], ann["errors"]) == (1, 1, 1, 3)
    assert ann["wer"] == pytest.approx(3 / 6) and ann["chars_per_second"] == pytest.approx(6 / 3.0)
    assert (bob["errors"], bob["wer"], bob["chars_per_second"]) == (0, 0.0, pytest.approx(6 / 3.0))


def write_case(tmp_path, with_speaker=True):
    manifest = tmp_path / "dev.jsonl"
    rows = [("fast", 1.0, "A B C D", "A C"), ("fast", 1.0, "E F", "E"), ("mid", 2.0, "A B C D", "A B C"),
            ("slow", 4.0, "A B C D", "A B C D"), ("slow", 4.0, "E F G H", "E F G H")]
    manifest.write_text("".join(json.dumps({"audio_filepath": f"{i}.wav", "text": ref, "duration": sec,
                                            **({"speaker": spk} if with_speaker else {})}) + "\n"
                                for i, (spk, sec, ref, _) in enumerate(rows)))
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"wer": 0.0, "utterances": [
        {"id": f"{manifest}:{i + 1}", "ref": ref, "hyp": hyp} for i, (_, _, ref, hyp) in enumerate(rows)]}))
    return str(report)


def test_cli_table_and_json(tmp_path, capsys):
    report = write_case(tmp_path)
    out = tmp_path / "speakers.json"
    assert main([report, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert [s["speaker"] for s in r["speakers"]] == ["fast", "mid", "slow"]  # worst first
    assert [s["errors"] for s in r["speakers"]] == [3, 1, 0]
    assert [s["chars_per_second"] for s in r["speakers"]] == [pytest.approx(6 / 2.0), pytest.approx(4 / 2.0),
                                                             pytest.approx(8 / 8.0)]
    assert r["rank_correlation_rate_wer"] == pytest.approx(1.0)
    assert "WER 22.22 % (4 errors in 18 words)" in printed and "fast" in printed.splitlines()[1]
    assert main([report, "--json", str(out)]) == 2  # an existing file is not replaced
    capsys.readouterr()
    assert main([report, "--top", "1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].startswith("fast") and printed[2] == "... 2 more (--top 0 prints all)"
    assert "all 3 speakers" in printed[3]


def test_cli_one_line_errors(tmp_path, capsys):
    report = write_case(tmp_path, with_speaker=False)
    assert main([report]) == 2
    err = capsys.readouterr().err
    assert "has no speaker" in err and "Traceback" not in err
    assert main([write_case(tmp_path), "--top", "-1"]) == 2
    assert "--top" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{")
    assert main([str(tmp_path / "bad.json")]) == 2
    assert "asrlib evaluate --json" in capsys.readouterr().err
