"""ONNX export + onnxruntime streaming, checked against the PyTorch model.

References: the whole-utterance PyTorch forward (the central property: streaming == training
output), PyTorch's own streaming step / prediction step / joint on the same inputs, a plain
argmax-collapse loop for greedy CTC, and the config the model was built from.

Tiny preset, random weights (vocab 16), hop 160 / win 400 samples, chunk 16 frames = 2560
samples = 4 encoder frames. One export (module fixture) serves every test.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from asrlib.checkpoint import export_weights  # noqa: E402
from asrlib.config import load_config, model_config_from_dict  # noqa: E402
from asrlib.decoding.rnnt import RNNTGreedyDecoder, RNNTGreedyOptions  # noqa: E402
from asrlib.export import export_onnx, main, state_names, verification_audio  # noqa: E402
from asrlib.model import state as st  # noqa: E402
from asrlib.model.heads import PredictionState  # noqa: E402
from asrlib.model.hybrid import build_model  # noqa: E402
from asrlib.onnx_runtime import OnnxStreamingBackend, load_onnx_recognizer, read_metadata  # noqa: E402
from asrlib.streaming import StreamingRecognizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "data_samples" / "digits" / "tokenizer"
TOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model(_one_thread):
    torch.manual_seed(0)
    cfg = load_config(ROOT / "configs" / "tiny.toml")
    cfg.model.vocab_size = 16
    return build_model(cfg.model).eval()


@pytest.fixture(scope="module")
def onnx_dir(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("onnx"), TOKENIZER)


@pytest.fixture(scope="module")
def backend(onnx_dir):
    return OnnxStreamingBackend(onnx_dir, threads=1)


def _ctc_greedy_ref(log_probs: torch.Tensor, blank: int) -> list[int]:
    """Argmax per frame, merge repeats, drop blanks: the textbook rule, as a loop."""
    out, prev = [], None
    for t in range(log_probs.shape[0]):
        k = int(log_probs[t].argmax())
        if k != blank and k != prev:
            out.append(k)
        prev = k
    return out


def test_stream_of_20_chunks_matches_full_forward(model, onnx_dir):
    """>= 20 chunks + a partial flush through onnxruntime == the PyTorch whole-utterance forward."""
    ctx, n = 240, model.chunk_samples
    need = ctx + 20 * n + 5 * 160 + 37  # 20 full chunks, a 5-frame flush, 37 stray samples
    x = verification_audio(16000, need)[:need]
    with torch.no_grad():
        audio = torch.from_numpy(x)[None]
        ref, ref_len = model(audio, torch.tensor([len(x)]))  # (1, T', D)
        ref_rnnt = RNNTGreedyDecoder(RNNTGreedyOptions(model.blank)).decode(model.prediction, model.joint, ref, ref_len)[0]
        ref_ctc = _ctc_greedy_ref(model.ctc_head(ref)[0], model.blank)
    assert ref.shape[1] == 20 * 4 + 2  # 325 frontend frames -> ceil(325 / 4) encoder frames

    for decoder, ref_tokens in (("rnnt_greedy", ref_rnnt.tokens), ("ctc_greedy", ref_ctc)):
        rec = load_onnx_recognizer(onnx_dir, decoder=decoder, keep_encoder_output=True, threads=1)
        for i in range(0, len(x), 1234):  # pieces that straddle chunk boundaries
            rec.accept_waveform(x[i : i + 1234])
        result = rec.finalize()
        enc = rec.encoder_output()  # (T', D)
        assert enc.shape == ref[0].shape
        assert float((enc - ref[0]).abs().max()) < TOL
        assert result.tokens == ref_tokens
    assert len(ref_rnnt.tokens) > 0


def test_state_names_round_trip(model, backend, onnx_dir):
    names = state_names(model)
    sess = ort.InferenceSession(str(onnx_dir / "encoder_step.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["audio", *names]
    assert [o.name for o in sess.get_outputs()] == ["encoder_out", "ctc_log_probs", *[f"new_{n}" for n in names]]
    assert "state.encoder.blocks.0.mixer.k" in names and "state.frontend.samples" in names
    # flatten -> unflatten rebuilds the typed state, tensor for tensor
    template = model.init_stream(3)
    flat = st.flatten(template, "state")
    assert len(set(names)) == len(names) == len(flat) and all(flat[n].shape[0] == 3 for n in names)
    rebuilt = st.unflatten(template, {k: v + 1 for k, v in flat.items()}, "state")
    assert type(rebuilt) is type(template) and type(rebuilt.encoder) is type(template.encoder)
    for k, v in st.flatten(rebuilt, "state").items():
        assert torch.equal(v, flat[k] + 1)
    # the backend's zero state has the PyTorch state's shapes and dtypes
    zeros = backend.init_state(3)
    assert list(zeros) == names
    for k in names:
        assert zeros[k].shape == flat[k].shape and zeros[k].dtype == flat[k].dtype
        assert not zeros[k].any()


@pytest.mark.parametrize("flush_frames", [16, 15, 9, 5, 4, 3, 1])
def test_step_batch2_any_length(model, backend, flush_frames):
    """Batch 2 (dynamic batch), one full chunk then a step of ``flush_frames`` hops (unpadded
    flush): the ONNX outputs and every new state equal PyTorch's step."""
    g = torch.Generator().manual_seed(flush_frames)
    state = model.init_stream(0.1 * torch.randn(2, 240, generator=g))
    onnx_state = st.flatten(state, "state")
    with torch.no_grad():
        for n in (model.chunk_samples, flush_frames * 160):
            a = 0.1 * torch.randn(2, n, generator=g)
            # the PyTorch step spelled out, as the reference of the exported one
            feats, fe = model.frontend.step(a, state.frontend)
            enc, es = model.encoder.step(feats, state.encoder)
            ctc = model.ctc_head(enc)
            state = type(state)(fe, es)
            onnx_enc, onnx_ctc, _, onnx_state = backend.step(onnx_state, [0, 1], a.numpy())
            assert onnx_enc.shape == enc.shape == (2, -(-n // 640), 48)
            assert float((onnx_enc - enc).abs().max()) < TOL
            assert float((onnx_ctc - ctc).abs().max()) < TOL
            for k, v in st.flatten(state, "state").items():
                assert onnx_state[k].dtype == v.dtype
                assert float((onnx_state[k].double() - v.double()).abs().max()) < TOL, k


def test_short_ssd_chunk_is_exact_on_the_flush(tmp_path):
    """A Mamba2 SSD chunk (2 frames) shorter than the attention chunk (4): the export raises it,
    so the traced graph stays exact for every flush length (1..3 encoder frames)."""
    torch.manual_seed(1)
    cfg = load_config(ROOT / "configs" / "tiny.toml", ["model.encoder.mamba2.chunk_size=2"])
    cfg.model.vocab_size = 16
    m = build_model(cfg.model).eval()
    be = OnnxStreamingBackend(export_onnx(m, tmp_path), threads=1)
    assert m.encoder.blocks[2].mixer.cfg.chunk_size == 2  # the caller's model is untouched
    g = torch.Generator().manual_seed(0)
    for frames in (1, 5, 9, 13):
        state = m.init_stream(1)
        onnx_state = st.flatten(state, "state")
        with torch.no_grad():
            for n in (m.chunk_samples, frames * 160):
                a = 0.1 * torch.randn(1, n, generator=g)
                enc, _, _, state = m.stream_step(a, state)
                onnx_enc, _, _, onnx_state = be.step(onnx_state, [0], a.numpy())
                assert onnx_enc.shape == enc.shape
                assert float((onnx_enc - enc).abs().max()) < TOL


def test_two_streams_of_different_lengths(model, onnx_dir):
    """Batched streams (select/scatter on the ONNX state) == each utterance's full forward."""
    rng = np.random.default_rng(1)
    xs = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (9000, 5555)]
    rec = load_onnx_recognizer(onnx_dir, num_streams=2, keep_encoder_output=True, threads=1)
    for i in range(0, 9000, 700):
        rec.accept_waveforms([x[i : i + 700] if i < len(x) else None for x in xs])
    rec.finalize_all()
    for s, x in enumerate(xs):
        with torch.no_grad():
            ref, _ = model(torch.from_numpy(x)[None], torch.tensor([len(x)]))
        enc = rec.encoder_output(s)
        assert enc.shape == ref[0].shape
        assert float((enc - ref[0]).abs().max()) < TOL


def test_prediction_and_joint(model, backend):
    g = torch.Generator().manual_seed(3)
    tokens = torch.tensor([16, 3, 0])  # blank (start symbol) and two tokens
    h, c = torch.randn(3, 1, 48, generator=g), torch.randn(3, 1, 48, generator=g)
    with torch.no_grad():
        out, new = model.prediction.step(tokens, PredictionState(h, c))
        o_out, o_new = backend.prediction.step(tokens, PredictionState(h, c))
        for a, b in ((o_out, out), (o_new.h, new.h), (o_new.c, new.c)):
            assert a.shape == b.shape and float((a - b).abs().max()) < TOL
        enc = torch.randn(3, 48, generator=g)
        j = backend.joint
        ref = model.joint.combine(model.joint.project_encoder(enc), model.joint.project_prediction(out))
        got = j.combine(j.project_encoder(enc), j.project_prediction(o_out))
        assert got.shape == (3, 17) and float((got - ref).abs().max()) < TOL
        # one encoder frame against a beam of predictions broadcasts, as in the beam decoder
        got1 = j.combine(j.project_encoder(enc[:1]), j.project_prediction(o_out))
        ref1 = model.joint.combine(model.joint.project_encoder(enc[:1]), model.joint.project_prediction(out))
        assert float((got1 - ref1).abs().max()) < TOL


def test_metadata_rebuilds_config(model, onnx_dir):
    for name in ("encoder_step.onnx", "predictor_step.onnx", "joint.onnx"):
        cfg, info = read_metadata(onnx_dir / name)
        assert cfg == model.cfg
        assert dataclasses.asdict(cfg) == dataclasses.asdict(model.cfg)
        assert info["hop"] == 160 and info["context"] == 240 and info["chunk_samples"] == 2560
        assert info["blank"] == 16 and info["state_names"] == state_names(model)
    saved = json.loads((onnx_dir / "config.json").read_text())["model"]
    assert model_config_from_dict(saved) == model.cfg
    assert (onnx_dir / "tokenizer.model").read_bytes() == (TOKENIZER / "tokenizer.model").read_bytes()
    rebuilt = build_model(cfg)  # a file alone rebuilds the model's shape
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in model.parameters())


