"""Frontend: STFT vs numpy, mel bank vs a loop, lengths, streaming == full, ONNX."""

import math

import numpy as np
import pytest
import torch

from asrlib.config import FrontendConfig
from asrlib.model.frontend import _MAG_TINY, Frontend


def np_stft_mag(x: np.ndarray, win: int, hop: int) -> np.ndarray:
    """Independent reference: explicit framing, periodic Hann, np.fft.rfft -> (F, T)."""
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)  # periodic Hann
    n_frames = 0 if len(x) < win else (len(x) - win) // hop + 1
    frames = np.stack([x[t * hop : t * hop + win] * window for t in range(n_frames)])
    return np.abs(np.fft.rfft(frames, n=win, axis=-1)).T


def mel_bank_loop(n_freq, n_mels, sr, f_min, f_max):
    """Triangular HTK mel bank, one bin and one filter at a time."""
    f_max = f_max or sr / 2
    mel = lambda f: 2595 * math.log10(1 + f / 700)  # noqa: E731
    imel = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    lo, hi = mel(f_min), mel(f_max)
    edges = [imel(lo + (hi - lo) * i / (n_mels + 1)) for i in range(n_mels + 2)]
    n_fft = 2 * (n_freq - 1)
    w = np.zeros((n_mels, n_freq))
    for m in range(n_mels):
        a, b, c = edges[m], edges[m + 1], edges[m + 2]
        for k in range(n_freq):
            f = k * sr / n_fft
            if a < f <= b:
                w[m, k] = (f - a) / (b - a)
            elif b < f < c:
                w[m, k] = (c - f) / (c - b)
    return w


@pytest.fixture
def fe():
    torch.manual_seed(0)
    return Frontend(FrontendConfig(n_mels=40)).eval()


def test_sizes(fe):
    assert (fe.win_length, fe.hop_length, fe.n_freq) == (400, 160, 201)
    fe8 = Frontend(FrontendConfig(sample_rate=8000, win_ms=32, hop_ms=8))
    assert (fe8.win_length, fe8.hop_length, fe8.n_freq) == (256, 64, 129)


def test_stft_magnitude_matches_numpy(fe):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(4000)
    ref = np_stft_mag(x, 400, 160)
    got = fe.magnitude(torch.tensor(x, dtype=torch.float32)[None])[0].numpy()
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-6 * np.abs(ref).max(), rtol=0)


def test_mel_bank_matches_loop():
    for sr, n_mels, f_min, f_max in [(16000, 80, 0.0, 0.0), (16000, 40, 20.0, 7600.0), (8000, 23, 0.0, 0.0)]:
        fe = Frontend(FrontendConfig(sample_rate=sr, n_mels=n_mels, f_min=f_min, f_max=f_max))
        ref = mel_bank_loop(fe.n_freq, n_mels, sr, f_min, f_max)
        np.testing.assert_allclose(fe.mel.weight.detach().numpy(), ref, atol=1e-6)
        assert (ref.max(axis=1) > 0).all()  # no empty filter at these sizes


def test_log_mel_formula(fe):
    x = torch.randn(1, 2000)
    feats, _ = fe(x, torch.tensor([2000]))
    mag = np_stft_mag(x[0].double().numpy(), 400, 160)  # (F, T)
    ref = np.log(fe.mel.weight.detach().double().numpy() @ mag + 1e-6).T  # (T, M)
    np.testing.assert_allclose(feats[0].detach().numpy(), ref, atol=1e-3)


def with_negative_lobes(rectifier: str) -> Frontend:
    """A 40-mel frontend whose filters are the mel bank minus the next filter up (band contrasts, as
    training leaves many): some outputs go below 0 (the top filter stays a plain triangle)."""
    torch.manual_seed(0)
    fe = Frontend(FrontendConfig(n_mels=40, mel_rectifier=rectifier)).eval()
    with torch.no_grad():
        w = fe.mel.weight.clone()
        fe.mel.weight[:-1] -= w[1:]
    return fe


@pytest.mark.parametrize("rectifier", ["clamp", "abs"])
def test_log_mel_formula_with_negative_filter_outputs(rectifier):
    fe = with_negative_lobes(rectifier)
    x = torch.randn(1, 2000)
    feats, _ = fe(x, torch.tensor([2000]))
    mel = fe.mel.weight.detach().double().numpy() @ np_stft_mag(x[0].double().numpy(), 400, 160)  # (M, T)
    assert (mel < 0).mean() > 0.2  # the case under test: many outputs below 0
    rectified = np.abs(mel) if rectifier == "abs" else np.maximum(mel, 0.0)
    np.testing.assert_allclose(feats[0].detach().numpy(), np.log(rectified + 1e-6).T, atol=1e-3)


