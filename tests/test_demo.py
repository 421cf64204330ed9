"""``make demo``'s path, shrunk: torchrun with 2 CPU processes trains, process 0 evaluates.

The real demo (configs/demo.toml, ~10 min) is too long for the test suite; this runs the same
module and the same launch (torchrun --standalone, DDP over gloo) on the tiny preset for a
few steps and checks what the demo promises: one table, metrics.json with every test split
and decoder (beam search with an n-gram model too, and with a phone head its rescoring, as
``make demo DATA=an4`` asks), streaming equal to offline, exported weights that load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from asrlib.checkpoint import load_model

from tests.test_train import TINY, make_manifest

STEPS = 4


def test_demo_under_torchrun_trains_on_two_processes_and_reports_once(tmp_path):
    train = make_manifest(tmp_path, [0, 6, 9, 11, 13, 15])
    test = make_manifest(tmp_path, [1, 2, 3], name="test_small.jsonl")
    out = tmp_path / "demo"
    lexicon = tmp_path / "lexicon.txt"  # the digit words of the bundled corpus, in ARPAbet
    lexicon.write_text("zero Z IH R OW\none W AH N\ntwo T UW\nthree TH R IY\nfour F AO R\nfive F AY V\n"
                       "six S IH K S\nseven S EH V AH N\neight EY T\nnine N AY N\n")
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "asrlib.demo", "--config", str(TINY), "--out", str(out), "--test", str(test), "--lm-order", "3"]
    for o in [f"train_dataset.train_manifest={train}", f"validation_dataset.validation_manifest={test}",
              "train_dataset.batch_seconds=3.0", f"trainer.max_steps={STEPS}", "trainer.eval_every=2",
              "trainer.progress_bar=false", "logger.log_to_tensorboard=false", "loss.phone_ctc_weight=0.3",
              f"loss.phone_lexicon={lexicon}", "loss.phone_ctc_block=1"]:
        args += ["--set", o]
    r = subprocess.run(args, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "world size 2" in r.stderr
    assert r.stdout.count("split/decoder") == 1  # only process 0 evaluates and prints

    summary = json.loads((out / "metrics.json").read_text())
    assert summary["steps"] == STEPS
    results = summary["results"]
    assert set(results) == {f"test_small/{d}" for d in ("rnnt_greedy", "ctc_greedy", "rnnt_greedy_stream",
                                                         "rnnt_beam_lm", "rnnt_beam_lm_stream",
                                                         "rnnt_beam_lm_phones", "rnnt_beam_lm_phones_stream")}
    for v in results.values():
        assert v["num_utterances"] == 3 and v["wer"] >= 0.0
    assert results["test_small/rnnt_greedy_stream"]["wer"] == results["test_small/rnnt_greedy"]["wer"]
    assert results["test_small/rnnt_beam_lm_stream"]["wer"] == results["test_small/rnnt_beam_lm"]["wer"]
    assert results["test_small/rnnt_beam_lm_phones_stream"]["wer"] == results["test_small/rnnt_beam_lm_phones"]["wer"]
    assert "rescored by the phone head (block 1)" in r.stdout
    assert "\\3-grams:" in (out / "lm.arpa").read_text()  # the n-gram model of the training text
    assert (out / "curves.png").stat().st_size > 0
    model, _ = load_model(out / "best_model")
    assert sum(p.numel() for p in model.parameters()) > 0
    assert model.cfg.phone_block == 1 and (out / "best_model" / "lexicon.txt").read_text() == lexicon.read_text()


def test_the_demo_scores_the_test_splits_beside_every_training_manifest(tmp_path):
    from asrlib.demo import default_tests

    a, b, c = tmp_path / "fsdd", tmp_path / "an4", tmp_path / "more"
    for folder, names in ((a, ["train", "test_seen", "test_unseen", "dev"]), (b, ["train", "test_an4_voices"]),
                          (c, ["train", "test_seen"])):
        folder.mkdir()
        for n in names:
            (folder / f"{n}.jsonl").write_text("")
    # each folder once, in the training list's order; dev.jsonl is not a test split
    assert default_tests([str(a / "train.jsonl"), str(b / "train.jsonl"), str(a / "train.jsonl")], ["v.jsonl"]) == {
        "test_seen": str(a / "test_seen.jsonl"), "test_unseen": str(a / "test_unseen.jsonl"),
        "test_an4_voices": str(b / "test_an4_voices.jsonl")}
    # two folders with the same stem: both kept, told apart by their folder
    assert list(default_tests([str(a / "train.jsonl"), str(c / "train.jsonl")], [])) == [
        "fsdd/test_seen", "test_unseen", "more/test_seen"]
    # no test split anywhere: the validation manifests
    (tmp_path / "bare").mkdir()
    assert default_tests([str(tmp_path / "bare" / "train.jsonl")], [str(a / "dev.jsonl")]) == {"dev": str(a / "dev.jsonl")}


def test_a_missing_manifest_is_one_line_not_a_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "asrlib.demo", "--config", str(TINY), "--out", str(tmp_path / "out"),
                        "--set", f"train_dataset.train_manifest={tmp_path / 'nope.jsonl'}"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == f"python -m asrlib.demo: error: manifest not found: {tmp_path / 'nope.jsonl'}"
