"""Training output == streaming output, for the whole model.

Reference: the full, chunk-masked forward of the model (what training computes). The streaming
recogniser must give the same encoder frames (to float32 round-off) and the same hypotheses,
whatever the piece size the audio arrives in, including the final partial chunk.
Tolerance: max |full - stream| <= 1e-5 * max(1, max |full|).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from asrlib.audio import load_audio
from asrlib.compare import compare_stream
from asrlib.config import load_config
from asrlib.data.manifest import read_manifest
from asrlib.model import state as st
from asrlib.model.hybrid import build_model
from asrlib.streaming import StreamingRecognizer

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "data_samples" / "digits"
SHIPPED = ROOT / "models" / "digits_demo"
PIECES = [1, 37, 160, 1600, 16000, 0]  # 0 = the whole file in one call
TOL = 1e-5


def _model(preset: str, seed: int = 0, **encoder):
    cfg = load_config(ROOT / "configs" / f"{preset}.toml")
    cfg.model.vocab_size = 12
    for k, v in encoder.items():
        setattr(cfg.model.encoder, k, v)
    torch.manual_seed(seed)
    model = build_model(cfg.model).eval()
    # random weights give near-uniform outputs; scale the heads so that greedy decoding emits
    # tokens and a wrong frame would change the text
    with torch.no_grad():
        model.ctc_head.proj.weight.mul_(8.0)
        model.joint.out.weight.mul_(8.0)
    return model


def _utterance(i: int = 0, sr: int = 16000) -> np.ndarray:
    entries, _ = read_manifest(DIGITS / "test_seen.jsonl")
    return load_audio(entries[i].audio_filepath, sr)


def _check(report: dict) -> None:
    scale = max(1.0, report["max_abs_value"])
    assert report["offline_frames"] == report["stream_frames"], report
    assert report["max_abs_diff"] <= TOL * scale, report["max_abs_diff"]
    assert report["offline_tokens"] == report["stream_tokens"]
    assert report["same_text"], (report["offline_ctc_text"], report["stream_ctc_text"])


@pytest.mark.parametrize("piece", PIECES)
def test_tiny_random_weights_every_piece_size(piece):
    torch.set_num_threads(1)
    model = _model("tiny")
    wave = _utterance(1)
    _check(compare_stream(model, wave, piece))


@pytest.mark.parametrize("piece", [37, 1600, 0])
def test_demo_random_weights(piece):
    torch.set_num_threads(1)
    model = _model("demo")
    _check(compare_stream(model, _utterance(2), piece))


def test_tail_is_flushed_for_every_cut():
    """Audio ending anywhere inside a chunk: the last partial chunk still produces frames."""
    torch.set_num_threads(1)
    model = _model("tiny", seed=3)
    wave = _utterance(0)
    chunk = model.chunk_samples
    for extra in (0, 1, 159, 160, 161, chunk // 2, chunk - 1):
        cut = wave[: 2 * chunk + 240 + extra]
        r = compare_stream(model, cut, 160)
        expected = int(model.output_lengths(torch.tensor([len(cut)]))[0])
        assert r["stream_frames"] == expected
        _check(r)


def test_shorter_than_a_window_gives_nothing_in_both_paths():
    model = _model("tiny")
    r = compare_stream(model, np.zeros(100, np.float32), 37)
    assert r["offline_frames"] == r["stream_frames"] == 0
    assert r["offline_tokens"] == r["stream_tokens"] == []


def test_batched_streams_equal_single_streams():
    """Three streams of different lengths fed interleaved pieces == each one alone."""
    torch.set_num_threads(1)
    model = _model("tiny", seed=1)
    waves = [_utterance(i) for i in (0, 3, 5)]
    alone = []
    for w in waves:
        rec = StreamingRecognizer(model, keep_encoder_output=True)
        rec.accept_waveform(w)
        alone.append((rec.finalize().tokens, rec.encoder_output()))
    batched = StreamingRecognizer(model, num_streams=3, keep_encoder_output=True)
    pieces = [500, 1234, 160]
    pos = [0, 0, 0]
    while any(p < len(w) for p, w in zip(pos, waves)):
        feed = []
        for i, w in enumerate(waves):
            feed.append(w[pos[i] : pos[i] + pieces[i]] if pos[i] < len(w) else None)
            pos[i] += pieces[i]
        batched.accept_waveforms(feed)
    for i in range(3):
        result = batched.finalize(i)
        tokens, enc = alone[i]
        assert result.tokens == tokens
        out = batched.encoder_output(i)
        assert out.shape == enc.shape
        assert (out - enc).abs().max() <= TOL * max(1.0, float(enc.abs().max()))


def test_offline_batch_equals_alone():
    torch.set_num_threads(1)
    model = _model("tiny", seed=2)
    waves = [_utterance(i) for i in (0, 4)]
    lengths = torch.tensor([len(w) for w in waves])
    audio = torch.zeros(2, int(lengths.max()))
    for b, w in enumerate(waves):
        audio[b, : len(w)] = torch.from_numpy(w)
    with torch.no_grad():
        enc, enc_len = model(audio, lengths)
        for b, w in enumerate(waves):
            alone, n = model(torch.from_numpy(w)[None], torch.tensor([len(w)]))
            assert int(n[0]) == int(enc_len[b])
            assert torch.allclose(enc[b, : int(n[0])], alone[0], atol=TOL)


def test_per_block_step_equals_forward():
    """Each Conformer block (GQA and Mamba2 kinds) streams like its whole-sequence forward."""
    torch.set_num_threads(1)
    model = _model("tiny", seed=4)
    enc = model.encoder
    x = torch.randn(2, 3 * enc.chunk_size + 2, enc.d_model)
    lengths = torch.full((2,), x.shape[1])
    for block in enc.blocks:
        with torch.no_grad():
            full = block(x, lengths)
            state, outs = block.init_state(2), []
            for t0 in range(0, x.shape[1], enc.chunk_size):
                y, state = block.step(x[:, t0 : t0 + enc.chunk_size], state)
                outs.append(y)
        assert torch.allclose(torch.cat(outs, 1), full, atol=TOL), block.kind


@pytest.mark.slow
def test_one_hour_stream_has_constant_state():
    """An hour of audio through the streaming encoder: the state never grows.

    Uses 4 s chunks so the hour takes ~900 steps; positions reach 90,000 encoder frames.
    """
    torch.set_num_threads(1)
    model = _model("tiny", seed=5, chunk_frames=400, left_chunks=1)
    rec = StreamingRecognizer(model, decoder="ctc_greedy")
    rng = np.random.default_rng(0)
    size0 = None
    piece = 16000 * 30
    for _ in range(120):  # 120 x 30 s = 1 h
        rec.accept_waveform((0.1 * rng.standard_normal(piece)).astype(np.float32))
        size = rec.state_numel()
        size0 = size0 if size0 is not None else size
        assert size == size0
    rec.finalize()
    pos = st.flatten(rec.state)["encoder.blocks.0.mixer.pos"]
    frames = ((3600 * 16000 - 400) // 160 + 1 + 3) // 4  # center=False frames, then ceil(/4)
    assert int(pos[0]) == frames == 90000
    assert rec.state_numel() == size0


@pytest.mark.skipif(not (SHIPPED / "model.safetensors").is_file(), reason="models/digits_demo not built yet")
@pytest.mark.parametrize("piece", [1, 37, 160, 1600, 16000, 0])
def test_shipped_weights_stream_equals_full(piece):
    from asrlib.checkpoint import load_model
    from asrlib.tokenizer import Tokenizer

    torch.set_num_threads(1)
    model, tok = load_model(SHIPPED)
    r = compare_stream(model, _utterance(6), piece, Tokenizer(tok))
    _check(r)
    assert r["offline_text"] and r["offline_text"] == r["stream_text"]


@pytest.mark.skipif(not (SHIPPED / "model.safetensors").is_file(), reason="models/digits_demo not built yet")
@pytest.mark.parametrize("streams", [1, 16])
def test_shipped_weights_streaming_wer_equals_offline(tmp_path, streams):
    from asrlib.checkpoint import load_model
    from asrlib.evaluate import evaluate_manifest
    from asrlib.tokenizer import Tokenizer

    torch.set_num_threads(1)
    model, tok = load_model(SHIPPED)
    lines = (DIGITS / "test_unseen.jsonl").read_text().splitlines()[:20]
    manifest = tmp_path / "subset.jsonl"
    manifest.write_text("\n".join(l.replace('"audio/', f'"{DIGITS}/audio/') for l in lines) + "\n")
    off = evaluate_manifest(model, Tokenizer(tok), manifest, "rnnt_greedy")
    on = evaluate_manifest(model, Tokenizer(tok), manifest, "rnnt_greedy", stream=True, piece_samples=800,
                           streams=streams)
    assert [u["hyp"] for u in off["utterances"]] == [u["hyp"] for u in on["utterances"]]
    assert off["wer"] == on["wer"]


@pytest.mark.skipif(not (SHIPPED / "model.safetensors").is_file(), reason="models/digits_demo not built yet")
def test_transcribe_long_file_through_the_stream_gives_the_offline_text(tmp_path, capsys):
    """A file over --max-offline-seconds is decoded by the streaming step in 30 s pieces; its
    text equals offline decoding of the whole file (here a 75 s file: three pieces, the last short)."""
    import soundfile as sf

    from asrlib.transcribe import main

    entries, _ = read_manifest(DIGITS / "test_unseen.jsonl")
    wave = np.concatenate([load_audio(e.audio_filepath, 16000) for e in entries[:40]])[: 75 * 16000]
    path = tmp_path / "long.wav"
    sf.write(path, wave, 16000, subtype="FLOAT")
    assert main(["--checkpoint", str(SHIPPED), str(path)]) == 0  # 75 s < 300 s: offline
    offline = capsys.readouterr().out.strip().split("\t")[1]
    assert main(["--checkpoint", str(SHIPPED), "--max-offline-seconds", "10", str(path)]) == 0
    streamed = capsys.readouterr().out.strip().split("\t")[1]
    assert len(offline.split()) > 20 and streamed == offline


@pytest.mark.parametrize("decoder", ["rnnt_greedy", "ctc_greedy", "rnnt_beam", "ctc_beam"])
@pytest.mark.parametrize("streams", [1, 3, 8])
def test_many_streams_at_once_equal_offline_decoding(decoder, streams):
    """recognize_many (streams stepped and decoded as one batch, a stream taking the next
    utterance when one ends) gives each utterance its offline result: tokens and frames."""
    from asrlib.evaluate import decode_offline

    torch.set_num_threads(1)
    model = _model("tiny", seed=1)
    waves = [_utterance(i) for i in range(7)]
    waves[2] = waves[2][:900]  # one shorter than a chunk: only the flush
    offline = [decode_offline(model, [w], decoder)[0] for w in waves]
    rec = StreamingRecognizer(model, decoder=decoder, num_streams=streams)
    many = rec.recognize_many(waves, piece_samples=700)
    assert [r.tokens for r in many] == [r.tokens for r in offline]
    assert [r.timestamps for r in many] == [r.timestamps for r in offline]
    assert sum(len(r.tokens) for r in many) > 5  # the scaled heads emit: a wrong frame would show
    np.testing.assert_allclose([r.score for r in many], [r.score for r in offline], rtol=1e-4, atol=1e-3)


def test_stream_yields_every_partial_then_the_final_result():
    torch.set_num_threads(1)
    model = _model("tiny", seed=1)
    wave = _utterance(4)
    rec = StreamingRecognizer(model)
    results = list(rec.stream(wave, 1600))
    assert len(results) == -(-len(wave) // 1600) + 1  # one per piece, then the flush
    assert all(a.tokens == b.tokens[: len(a.tokens)] for a, b in zip(results, results[1:]))  # text only grows
    rec.reset()
    assert results[-1].tokens == rec.recognize(wave, 333).tokens


def test_a_model_in_training_mode_is_streamed_in_eval_and_handed_back():
    torch.set_num_threads(1)
    model = _model("demo", seed=2, dropout=0.3)  # dropout would change the frames in training mode
    wave = _utterance(1)
    expected = StreamingRecognizer(model).recognize(wave).tokens
    model.train()
    assert StreamingRecognizer(model).recognize(wave).tokens == expected  # no dropout while streaming
    assert model.training and all(m.training for m in model.modules())
    with pytest.raises(ValueError, match="the model is on cpu"):
        StreamingRecognizer(model, device="meta")


def test_partial_text_is_detokenized_only_when_the_tokens_change():
    from asrlib.tokenizer import Tokenizer

    class Counting(Tokenizer):
        calls = 0

        def decode(self, ids):
            Counting.calls += 1
            return super().decode(ids)

    torch.set_num_threads(1)
    tok = Counting(DIGITS / "tokenizer")
    rec = StreamingRecognizer(_model("tiny", seed=1), tok)
    wave = _utterance(2)
    texts = [rec.accept_waveform(wave[i : i + 50]) for i in range(0, len(wave), 50)]  # 50-sample pieces
    assert texts[-1] == tok.decode(rec.partial().tokens)
    final = rec.finalize()
    assert final.text == tok.decode(final.tokens)
    assert Counting.calls <= len(set(texts)) + 3 < len(texts)


@pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
                    reason="torch.compile (inductor) needs a C++ compiler on the CPU")
def test_compiled_step_streams_what_the_eager_step_streams():
    """compile=True: the same tokens as the full model and encoder frames equal to round-off."""
    from asrlib.checkpoint import load_model
    from asrlib.tokenizer import Tokenizer

    torch.set_num_threads(1)
    model, tok = load_model(SHIPPED)
    tok = Tokenizer(tok)
    wave = _utterance(6)
    full = compare_stream(model, wave, 1600, tok)
    outs = {}
    for compiled in (False, True):
        rec = StreamingRecognizer(model, tok, keep_encoder_output=True, compile=compiled)
        outs[compiled] = (rec.recognize(wave, 1600), rec.encoder_output())
    (eager, enc_e), (comp, enc_c) = outs[False], outs[True]
    assert comp.tokens == eager.tokens == full["offline_tokens"] and comp.text == full["offline_text"]
    assert enc_c.shape == enc_e.shape
    assert float((enc_c - enc_e).abs().max()) <= 1e-4 * max(1.0, float(enc_e.abs().max()))
    with pytest.raises(ValueError, match="compile"):
        StreamingRecognizer(tokenizer=tok, backend=rec.backend, compile=True)


@pytest.mark.parametrize("decoder", ["rnnt_beam", "ctc_beam"])
@pytest.mark.parametrize("streams", [1, 3])
def test_beam_search_with_a_language_model_streams_what_it_decodes_offline(streams, decoder):
    """A beam search (with an n-gram model fused in) through the recogniser, many streams at once
    and audio in pieces, gives each utterance its offline result: tokens, frames and score."""
    from asrlib.evaluate import decode_offline
    from asrlib.ngram import train_kneser_ney

    torch.set_num_threads(1)
    model = _model("tiny", seed=1)
    rng = np.random.default_rng(0)
    lm = train_kneser_ney([list(rng.integers(0, 12, rng.integers(1, 9))) for _ in range(60)],
                          [f"p{i}" for i in range(12)], 3)
    fusion = {"lm": lm, "lm_weight": 0.5, "token_bonus": 2.0}  # the bonus outweighs this random model's LM
    waves = [_utterance(i) for i in range(5)]
    offline = [decode_offline(model, [w], decoder, beam=3, **fusion)[0] for w in waves]
    rec = StreamingRecognizer(model, decoder=decoder, num_streams=streams, beam_size=3, **fusion)
    many = rec.recognize_many(waves, piece_samples=700)
    assert [r.tokens for r in many] == [r.tokens for r in offline]
    assert [r.timestamps for r in many] == [r.timestamps for r in offline]
    assert sum(len(r.tokens) for r in many) > {"rnnt_beam": 100, "ctc_beam": 50}[decoder]  # the bonus at work
    np.testing.assert_allclose([r.score for r in many], [r.score for r in offline], rtol=1e-4, atol=1e-3)
    plain = [decode_offline(model, [w], decoder, beam=3)[0] for w in waves]
    assert [r.tokens for r in plain] != [r.tokens for r in offline]  # the model fused in changes something


@pytest.mark.skipif(not (ROOT / "models" / "an4" / "lm.arpa").is_file(), reason="models/an4 not built")
@pytest.mark.parametrize("decoder", ["rnnt_beam", "ctc_beam"])
def test_transcribe_with_a_language_model_streams_the_offline_text(capsys, decoder):
    """`asrlib transcribe --decoder rnnt_beam|ctc_beam --lm` offline, streamed, and streamed through
    the long-file path give one text; the shipped model and its shipped language model load together."""
    from asrlib.transcribe import main

    an4 = ROOT / "models" / "an4"
    entries, _ = read_manifest(ROOT / "data_samples" / "an4" / "dev.jsonl")
    audio = str(entries[5].audio_filepath)
    common = ["--checkpoint", str(an4), "--decoder", decoder, "--lm", str(an4 / "lm.arpa")]
    texts = []
    for extra in ([], ["--stream"], ["--max-offline-seconds", "0.5"]):
        assert main([*common, *extra, audio]) == 0
        texts.append(capsys.readouterr().out.strip().splitlines()[-1].split("\t")[1])
    assert texts[0] and texts[0] == texts[1] == texts[2], texts