@pytest.mark.parametrize("rectifier, learns", [("clamp", False), ("abs", True)])
def test_a_filter_below_zero_learns_only_with_abs(rectifier, learns):
    """A filter with only negative weights: clamped, its output is log(eps) and its weights get no
    gradient; through |x| they do."""
    fe = Frontend(FrontendConfig(n_mels=20, mel_rectifier=rectifier))
    with torch.no_grad():
        fe.mel.weight[3] = -fe.mel.weight[3].abs() - 0.01
    feats, _ = fe(torch.randn(2, 3000), torch.tensor([3000, 3000]))
    (feats * torch.randn_like(feats)).sum().backward()
    assert bool((fe.mel.weight.grad[3] != 0).any()) is learns
    assert bool((fe.mel.weight.grad[4] != 0).any())  # a plain triangle learns either way


def test_abs_rectifier_streams_exactly():
    fe = with_negative_lobes("abs")
    win, hop = fe.win_length, fe.hop_length
    x = torch.randn(2, win - hop + 30 * hop)
    full, _ = fe(x, torch.tensor([x.shape[1]] * 2))
    state, pos, outs = fe.init_state(x[:, : win - hop]), win - hop, []
    for n in [1, 4, 16, 9]:
        y, state = fe.step(x[:, pos : pos + n * hop], state)
        outs.append(y)
        pos += n * hop
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=0)


