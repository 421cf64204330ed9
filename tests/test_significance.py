"""``asrlib significance``: the paired bootstrap against exact references (a binomial, and every
resample of a small set enumerated), speaker clusters read from the manifest, and one-line errors."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from asrlib.significance import main, paired_bootstrap


def binomial_quantile(n: int, p: float, q: float) -> int:
    """Smallest k with P(X <= k) >= q for X ~ Binomial(n, p), summed term by term."""
    total = 0.0
    for k in range(n + 1):
        total += math.comb(n, k) * p**k * (1 - p) ** (n - k)
        if total >= q:
            return k
    return n


def test_utterance_bootstrap_matches_the_binomial():
    """100 one-word utterances, A right on all, B wrong on 20: B - A over a resample is the number
    of B's errors drawn, Binomial(100, 0.2), divided by 100."""
    words, err_a = np.ones(100), np.zeros(100)
    err_b = np.r_[np.ones(20), np.zeros(80)]
    r = paired_bootstrap(words, err_a, err_b, resamples=20000, seed=1)
    assert r["difference"] == pytest.approx(0.2)
    low, high = r["interval_95"]
    assert low == pytest.approx(binomial_quantile(100, 0.2, 0.025) / 100, abs=0.011)
    assert high == pytest.approx(binomial_quantile(100, 0.2, 0.975) / 100, abs=0.011)
    assert r["b_better"] == 0.0 and r["b_worse"] > 0.999  # P(no error drawn) = 0.8**100
    assert r["wer_b_interval_95"] == pytest.approx([low, high])


def test_speaker_bootstrap_matches_every_resample_enumerated():
    """Three speakers: all 27 equally likely resamples, enumerated by a slow loop."""
    groups = ["s1", "s1", "s2", "s3", "s3", "s3"]
    words = np.array([3, 4, 5, 2, 2, 6])
    err_a = np.array([1, 0, 2, 0, 1, 1])
    err_b = np.array([0, 0, 3, 0, 0, 0])
    per = {g: [0, 0, 0] for g in groups}
    for g, w, a, b in zip(groups, words, err_a, err_b):
        per[g] = [per[g][0] + w, per[g][1] + a, per[g][2] + b]
    better = worse = 0
    for draw in itertools.product(sorted(per), repeat=3):
        w = sum(per[g][0] for g in draw)
        d = (sum(per[g][2] for g in draw) - sum(per[g][1] for g in draw)) / w
        better += d < 0
        worse += d > 0
    r = paired_bootstrap(words, err_a, err_b, groups, resamples=40000, seed=2)
    assert r["units"] == 3 and r["words"] == words.sum()
    assert r["difference"] == pytest.approx((err_b.sum() - err_a.sum()) / words.sum())
    assert r["b_better"] == pytest.approx(better / 27, abs=0.01)
    assert r["b_worse"] == pytest.approx(worse / 27, abs=0.01)


def test_identical_systems_differ_by_nothing():
    words, errs = np.array([5, 3, 7]), np.array([1, 0, 2])
    r = paired_bootstrap(words, errs, errs, ["a", "b", "c"], resamples=500)
    assert r["difference"] == 0 and r["interval_95"] == [0.0, 0.0] and r["b_better"] == r["b_worse"] == 0


def report(path, rows):
    path.write_text(json.dumps({"wer": 0.0, "utterances": [
        {"id": f"{m}:{line}", "ref": ref, "hyp": hyp} for m, line, ref, hyp in rows]}))
    return str(path)


def test_cli_by_speaker_from_the_manifest(tmp_path, capsys):
    manifest = tmp_path / "dev.jsonl"
    speakers = ["ann"] * 3 + ["bob"] * 3 + ["cy"] * 4
    manifest.write_text("".join(json.dumps({"audio_filepath": f"{i}.wav", "text": "a b c d", "duration": 1.0,
                                            "speaker": s}) + "\n" for i, s in enumerate(speakers)))
    m = str(manifest)
    a = report(tmp_path / "a.json", [(m, i + 1, "A B C D", "A B C D" if i % 2 else "A B X") for i in range(10)])
    b = report(tmp_path / "b.json", [(m, i + 1, "A B C D", "A B C D") for i in range(10)])
    out = tmp_path / "r.json"
    assert main([a, b, "--json", str(out), "--resamples", "2000"]) == 0
    r = json.loads(out.read_text())
    assert r["by"] == "speaker" and r["units"] == 3
    assert r["wer_a"] == pytest.approx(10 / 40) and r["wer_b"] == 0  # 5 utterances with 2 errors each
    assert r["b_better"] == 1.0 and "B is better" in capsys.readouterr().out
    assert main([a, b, "--by", "utterance", "--json", str(tmp_path / "u.json"), "--resamples", "2000"]) == 0
    assert json.loads((tmp_path / "u.json").read_text())["units"] == 10
    assert main([a, b, "--json", str(out)]) == 2  # an existing file is not replaced


def test_cli_one_line_errors(tmp_path, capsys):
    a = report(tmp_path / "a.json", [("m.jsonl", 1, "A B", "A B"), ("m.jsonl", 2, "C", "C")])
    b = report(tmp_path / "b.json", [("m.jsonl", 1, "A B", "A")])
    assert main([a, b]) == 2
    assert "score different utterances" in capsys.readouterr().err
    c = report(tmp_path / "c.json", [("m.jsonl", 1, "A X", "A B"), ("m.jsonl", 2, "C", "C")])
    assert main([a, c, "--by", "utterance"]) == 2
    assert "references differ" in capsys.readouterr().err
    assert main([a, a, "--by", "speaker"]) == 2  # m.jsonl is not there to name the speakers
    assert "--manifest" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{")
    assert main([str(tmp_path / "bad.json"), a]) == 2
    assert "asrlib evaluate --json" in capsys.readouterr().err
