"""The phone head's second pass (asrlib/decoding/rescore.py): its CTC score against an enumeration
of every alignment, the choice it makes against the formula, and the same final text streaming as
offline, on the shipped AN4 model."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from asrlib.config import load_config
from asrlib.decoding.rescore import PhoneRescoring, ctc_log_likelihood
from asrlib.decoding.result import DecodingResult
from asrlib.lexicon import Lexicon
from asrlib.model.hybrid import build_model

ROOT = Path(__file__).resolve().parents[2]


def brute_force_ctc(log_probs: torch.Tensor, targets: list[int], blank: int) -> float:
    """log of the summed probability of every frame-level path that collapses to ``targets``."""
    n_frames, n_symbols = log_probs.shape
    total = 0.0
    for path in itertools.product(range(n_symbols), repeat=n_frames):
        collapsed = [s for i, s in enumerate(path) if s != blank and (i == 0 or s != path[i - 1])]
        if collapsed == targets:
            total += math.exp(sum(float(log_probs[t, s]) for t, s in enumerate(path)))
    return math.log(total) if total > 0 else -math.inf


@pytest.mark.parametrize("targets", [[0, 1], [1, 1], [2], [], [0, 2, 0], [1, 1, 1]])
def test_ctc_log_likelihood_sums_every_alignment(targets):
    g = torch.Generator().manual_seed(len(targets))
    lp = torch.randn(5, 4, generator=g).log_softmax(-1)  # 5 frames, phones 0..2, blank 3
    want = brute_force_ctc(lp, targets, blank=3)
    got = ctc_log_likelihood(lp, targets, blank=3)
    assert math.isfinite(want)  # every one fits in 5 frames ([1, 1, 1] as 1 b 1 b 1)
    assert got == pytest.approx(want, abs=1e-9)


def test_ctc_log_likelihood_of_what_cannot_fit_is_minus_infinity():
    lp = torch.zeros(3, 3).log_softmax(-1)
    assert ctc_log_likelihood(lp, [0, 0], blank=2) == pytest.approx(brute_force_ctc(lp, [0, 0], 2))
    assert ctc_log_likelihood(lp, [0, 0, 1], blank=2) == -math.inf  # 0 b 0 1 needs 4 frames
    assert ctc_log_likelihood(torch.zeros(0, 3), [], blank=2) == 0.0
    assert ctc_log_likelihood(torch.zeros(0, 3), [1], blank=2) == -math.inf


def lexicon() -> Lexicon:
    return Lexicon({"B": ("B", "IY"), "D": ("D", "IY"), "E": ("IY",), "TWO": ("T", "UW")})  # B D IY T UW, blank 5


def test_rescore_takes_the_best_total_and_never_a_word_the_lexicon_lacks():
    lex = lexicon()
    g = torch.Generator().manual_seed(3)
    lp = torch.randn(6, lex.size + 1, generator=g)
    lp[:, lex.phone_id["D"]] += 2.0  # the frames favour D over B
    lp = lp.log_softmax(-1)
    nbest = [DecodingResult([1], [0], -1.0, "B"), DecodingResult([2], [0], -1.3, "D"),
             DecodingResult([3], [0], 0.0, "BEE"), DecodingResult([4], [1], -2.5, "E")]
    for weight in (0.0, 0.3, 1.0, 3.0):
        out = PhoneRescoring(lex, weight).rescore(nbest, lp)
        totals = {h.text: h.score + weight * brute_force_ctc(lp, lex.encode(h.text), lex.blank)
                  for h in nbest if h.text != "BEE"}  # "BEE" is not in the lexicon: no phone score
        best = max(totals, key=totals.get)
        assert out.text == best and out.score == pytest.approx(totals[best], abs=1e-6)
    assert PhoneRescoring(lex, 1.0).rescore(nbest, lp).text == "D"  # the phones overturn the beam's order
    only_unknown = [DecodingResult([3], [0], 0.0, "BEE"), DecodingResult([5], [0], -1.0, "DEE")]
    assert PhoneRescoring(lex, 1.0).rescore(only_unknown, lp) == only_unknown[0]  # the beam's order stands
    assert PhoneRescoring(lex, 1.0).rescore([], lp) == DecodingResult()


def test_the_phone_head_streams_as_it_trains():
    """stream_step's phone log-probs, chunk by chunk, equal the phone head on forward_taps' block."""
    cfg = load_config(ROOT / "configs" / "tiny.toml", [])
    cfg.model.vocab_size, cfg.model.phone_vocab_size, cfg.model.phone_block = 12, 7, 2
    torch.manual_seed(0)
    m = build_model(cfg.model).eval()
    audio = 0.1 * torch.randn(1, m.streaming.context + 5 * m.chunk_samples + 3 * m.streaming.hop)
    with torch.no_grad():
        feats, lengths = m.features(audio, torch.tensor([audio.shape[1]]))
        _, _, (block2,) = m.encoder.forward_taps(feats, lengths, (2,))
        want = m.phone_head(block2)[0]  # (T', P + 1), the training path
        state = m.init_stream(audio[:, : m.streaming.context])
        got, pos = [], m.streaming.context
        for n in (m.chunk_samples,) * 5 + (3 * m.streaming.hop,):
            _, _, phones, state = m.stream_step(audio[:, pos : pos + n], state)
            got.append(phones[0])
            pos += n
        _, _, offline = m.forward_with_phones(audio, torch.tensor([audio.shape[1]]))
    got = torch.cat(got)
    assert got.shape == want.shape == (want.shape[0], 8)
    assert float((got - want).abs().max()) < 1e-4
    assert float((offline[0] - want).abs().max()) == 0.0
    cfg.model.phone_vocab_size = 0  # no phone head: no phone output
    assert build_model(cfg.model).eval().stream_step(audio[:, 400:400 + m.chunk_samples],
                                                     build_model(cfg.model).init_stream(1))[2] is None


def test_rescoring_streaming_equals_offline_on_the_shipped_an4_model():
    from asrlib.checkpoint import load_model_and_tokenizer
    from asrlib.audio import load_audio
    from asrlib.evaluate import decode_offline
    from asrlib.ngram import NgramLM
    from asrlib.streaming import StreamingRecognizer

    model, tok = load_model_and_tokenizer(ROOT / "models" / "an4")
    assert model.cfg.phone_block == 4  # config.json says where the head reads (configs/an4_long.toml)
    lex = Lexicon.read(ROOT / "models" / "an4" / "lexicon.txt")
    lm = NgramLM.load_arpa(ROOT / "models" / "an4" / "lm.arpa", tok.pieces())
    manifest = ROOT / "data_samples" / "an4" / "dev.jsonl"
    entries = [json.loads(line) for line in manifest.read_text().splitlines()][:12]
    waves = [load_audio(manifest.parent / e["audio_filepath"], 16000) for e in entries]
    fusion = {"lm": lm, "lm_weight": 0.3, "token_bonus": 0.5}
    rescoring = PhoneRescoring(lex, 2.0)
    plain = decode_offline(model, waves, "rnnt_beam", 4, tok.decode, **fusion)
    offline = decode_offline(model, waves, "rnnt_beam", 4, tok.decode, rescoring=rescoring, **fusion)
    rec = StreamingRecognizer(model, tok, decoder="rnnt_beam", num_streams=3, beam_size=4, rescoring=rescoring, **fusion)
    streamed = rec.recognize_many(waves, piece_samples=1000)
    assert [r.text for r in streamed] == [r.text for r in offline]
    assert np.allclose([r.score for r in streamed], [r.score for r in offline], atol=1e-3)
    assert any(a.text != b.text for a, b in zip(plain, offline))  # the second pass changed something here
    with pytest.raises(ValueError, match="rnnt_beam"):
        StreamingRecognizer(model, tok, decoder="rnnt_greedy", rescoring=rescoring)
    with pytest.raises(ValueError, match="7 phones and the model's phone head 33"):
        StreamingRecognizer(model, tok, decoder="rnnt_beam",
                            rescoring=PhoneRescoring(Lexicon({"A": tuple("abcdefg")}), 1.0))


def test_a_lexicon_with_the_same_count_but_other_phones_is_refused(tmp_path):
    """Phone ids are positions in the sorted inventory: a lexicon of as many phones but other ones
    would read the head's outputs as other phones. The model's own lexicon.txt is the reference;
    pronunciations may differ (a word spelled otherwise with the same phones is accepted)."""
    import argparse

    from asrlib.decoding.rescore import rescoring_options
    from asrlib.errors import UsageError

    own = (ROOT / "models" / "an4" / "lexicon.txt").read_text()
    phones = Lexicon.read(ROOT / "models" / "an4" / "lexicon.txt").phones
    assert "Z" in phones and "ZZ" not in phones
    renamed = tmp_path / "renamed.txt"
    renamed.write_text(own.replace(" Z", " ZZ"))
    respelled = tmp_path / "respelled.txt"  # TWO as T UW UW: the same inventory, another pronunciation
    respelled.write_text("\n".join("TWO T UW UW" if line.split()[:1] == ["TWO"] else line for line in own.splitlines()))
    assert Lexicon.read(renamed).size == len(phones) and Lexicon.read(respelled).phones == phones

    def args(lexicon):
        return argparse.Namespace(phone_weight=0.5, lexicon=str(lexicon), decoder="rnnt_beam")

    with pytest.raises(UsageError, match="other phones"):
        rescoring_options(args(renamed), len(phones), ROOT / "models" / "an4")
    opts = rescoring_options(args(respelled), len(phones), ROOT / "models" / "an4")
    assert opts["rescoring"].lexicon.pronunciations["TWO"] == ("T", "UW", "UW")


def test_a_training_checkpoint_rescores_with_the_lexicon_it_was_trained_with(tmp_path):
    """Without --lexicon, a .pt checkpoint's default is the file its run's loss.phone_lexicon names
    (not a lexicon.txt beside it); once that file is gone, a one-line error asks for --lexicon."""
    import argparse

    from asrlib import checkpoint as ckpt
    from asrlib.config import to_dict
    from asrlib.decoding.rescore import rescoring_options
    from asrlib.errors import UsageError

    trained = tmp_path / "data" / "words.txt"
    trained.parent.mkdir()
    trained.write_text("B B IY\nTWO T UW\n")  # 4 phones: B, IY, T, UW
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "lexicon.txt").write_text("A EY\n")  # a stray file beside the checkpoint: not read
    cfg = load_config(None, ["loss.phone_ctc_weight=0.3", f"loss.phone_lexicon={trained}", "model.phone_vocab_size=4"])
    ckpt.atomic_save({"config": to_dict(cfg), "model": {}}, tmp_path / "runs" / "best.pt")
    args = argparse.Namespace(phone_weight=0.5, lexicon=None, decoder="rnnt_beam")
    opts = rescoring_options(args, 4, tmp_path / "runs" / "best.pt")
    assert opts["rescoring"].lexicon.pronunciations == {"B": ("B", "IY"), "TWO": ("T", "UW")}
    trained.unlink()
    with pytest.raises(UsageError, match="not on this machine: pass --lexicon"):
        rescoring_options(args, 4, tmp_path / "runs" / "best.pt")
    with pytest.raises(UsageError, match="no lexicon.txt in"):
        rescoring_options(args, 4, tmp_path / "data")  # a folder without one
