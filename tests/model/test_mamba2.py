"""Mamba2 mixer: forward vs a loop reference, streaming == forward, padding, init, ONNX, CUDA."""

from __future__ import annotations

import dataclasses
import functools
import io
import warnings

import pytest
import torch
import torch.nn.functional as F

from asrlib.config import Mamba2Config
from asrlib.model.mamba2 import Mamba2Cache, Mamba2Mixer
from asrlib.model.ssd import ssd_sequential

D_MODEL = 32
CFG = Mamba2Config(d_state=8, d_conv=4, expand=2, headdim=8, ngroups=2, chunk_size=16, backend="torch")


def _mixer(dtype=torch.float32, seed=0, **overrides) -> Mamba2Mixer:
    torch.manual_seed(seed)
    m = Mamba2Mixer(D_MODEL, dataclasses.replace(CFG, **overrides)).to(dtype).eval()
    with torch.no_grad():  # non-trivial D, conv bias and norm weight so every term is exercised
        m.D.uniform_(0.5, 1.5)
        m.conv1d.bias.normal_(0, 0.1)
        m.norm.weight.uniform_(0.5, 1.5)
    return m


def _reference_forward(m: Mamba2Mixer, u: torch.Tensor) -> torch.Tensor:
    """The mixer written out by hand: explicit conv taps, the sequential scan, the norm formula."""
    bsz, t, _ = u.shape
    E, Cv, H, G, N, W = m.d_inner, m.conv_dim, m.n_heads, m.ngroups, m.d_state, m.cfg.d_conv
    proj = u @ m.in_proj.weight.T
    z, xbc, dt = proj[..., :E], proj[..., E : E + Cv], proj[..., E + Cv :]
    padded = torch.cat([torch.zeros(bsz, W - 1, Cv, dtype=u.dtype), xbc], 1)
    w = m.conv1d.weight[:, 0, :]  # (Cv, W)
    conv = torch.stack([sum(padded[:, i + k] * w[:, k] for k in range(W)) for i in range(t)], 1)
    xbc = F.silu(conv + m.conv1d.bias)
    x = xbc[..., :E].reshape(bsz, t, H, -1)
    Bm = xbc[..., E : E + G * N].reshape(bsz, t, G, N)
    Cm = xbc[..., E + G * N :].reshape(bsz, t, G, N)
    dt = F.softplus(dt + m.dt_bias)
    y, _ = ssd_sequential(x, dt, -torch.exp(m.A_log), Bm, Cm)
    y = (y + m.D[:, None] * x).reshape(bsz, t, E) * F.silu(z)
    y = y / torch.sqrt((y**2).mean(-1, keepdim=True) + m.norm.eps) * m.norm.weight
    return y @ m.out_proj.weight.T


def _stream(m, u, chunk):
    state, outs = m.init_state(u.shape[0], "cpu"), []
    for i in range(0, u.shape[1], chunk):
        y, state = m.step(u[:, i : i + chunk], state)
        outs.append(y)
    return torch.cat(outs, 1), state