def test_cli_export_verify_and_no_overwrite(model, tmp_path, capsys):
    weights = export_weights(model, tmp_path / "model", TOKENIZER)
    out = tmp_path / "onnx"
    assert main(["--checkpoint", str(weights), "--out", str(out), "--verify"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["full_chunks"] >= 20
    assert report["max_abs_diff"] <= TOL and report["tokens_equal"] and report["text_equal"]
    assert report["ok"] is True and report["num_tokens"] > 0
    before = (out / "joint.onnx").stat().st_mtime_ns
    assert main(["--checkpoint", str(weights), "--out", str(out)]) == 2  # refuses to overwrite (a user mistake: exit status 2)
    assert "--force" in capsys.readouterr().err
    assert (out / "joint.onnx").stat().st_mtime_ns == before


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="asrlib export"):
        OnnxStreamingBackend(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="encoder_step.onnx"):
        OnnxStreamingBackend(tmp_path)


def test_cli_export_refuses_a_folder_holding_user_files(model, tmp_path, capsys):
    """--out into a folder with the user's own config.json / tokenizer.model overwrites nothing."""
    weights = export_weights(model, tmp_path / "model", TOKENIZER)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text("my config\n")
    (out / "tokenizer.model").write_text("my tokenizer\n")
    assert main(["--checkpoint", str(weights), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("asrlib export: error: ") and str(out) in err[-1] and "--force" in err[-1]
    assert (out / "config.json").read_text() == "my config\n"
    assert (out / "tokenizer.model").read_text() == "my tokenizer\n"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "tokenizer.model"]


@pytest.mark.parametrize("context", [1, 3])
def test_stateless_prediction_exports_and_streams(tmp_path, capsys, context):
    """A stateless prediction network: its token-history state is an int64 ONNX input that starts as
    blanks (no columns at all for context 1, a bigram); onnxruntime's steps equal PyTorch's, and
    ``--verify`` decodes the same tokens."""
    torch.manual_seed(4)
    cfg = load_config(ROOT / "configs" / "tiny.toml", ["model.prediction.kind=stateless", f"model.prediction.context={context}"])
    cfg.model.vocab_size = 16
    model = build_model(cfg.model).eval()
    weights = export_weights(model, tmp_path / "model", TOKENIZER)
    assert main(["--checkpoint", str(weights), "--out", str(tmp_path / "onnx"), "--verify"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["tokens_equal"]
    pred = OnnxStreamingBackend(tmp_path / "onnx", threads=1).prediction
    state, ref_state = pred.init_state(2), model.prediction.init_state(2)
    assert torch.equal(state.history, ref_state.history)
    with torch.no_grad():
        for tokens in (torch.tensor([16, 16]), torch.tensor([3, 0]), torch.tensor([7, 7]), torch.tensor([1, 15])):
            out, state = pred.step(tokens, state)
            ref, ref_state = model.prediction.step(tokens, ref_state)
            assert float((out - ref).abs().max()) < TOL and torch.equal(state.history, ref_state.history)


@pytest.mark.parametrize("decoder", ["rnnt_beam", "ctc_beam"])
def test_beam_search_with_a_language_model_on_onnxruntime_equals_pytorch(model, onnx_dir, decoder):
    """A beam search with an n-gram model fused in, on the ONNX streaming step (and, for
    rnnt_beam, prediction network and joint, batched over the hypotheses), gives PyTorch's
    hypotheses and scores."""
    from asrlib.ngram import train_kneser_ney

    rng = np.random.default_rng(4)
    lm = train_kneser_ney([list(rng.integers(0, 16, rng.integers(1, 7))) for _ in range(50)],
                          [f"p{i}" for i in range(16)], 3)
    fusion = {"lm": lm, "lm_weight": 0.1, "token_bonus": 2.0}  # the bonus makes random weights emit
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (9000, 5555, 12000)]
    onnx = load_onnx_recognizer(onnx_dir, decoder=decoder, num_streams=2, beam_size=3, threads=1, **fusion)
    torch_rec = StreamingRecognizer(model, decoder=decoder, num_streams=2, beam_size=3, **fusion)
    got, want = onnx.recognize_many(waves, 700), torch_rec.recognize_many(waves, 700)
    assert [r.tokens for r in got] == [r.tokens for r in want]
    assert sum(len(r.tokens) for r in want) > 10
    np.testing.assert_allclose([r.score for r in got], [r.score for r in want], rtol=1e-4, atol=1e-3)


def test_a_phone_head_is_exported_as_a_third_output(tmp_path):
    """A model with a phone head (on block 2) exports its log-probs as ``phone_log_probs``, equal to
    PyTorch's streaming step; the lexicon goes beside the graphs; a model without one has no such
    output, and its backend reports no phones."""
    torch.manual_seed(0)
    cfg = load_config(ROOT / "configs" / "tiny.toml")
    cfg.model.vocab_size, cfg.model.phone_vocab_size, cfg.model.phone_block = 16, 5, 2
    m = build_model(cfg.model).eval()
    lexicon = tmp_path / "words.txt"
    lexicon.write_text("B B IY\nD D IY\nTWO T UW\n")  # B D IY T UW: 5 phones
    be = OnnxStreamingBackend(export_onnx(m, tmp_path / "onnx", TOKENIZER, lexicon), threads=1)
    assert be.has_phones and be.phone_vocab_size == 5
    assert (tmp_path / "onnx" / "lexicon.txt").read_text() == lexicon.read_text()
    state, onnx_state = m.init_stream(1), st.flatten(m.init_stream(1), "state")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n in (m.chunk_samples, m.chunk_samples, 7 * 160):
            a = 0.1 * torch.randn(1, n, generator=g)
            _, _, phones, state = m.stream_step(a, state)
            _, _, onnx_phones, onnx_state = be.step(onnx_state, [0], a.numpy())
            assert onnx_phones.shape == phones.shape and phones.shape[-1] == 6
            assert float((onnx_phones - phones).abs().max()) < TOL


def test_a_model_without_a_phone_head_exports_no_phone_output(backend, onnx_dir):
    assert not backend.has_phones and backend.phone_vocab_size == 0
    assert not (onnx_dir / "lexicon.txt").exists()
    state = backend.init_state(1)
    _, _, phones, _ = backend.step(state, [0], np.zeros((1, backend.constants.chunk_samples), np.float32))
    assert phones is None
