"""``--max-symbols`` (``asrlib evaluate`` and ``asrlib transcribe``) caps the tokens an RNN-T
decoder emits per encoder frame, offline greedy, beam and streaming alike. The model is the
seeded initial tiny model (a run at learning rate 0), which babbles: greedy fills frames up to
the cap, and the beam's best path changes with the cap.

- with cap 1 or 2 no frame of any hypothesis has more tokens than the cap, and the cap binds:
  the capped hypotheses differ from the default (5) ones;
- offline greedy and streaming greedy agree at cap 1 (two independent implementations);
- the CLIs pass the cap through (their hypotheses are the capped decoders'), and a cap below 1
  is a one-line error.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from test_run_folder import one_error_line
from test_train import DIGITS, SHORT, make_manifest, tiny_config

from asrlib import evaluate, transcribe
from asrlib.audio import load_audio
from asrlib.checkpoint import load_model_and_tokenizer
from asrlib.data.manifest import read_manifest
from asrlib.streaming import StreamingRecognizer
from asrlib.train import Trainer

MANIFEST = DIGITS / "test_seen.jsonl"
N = 3  # utterances used


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """best_model folder holding the seeded initial weights (one step at learning rate 0)."""
    tmp = tmp_path_factory.mktemp("cap")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    tr = Trainer(tiny_config(tmp / "run", make_manifest(tmp, SHORT), "trainer.max_steps=1", "optim.lr=0.0",
                             "optim.warmup_steps=0", "optim.schedule=constant"))
    tr.setup()
    tr.fit()
    torch.set_num_threads(n)
    return tmp / "run" / "best_model"


def _waves(model):
    entries, _ = read_manifest(MANIFEST)
    return entries[:N], [load_audio(e.audio_filepath, model.cfg.frontend.sample_rate) for e in entries[:N]]


def _most_per_frame(results) -> int:
    return max((max(Counter(r.timestamps).values()) for r in results if r.timestamps), default=0)


@pytest.mark.parametrize("decoder", ["rnnt_greedy", "rnnt_beam"])
def test_no_frame_emits_more_than_the_cap(untrained, decoder):
    model, tok = load_model_and_tokenizer(untrained)
    _, waves = _waves(model)
    default = [r.text for r in evaluate.decode_offline(model, waves, decoder, detokenize=tok.decode)]
    for cap in (1, 2):
        capped = evaluate.decode_offline(model, waves, decoder, detokenize=tok.decode, max_symbols=cap)
        assert _most_per_frame(capped) == cap
        assert [r.text for r in capped] != default, cap


def test_streaming_and_offline_greedy_agree_at_cap_one(untrained):
    model, tok = load_model_and_tokenizer(untrained)
    _, waves = _waves(model)
    offline = evaluate.decode_offline(model, waves, "rnnt_greedy", detokenize=tok.decode, max_symbols=1)
    rec = StreamingRecognizer(model, tok, max_symbols_per_frame=1)
    for wave, want in zip(waves, offline):
        rec.reset()
        assert rec.recognize(wave, 800).text == want.text


def test_the_clis_pass_the_cap_through(untrained, tmp_path, capsys):
    model, tok = load_model_and_tokenizer(untrained)
    entries, waves = _waves(model)
    manifest = tmp_path / "three.jsonl"
    manifest.write_text("".join(json.dumps({"audio_filepath": e.audio_filepath, "duration": e.duration,
                                            "text": e.text}) + "\n" for e in entries))
    want = [r.text for r in evaluate.decode_offline(model, waves, "rnnt_beam", detokenize=tok.decode, max_symbols=1)]
    report = tmp_path / "r.json"
    assert evaluate.main(["--checkpoint", str(untrained), "--manifest", str(manifest), "--decoder", "rnnt_beam",
                          "--max-symbols", "1", "--json", str(report)]) == 0
    assert [u["hyp"] for u in json.loads(report.read_text())["utterances"]] == want
    capsys.readouterr()
    greedy = [r.text for r in evaluate.decode_offline(model, waves, "rnnt_greedy", detokenize=tok.decode,
                                                      max_symbols=1)]
    assert transcribe.main(["--checkpoint", str(untrained), "--max-symbols", "1",
                            *[e.audio_filepath for e in entries]]) == 0
    printed = [line.split("\t")[1] for line in capsys.readouterr().out.splitlines()]
    assert printed == greedy


@pytest.mark.parametrize("main, command", [(evaluate.main, "evaluate"), (transcribe.main, "transcribe")])
def test_a_cap_below_one_is_a_one_line_error(untrained, capsys, main, command):
    entries, _ = read_manifest(MANIFEST)
    args = ["--manifest", str(MANIFEST)] if command == "evaluate" else [entries[0].audio_filepath]
    assert main(["--checkpoint", str(untrained), "--max-symbols", "0", *args]) == 2
    assert "--max-symbols must be at least 1" in one_error_line(capsys.readouterr().err, command)