@pytest.mark.parametrize("t", [1, 5, 16, 37])
def test_forward_matches_loop_reference(t):
    m = _mixer(torch.float64)
    u = torch.randn(2, t, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(m(u), _reference_forward(m, u), atol=1e-10)


@pytest.mark.parametrize("chunk", [1, 5, 16, 50])
def test_step_matches_forward_float32(chunk):
    m = _mixer()
    u = torch.randn(3, 50, D_MODEL)
    with torch.no_grad():
        full = m(u, torch.full((3,), 50))
        streamed, _ = _stream(m, u, chunk)
    assert (streamed - full).abs().max() <= 1e-5 * max(1.0, full.abs().max().item())


@pytest.mark.parametrize("chunk", [1, 7])
def test_step_matches_forward_float64_ngroups1(chunk):
    m = _mixer(torch.float64, ngroups=1)
    u = torch.randn(2, 40, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        streamed, state = _stream(m, u, chunk)
        assert torch.allclose(streamed, m(u), atol=1e-10)
    assert state.ssm.dtype == torch.float64


def test_padding_does_not_leak():
    m = _mixer()
    lengths = torch.tensor([30, 18])
    u = torch.randn(2, 30, D_MODEL)
    u[1, 18:] = 1e3 * torch.randn(12, D_MODEL)  # wild values in the padding
    with torch.no_grad():
        y = m(u, lengths)
        alone = m(u[1:, :18])
    assert torch.allclose(y[1, :18], alone[0], atol=1e-5)


def test_state_bounded_over_100_single_frame_steps():
    m = _mixer()
    state = m.init_state(2, "cpu")
    shapes = {"conv": (2, m.conv_dim, CFG.d_conv - 1), "ssm": (2, m.n_heads, CFG.headdim, CFG.d_state)}
    assert state.ssm.dtype == torch.float32 and not state.conv.any() and not state.ssm.any()
    with torch.no_grad():
        for _ in range(100):
            _, state = m.step(torch.randn(2, 1, D_MODEL), state)
            assert tuple(state.conv.shape) == shapes["conv"] and tuple(state.ssm.shape) == shapes["ssm"]
    assert torch.isfinite(state.ssm).all()


def test_step_does_not_mutate_input_state():
    m = _mixer()
    state = m.init_state(1, "cpu")
    state = Mamba2Cache(conv=torch.randn_like(state.conv), ssm=torch.randn_like(state.ssm))
    before = Mamba2Cache(conv=state.conv.clone(), ssm=state.ssm.clone())
    with torch.no_grad():
        for tc in (1, 6):
            m.step(torch.randn(1, tc, D_MODEL), state)
    assert torch.equal(state.conv, before.conv) and torch.equal(state.ssm, before.ssm)


def test_initialisation_ranges_and_no_weight_decay():
    cfg = dataclasses.replace(CFG, dt_min=0.01, dt_max=0.05, a_init_min=2.0, a_init_max=4.0)
    m = Mamba2Mixer(64, cfg)  # 16 heads
    dt0 = F.softplus(m.dt_bias.detach())
    assert (dt0 >= 0.01 - 1e-6).all() and (dt0 <= 0.05 + 1e-6).all()
    A = -torch.exp(m.A_log.detach())
    assert (A <= -2.0 + 1e-6).all() and (A >= -4.0 - 1e-6).all()
    assert torch.equal(m.D.detach(), torch.ones(16))
    for p in (m.dt_bias, m.A_log, m.D):
        assert getattr(p, "_no_weight_decay", False)
    assert not getattr(m.in_proj.weight, "_no_weight_decay", False)
    E, G, N, H = 128, 2, 8, 16
    assert m.in_proj.weight.shape == (2 * E + 2 * G * N + H, 64)


def test_dt_floor_applies():
    m = Mamba2Mixer(D_MODEL, dataclasses.replace(CFG, dt_min=1e-6, dt_max=2e-6, dt_init_floor=1e-3))
    assert torch.allclose(F.softplus(m.dt_bias.detach()), torch.full((8,), 1e-3), rtol=1e-4)


def test_bad_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="headdim"):
        Mamba2Mixer(30, CFG)  # 60 is not a multiple of 8
    with pytest.raises(ValueError, match="ngroups"):
        Mamba2Mixer(D_MODEL, dataclasses.replace(CFG, ngroups=3))


def test_backends_on_cpu():
    u = torch.randn(1, 9, D_MODEL)
    auto, torch_only = _mixer(backend="auto"), _mixer(backend="torch")
    with torch.no_grad():
        assert torch.equal(auto(u), torch_only(u))  # "auto" on CPU is the PyTorch scan
    with pytest.raises(RuntimeError, match="backend 'cuda'"):
        _mixer(backend="cuda")(u)


def test_gradients_flow_to_all_parameters():
    m = _mixer().train()
    m(torch.randn(2, 20, D_MODEL)).pow(2).mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("tc", [4, 1])
def test_onnx_export_of_step(tc):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    m = _mixer()

    class Step(torch.nn.Module):
        def __init__(self, mixer):
            super().__init__()
            self.mixer = mixer

        def forward(self, u, conv, ssm):
            y, s = self.mixer.step(u, Mamba2Cache(conv=conv, ssm=ssm))
            return y, s.conv, s.ssm

    s0 = m.init_state(2, "cpu")
    state = Mamba2Cache(conv=torch.randn_like(s0.conv), ssm=torch.randn_like(s0.ssm))
    u = torch.randn(2, tc, D_MODEL)
    buf = io.BytesIO()
    torch.onnx.export(  # the TorchScript exporter (dynamo=False) works with torch 2.13
        Step(m), (u, state.conv, state.ssm), buf, dynamo=False, opset_version=18,
        input_names=["u", "conv", "ssm"], output_names=["y", "conv_out", "ssm_out"],
    )
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"u": u.numpy(), "conv": state.conv.numpy(), "ssm": state.ssm.numpy()})
    with torch.no_grad():
        y, s = m.step(u, state)
    for a, b in zip(got, (y, s.conv, s.ssm)):
        assert abs(a - b.numpy()).max() <= 1e-5 * max(1.0, b.abs().max().item())


