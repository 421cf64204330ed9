"""The two prediction networks: the training forward against a per-position reference, and the
streaming step against the training forward (what decoding sees == what the loss saw).

References: for the stateless network, each output written out from its definition (the window of
the last ``context`` tokens, blanks before the start, a grouped convolution as a plain sum, ReLU);
for the LSTM, ``nn.LSTM`` run one token at a time with its state carried by hand.
"""

from __future__ import annotations

import pytest
import torch

from asrlib.config import ConfigError, PredictionConfig, load_config
from asrlib.model.heads import PredictionNet, StatelessPredictionNet, build_prediction

V = 10  # tokens 0..9, blank 10


def _targets() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, V, (3, 6), generator=g)


@pytest.mark.parametrize("context", [1, 2, 3])
@torch.no_grad()
def test_stateless_forward_is_the_window_formula(context):
    torch.manual_seed(1)
    net = StatelessPredictionNet(V, PredictionConfig(kind="stateless", embed_dim=8, context=context, dropout=0.0))
    y = _targets()
    out = net(y)  # (B, U + 1, E)
    assert out.shape == (3, 7, 8)
    emb, w, b = net.embed.weight, net.conv.weight, net.conv.bias  # w: (E, 4, context): groups of 4 channels
    for n in range(y.shape[0]):
        seq = [V] * context + y[n].tolist()  # the start symbol (blank), with blanks before it
        for u in range(y.shape[1] + 1):
            window = seq[u : u + context]  # the last `context` of: blanks, start symbol, tokens < u
            for o in range(8):
                g0 = (o // 4) * 4  # the group's first input channel
                ref = b[o] + sum(w[o, i, k] * emb[window[k], g0 + i] for i in range(4) for k in range(context))
                assert float(out[n, u, o]) == pytest.approx(max(float(ref), 0.0), abs=1e-5)


def _step_through(net, y: torch.Tensor) -> torch.Tensor:
    """Feed the start symbol then each token with ``step``: (B, U + 1, Dp)."""
    state = net.init_state(y.shape[0])
    outs = []
    for tokens in [torch.full((y.shape[0],), V)] + list(y.T):
        out, state = net.step(tokens, state)
        outs.append(out)
    return torch.stack(outs, dim=1)


@pytest.mark.parametrize("kind, context", [("lstm", 2), ("stateless", 1), ("stateless", 3)])
def test_step_equals_forward(kind, context):
    torch.manual_seed(2)
    net = build_prediction(V, PredictionConfig(kind=kind, embed_dim=8, hidden=12, context=context, dropout=0.0))
    y = _targets()
    with torch.no_grad():
        assert torch.allclose(_step_through(net, y), net(y), atol=1e-6)


def test_lstm_forward_is_the_lstm_run_token_by_token():
    torch.manual_seed(3)
    net = PredictionNet(V, PredictionConfig(embed_dim=8, hidden=12, dropout=0.0))
    y = _targets()
    with torch.no_grad():
        for n in range(y.shape[0]):
            hc, outs = None, []
            for tok in [V] + y[n].tolist():
                o, hc = net.lstm(net.embed(torch.tensor([[tok]])), hc)
                outs.append(o[0, 0])
            assert torch.allclose(net(y[n : n + 1])[0], torch.stack(outs), atol=1e-6)


def test_lstm_runs_in_float32_under_cpu_autocast():
    """bf16 autocast on a CPU leaves the LSTM in float32 (oneDNN builds a bf16 LSTM only with
    AVX-512): the forward and the step give the float32 network's outputs, the training forward
    has a gradient, and nothing fails on an AVX2 CPU."""
    torch.manual_seed(4)
    net = PredictionNet(V, PredictionConfig(embed_dim=8, hidden=12, dropout=0.0))
    y = _targets()
    with torch.no_grad():
        ref = net(y)
        ref_step, _ = net.step(y[:, 0], net.init_state(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(y)
        with torch.no_grad():
            step, state = net.step(y[:, 0], net.init_state(3))
    assert out.dtype == step.dtype == state.h.dtype == torch.float32
    assert torch.allclose(out, ref, atol=1e-6) and torch.allclose(step, ref_step, atol=1e-6)
    out.sum().backward()
    assert net.lstm.weight_ih_l0.grad is not None and torch.isfinite(net.lstm.weight_ih_l0.grad).all()


def test_stateless_state_is_the_token_history():
    net = StatelessPredictionNet(V, PredictionConfig(kind="stateless", embed_dim=8, context=3))
    state = net.init_state(2)
    assert state.history.tolist() == [[V, V], [V, V]]
    _, state = net.step(torch.tensor([4, 7]), state)
    _, state = net.step(torch.tensor([5, 1]), state)
    assert state.history.tolist() == [[4, 5], [7, 1]]


def test_stateless_config_is_checked(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[model.prediction]\nkind = "stateless"\ncontext = 0\n')
    with pytest.raises(ConfigError, match=r"c.toml: model.prediction: .*context >= 1"):
        load_config(path)
    path.write_text('[model.prediction]\nkind = "gru"\n')
    with pytest.raises(ConfigError, match=r"model.prediction.kind"):
        load_config(path)