def test_output_lengths_all(fe):
    s = torch.arange(0, 1001)
    got = fe.output_lengths(s)
    ref = [0 if n < 400 else (n - 400) // 160 + 1 for n in range(1001)]
    assert got.tolist() == ref
    for n in (0, 1, 399, 400, 559, 560, 1000):  # forward produces exactly that many frames
        feats, fl = fe(torch.randn(2, n), torch.tensor([n, n]))
        assert feats.shape == (2, ref[n], 40) and fl.tolist() == [ref[n]] * 2


def test_padded_batch_valid_frames(fe):
    a, b = torch.randn(1, 3000), torch.randn(1, 1700)
    batch = torch.zeros(2, 3000)
    batch[0], batch[1, :1700] = a[0], b[0]
    feats, fl = fe(batch, torch.tensor([3000, 1700]))
    fb, _ = fe(b, torch.tensor([1700]))
    assert fl[1] == fb.shape[1]
    torch.testing.assert_close(feats[1, : fl[1]], fb[0], atol=1e-4, rtol=0)


def test_trainable_flag():
    assert Frontend(FrontendConfig(trainable_mel=True)).mel.weight.requires_grad
    frozen = Frontend(FrontendConfig(trainable_mel=False))
    assert not frozen.mel.weight.requires_grad
    assert [n for n, p in frozen.named_parameters() if p.requires_grad] == []
    assert "dft_kernel" not in dict(frozen.named_parameters())


def test_gradient_finite_on_silence():
    fe = Frontend(FrontendConfig(n_mels=20))
    x = torch.zeros(1, 1000, requires_grad=True)
    feats, _ = fe(x, torch.tensor([1000]))
    feats.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(fe.mel.weight.grad).all()


def test_stream_equals_full(fe):
    torch.manual_seed(1)
    win, hop = fe.win_length, fe.hop_length
    x = torch.randn(2, win - hop + 40 * hop)
    full, _ = fe(x, torch.tensor([x.shape[1]] * 2))
    state = fe.init_state(x[:, : win - hop])
    pos, outs = win - hop, []
    for n in [1, 3, 16, 0, 1, 3, 16]:
        chunk = x[:, pos : pos + n * hop]
        y, new = fe.step(chunk, state)
        assert y.shape == (2, n, 40)
        assert new.samples.shape == state.samples.shape  # fixed-size state
        outs.append(y)
        state, pos = new, pos + n * hop
    assert pos == x.shape[1]
    stream = torch.cat(outs, 1)
    assert stream.shape == full.shape
    assert (stream - full).abs().max() <= 1e-5 * full.abs().max()


def test_stream_equals_full_band_limited_quiet_signal(fe):
    """High bins of 8 kHz-resampled speech are ~round-off: the log must not amplify it."""
    t = torch.arange(16000, dtype=torch.float64) / 16000
    x = (0.3 * torch.sin(2 * math.pi * 440 * t) + 0.1 * torch.sin(2 * math.pi * 3000 * t)).float()[None]
    x[:, 6000:9000] *= 1e-4  # a near-silent stretch
    full, _ = fe(x, torch.tensor([16000]))
    state, pos, outs = fe.init_state(x[:, :240]), 240, []
    while pos + 160 <= 16000:
        y, state = fe.step(x[:, pos : pos + 160], state)
        outs.append(y)
        pos += 160
    assert (torch.cat(outs, 1) - full).abs().max() <= 1e-5 * full.abs().max()


def test_autocast_does_not_change_features(fe):
    x = torch.randn(2, 3000)
    ref, _ = fe(x, torch.tensor([3000, 3000]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = fe(x, torch.tensor([3000, 3000]))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref)


def test_zero_init_equals_left_padded_full(fe):
    win, hop = fe.win_length, fe.hop_length
    x = torch.randn(1, 10 * hop)
    y, _ = fe.step(x, fe.init_state(1))
    padded = torch.cat([torch.zeros(1, win - hop), x], 1)
    full, _ = fe(padded, torch.tensor([padded.shape[1]]))
    torch.testing.assert_close(y, full, atol=1e-4, rtol=0)


def test_step_rejects_partial_hop(fe):
    with pytest.raises(ValueError, match="multiple of the hop"):
        fe.step(torch.randn(1, 100), fe.init_state(1))


@pytest.mark.parametrize("lobes", ["mel bank", "clamp", "abs"])
def test_onnx_export_matches(fe, tmp_path, lobes):
    """The exported frontend = PyTorch's: the mel bank, and filters with negative lobes through
    each rectifier."""
    fe = fe if lobes == "mel bank" else with_negative_lobes(lobes)
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    x, lengths = torch.randn(2, 4000), torch.tensor([4000, 3000])
    path = tmp_path / "fe.onnx"
    batch, samples = torch.export.Dim("B"), torch.export.Dim("S", min=fe.win_length)
    torch.onnx.export(fe, (x, lengths), str(path), input_names=["audio", "lengths"],
                      output_names=["feats", "frame_lengths"], dynamo=True, verbose=False,
                      dynamic_shapes={"audio": {0: batch, 1: samples}, "lengths": {0: batch}})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (4000, 1234, 400):  # other lengths and batch sizes than at export
        xi, li = torch.randn(3, n), torch.tensor([n, n - 1, 5])
        got, got_len = sess.run(None, {"audio": xi.numpy(), "lengths": li.numpy()})
        ref, ref_len = fe(xi, li)
        np.testing.assert_allclose(got, ref.detach().numpy(), atol=1e-4)
        assert got_len.tolist() == ref_len.tolist()


# --------------------------------------------------------------------------- normalisation


def test_feature_stats_are_mean_and_std_over_all_frames():
    from asrlib.model.frontend import feature_stats

    fe = Frontend(FrontendConfig(n_mels=40, normalize=True)).eval()
    waves = [torch.randn(n) * s for n, s in [(4000, 0.1), (2600, 1.0), (300, 1.0), (9000, 0.01)]]
    mean, std = feature_stats(fe, waves)
    frames = []  # reference: the log-mel formula from numpy's STFT, frames of all waves stacked
    for w in waves:
        if len(w) >= 400:
            mag = np_stft_mag(w.double().numpy(), 400, 160)
            frames.append(np.log(fe.mel.weight.detach().double().numpy() @ mag + 1e-6).T)
    ref = np.concatenate(frames)
    np.testing.assert_allclose(mean.numpy(), ref.mean(0), atol=1e-4)
    np.testing.assert_allclose(std.numpy(), ref.std(0), atol=1e-4)


def test_normalize_standardises_each_bin_and_streams_exactly():
    torch.manual_seed(2)
    raw = Frontend(FrontendConfig(n_mels=40)).eval()
    fe = Frontend(FrontendConfig(n_mels=40, normalize=True)).eval()
    fe.load_state_dict(raw.state_dict(), strict=False)
    mean, std = torch.randn(40), torch.rand(40) + 0.5
    fe.set_normalization(mean, std)
    x = torch.randn(1, 400 - 160 + 24 * 160)
    want = (raw(x, torch.tensor([x.shape[1]]))[0] - mean) / std
    got = fe(x, torch.tensor([x.shape[1]]))[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    state, outs = fe.init_state(x[:, :240]), []
    for pos in range(240, x.shape[1], 8 * 160):
        y, state = fe.step(x[:, pos : pos + 8 * 160], state)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), got, atol=1e-5, rtol=1e-5)
    assert {"feat_mean", "feat_std"} <= set(fe.state_dict())  # saved with the weights
    with pytest.raises(ValueError, match="normalize = false"):
        raw.set_normalization(mean, std)


def test_export_dft_matches_fft(monkeypatch):
    """The ONNX export computes the STFT as a matrix product, PyTorch by FFT: both against numpy."""
    fe = Frontend(FrontendConfig(sample_rate=16000))
    x = torch.randn(2, 16000, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 0.1
    ref = np.stack([np_stft_mag(v.numpy(), fe.win_length, fe.hop_length) for v in x])  # (B, F, T)
    fft = fe._magnitude64(x).transpose(1, 2).numpy()
    monkeypatch.setattr(torch.jit, "is_tracing", lambda: True)
    matmul = fe._magnitude64(x).transpose(1, 2).numpy()
    tiny = math.sqrt(_MAG_TINY)  # the floor inside the square root moves a magnitude by at most this
    np.testing.assert_allclose(fft, ref, rtol=1e-9, atol=tiny)
    np.testing.assert_allclose(matmul, ref, rtol=1e-9, atol=tiny)
    np.testing.assert_allclose(fft, matmul, rtol=1e-9, atol=1e-12)
