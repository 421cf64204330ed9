"""Conv module (causal depthwise, streaming) and SwiGLU FFN against plain references; RMSNorm."""

import pytest
import torch
import torch.nn.functional as F_

from asrlib.config import ConvModuleConfig
from asrlib.model.conv import ConvModule
from asrlib.model.ffn import SwiGLU, swiglu_hidden
from asrlib.model.norm import RMSNorm

B, T, D = 2, 23, 12


def make_conv(norm="layernorm", k=5):
    torch.manual_seed(0)
    m = ConvModule(D, ConvModuleConfig(kernel_size=k, norm=norm), dropout=0.1).eval()
    with torch.no_grad():  # non-trivial norm parameters
        m.norm.weight.uniform_(0.5, 1.5)
        if getattr(m.norm, "bias", None) is not None:
            m.norm.bias.uniform_(-0.5, 0.5)
    return m


def conv_reference(m: ConvModule, x: torch.Tensor) -> torch.Tensor:
    """Slow loop: y[t, d] = bias[d] + sum_i w[d, i] * g[t - (k-1) + i, d], g = 0 before time 0."""
    a, b = (x @ m.pw_in.weight.T + m.pw_in.bias).chunk(2, dim=-1)
    g = a * torch.sigmoid(b)  # GLU
    k = m.k
    w, bias = m.depthwise.weight[:, 0], m.depthwise.bias  # (D, k), (D,)
    y = torch.zeros_like(g)
    for t in range(g.shape[1]):
        for i in range(k):
            src = t - (k - 1) + i
            if src >= 0:
                y[:, t] += w[:, i] * g[:, src]
        y[:, t] += bias
    if isinstance(m.norm, torch.nn.LayerNorm):
        y = F_.layer_norm(y, (D,), m.norm.weight, m.norm.bias, m.norm.eps)
    else:
        y = y / torch.sqrt((y * y).mean(-1, keepdim=True) + m.norm.eps) * m.norm.weight
    y = y * torch.sigmoid(y)  # SiLU
    return y @ m.pw_out.weight.T + m.pw_out.bias


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("k", [1, 5])
def test_conv_matches_loop(norm, k):
    m = make_conv(norm, k)
    x = torch.randn(B, T, D)
    with torch.no_grad():
        torch.testing.assert_close(m(x, torch.tensor([T, T])), conv_reference(m, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("chunk", [1, 3, 7, T])
def test_conv_step_equals_forward(norm, chunk):
    m = make_conv(norm)
    x = torch.randn(B, T, D)
    with torch.no_grad():
        full = m(x, torch.tensor([T, T]))
        state, outs = m.init_state(B), []
        for s in range(0, T, chunk):
            y, new = m.step(x[:, s : s + chunk], state)
            assert new.x.shape == state.x.shape == (B, D, 4)
            outs.append(y)
            state = new
    stream = torch.cat(outs, 1)
    assert (stream - full).abs().max() <= 1e-5 * full.abs().max()


def test_conv_step_does_not_mutate_state():
    m = make_conv()
    state = m.init_state(B)
    state.x.normal_()
    before = state.x.clone()
    m.step(torch.randn(B, 3, D), state)
    assert torch.equal(state.x, before)


def test_conv_causal():
    m = make_conv(k=5)
    x = torch.randn(1, T, D)
    with torch.no_grad():
        base = m(x, None)
        for t in range(T):
            x2 = x.clone()
            x2[0, t] += 1.0
            changed = ((m(x2, None) - base).abs().amax(-1)[0] > 1e-6).tolist()
            assert changed == [t <= j <= t + 4 for j in range(T)], f"frame {t}"


def test_swiglu_hidden():
    assert swiglu_hidden(144, 4.0) == 384  # round(384.0) = 384
    assert swiglu_hidden(100, 4.0) == 272  # round(266.67) = 267 -> 272
    assert swiglu_hidden(768, 4.0) == 2048
    assert swiglu_hidden(64, 2.5) == 112  # round(106.67) = 107 -> 112


def test_swiglu_formula():
    torch.manual_seed(0)
    f = SwiGLU(D, 24, dropout=0.5).eval()
    assert all(lin.bias is None for lin in (f.gate, f.up, f.down))
    x = torch.randn(B, T, D)
    wg, wu, wd = f.gate.weight, f.up.weight, f.down.weight
    g = x @ wg.T
    ref = ((g / (1 + torch.exp(-g))) * (x @ wu.T)) @ wd.T
    torch.testing.assert_close(f(x), ref, atol=1e-5, rtol=1e-5)
    f.train()
    torch.manual_seed(1)
    assert not torch.allclose(f(x), ref)  # dropout active in training


def test_rmsnorm_formula():
    n = RMSNorm(D, eps=1e-6)
    with torch.no_grad():
        n.weight.uniform_(0.5, 2.0)
    x = torch.randn(3, 5, D, dtype=torch.float64)
    n = n.double()
    ref = torch.stack([v / (v.pow(2).sum() / D + 1e-6) ** 0.5 for v in x.reshape(-1, D)]).reshape(x.shape) * n.weight
    torch.testing.assert_close(n(x), ref)
    assert n.weight.requires_grad
    torch.testing.assert_close(n.float()(x.float()).double(), ref, atol=1e-5, rtol=1e-5)  # float32: the fused path
    xb = x.float().bfloat16()
    got = n.float()(xb)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), ref, atol=0.02 * ref.abs().max().item(), rtol=0)