def _mamba_ssm_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import mamba_ssm  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.cuda
@pytest.mark.skipif(not _mamba_ssm_available(), reason="needs a CUDA GPU and the mamba-ssm package")
def test_cuda_fused_scan_matches_pure_torch():
    torch.manual_seed(0)
    cfg = dataclasses.replace(CFG, d_state=16, headdim=16, chunk_size=32)
    fused = Mamba2Mixer(64, dataclasses.replace(cfg, backend="cuda")).cuda().eval()
    pure = Mamba2Mixer(64, dataclasses.replace(cfg, backend="torch")).cuda().eval()
    pure.load_state_dict(fused.state_dict())
    u = torch.randn(2, 77, 64, device="cuda")
    with torch.no_grad():
        a, b = fused(u), pure(u)
    assert (a - b).abs().max().item() <= 1e-3 * max(1.0, b.abs().max().item())


def test_bf16_autocast_keeps_scan_and_state_in_float32():
    m = _mixer()
    u = torch.randn(2, 24, D_MODEL)
    with torch.no_grad():
        ref = m(u)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(u)
            ys, state = _stream(m, u, 5)
    assert torch.isfinite(y).all()
    assert (y.float() - ref).abs().max() <= 0.05 * ref.abs().max()  # bf16 round-off only
    assert (ys.float() - ref).abs().max() <= 0.05 * ref.abs().max()
    assert state.ssm.dtype == torch.float32 and state.conv.dtype == torch.float32


def test_auto_backend_warns_once_naming_a_broken_mamba_ssm(monkeypatch):
    """On a GPU, "auto" with a mamba_ssm that fails to import falls back to the PyTorch scan,
    but says so once, naming the import error (it used to be silent)."""
    import asrlib.model.mamba2 as mod

    monkeypatch.setattr(mod, "_import_mamba_ssm_scan", lambda: (None, "OSError: libcudart.so.12: cannot open"))
    mod._warn_fallback_once.cache_clear()
    monkeypatch.setattr(mod, "_warn_fallback_once", functools.lru_cache(maxsize=None)(mod._warn_fallback_once.__wrapped__))

    class OnGPU:  # stands in for a CUDA tensor: only .is_cuda is read
        is_cuda = True

    m = _mixer(backend="auto")
    with pytest.warns(RuntimeWarning, match="libcudart.so.12") as record:
        assert m._use_cuda_kernel(OnGPU()) is False
        assert m._use_cuda_kernel(OnGPU()) is False
    assert len([w for w in record if "mamba_ssm" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # on CPU: no warning, the PyTorch scan is the plan
        assert m._use_cuda_kernel(torch.zeros(1)) is False
