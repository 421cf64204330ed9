"""GQA + RoPE + chunk mask against hand-written references, and streaming == training."""

import math

import numpy as np
import pytest
import torch

from asrlib.config import AttentionConfig
from asrlib.model.attention import AttentionCache, GroupedQueryAttention
from asrlib.model.rope import apply_rope
from asrlib.model.state import concat, num_elements

D = 32


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make(n_heads=4, n_kv_heads=0, chunk=4, left=2, dtype=torch.float32, dropout=0.0):
    cfg = AttentionConfig(n_heads=n_heads, n_kv_heads=n_kv_heads, rope_base=100.0, dropout=dropout)
    return GroupedQueryAttention(D, cfg, chunk, left).to(dtype).eval()


# ----------------------------------------------------------------------------- references


def rope_complex(x, pos, base):
    """Independent RoPE: channel pairs (i, i + P/2) as complex numbers times exp(i * pos * w_i)."""
    P = x.shape[-1]
    w = base ** (-torch.arange(0, P, 2, dtype=torch.float64) / P)  # (P/2,)
    z = torch.complex(x[..., : P // 2].double(), x[..., P // 2 :].double())
    z = z * torch.exp(1j * pos.double()[:, None] * w[None, :])  # (T, P/2)
    return torch.cat((z.real, z.imag), -1).to(x.dtype)


def attention_ref(m, x, lengths, chunk, left):
    """Loop over batch, heads and queries; the mask is the definition, written out."""
    B, T, _ = x.shape
    H, K, P = m.n_heads, m.n_kv, m.head_dim
    base = m.cfg.rope_base
    Wq = m.q_proj.weight  # (H*P, D)
    Wk, Wv = m.kv_proj.weight[: K * P], m.kv_proj.weight[K * P :]  # (K*P, D) each
    out = torch.zeros(B, T, H * P, dtype=x.dtype)
    pos = torch.arange(T)
    for b in range(B):
        n = int(lengths[b])
        for h in range(H):
            g = h // (H // K)  # kv group of query head h
            q = rope_complex(x[b] @ Wq[h * P : (h + 1) * P].T, pos, base)  # (T, P)
            k = rope_complex(x[b] @ Wk[g * P : (g + 1) * P].T, pos, base)  # (T, P)
            v = x[b] @ Wv[g * P : (g + 1) * P].T  # (T, P)
            for t in range(n):  # padded queries are garbage: not compared
                ok = [s < n and t // chunk - left <= s // chunk <= t // chunk for s in range(T)]
                scores = (q[t] @ k.T) / math.sqrt(P)
                scores = scores.masked_fill(~torch.tensor(ok), float("-inf"))
                out[b, t, h * P : (h + 1) * P] = scores.softmax(-1) @ v
    return out @ m.out_proj.weight.T


def stream(m, x, chunk, state=None):
    state = state if state is not None else m.init_state(x.shape[0])
    ys = []
    for i in range(0, x.shape[1], chunk):
        y, state = m.step(x[:, i : i + chunk], state)
        ys.append(y)
    return torch.cat(ys, 1), state


# ----------------------------------------------------------------------------- RoPE


def test_rope_matches_complex_formula_and_preserves_norm():
    x = torch.randn(2, 3, 10, 8)  # (B, H, T, P)
    pos = torch.arange(10) * 7
    y = apply_rope(x, pos, 10000.0)
    ref = torch.stack([torch.stack([rope_complex(x[b, h], pos, 10000.0) for h in range(3)]) for b in range(2)])
    assert torch.allclose(y, ref, atol=1e-5)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    base = 10000.0
    q, k = torch.randn(1, 1, 12, 16), torch.randn(1, 1, 12, 16)
    pos = torch.arange(12)
    s0 = apply_rope(q, pos, base) @ apply_rope(k, pos, base).transpose(-1, -2)
    s1 = apply_rope(q, pos + 1000, base) @ apply_rope(k, pos + 1000, base).transpose(-1, -2)
    assert torch.allclose(s0, s1, atol=1e-5)
    # and they do depend on it: different relative offsets give different scores
    s2 = apply_rope(q, pos, base) @ apply_rope(k, pos + 3, base).transpose(-1, -2)
    assert not torch.allclose(s0, s2, atol=1e-3)


def test_rope_per_stream_positions():
    base = 10000.0
    x = torch.randn(2, 2, 5, 8)
    pos = torch.stack([torch.arange(5), torch.arange(5) + 37])  # (B, T)
    y = apply_rope(x, pos, base)
    assert torch.equal(y[0], apply_rope(x[:1], pos[0], base)[0])
    assert torch.equal(y[1], apply_rope(x[1:], pos[1], base)[0])


# ----------------------------------------------------------------------------- full forward


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_forward_matches_reference(n_kv_heads):
    m = make(n_heads=4, n_kv_heads=n_kv_heads, chunk=3, left=1)
    x = torch.randn(2, 11, D)
    lengths = torch.tensor([11, 7])
    y = m(x, lengths)
    ref = attention_ref(m, x, lengths, 3, 1)
    assert torch.allclose(y[0], ref[0], atol=1e-5)
    assert torch.allclose(y[1, :7], ref[1, :7], atol=1e-5)


def test_default_kv_heads_is_half():
    assert AttentionConfig(n_heads=4).kv_heads() == 2
    assert AttentionConfig(n_heads=8, n_kv_heads=8).kv_heads() == 8
    m = make(n_heads=4)
    assert m.n_kv == 2
    assert m.kv_proj.weight.shape == (2 * 2 * (D // 4), D)  # k and v, 2 groups of P = 8


def test_bad_head_counts_are_explained():
    with pytest.raises(ValueError, match="multiple of attention.n_kv_heads"):
        GroupedQueryAttention(D, AttentionConfig(n_heads=4, n_kv_heads=3), 4, 1)
    with pytest.raises(ValueError, match="divisible"):
        GroupedQueryAttention(30, AttentionConfig(n_heads=4), 4, 1)


@pytest.mark.parametrize("chunk,left", [(4, 0), (4, 1), (3, 2)])
def test_chunk_causality(chunk, left):
    m = make(chunk=chunk, left=left)
    T = 16
    x = torch.randn(1, T, D)
    y = m(x)
    for t in range(T):
        x2 = x.clone()
        x2[0, t] += 10.0
        changed = (m(x2) - y).abs().amax(-1)[0] > 1e-6  # (T,)
        c = t // chunk
        for u in range(T):
            cu = u // chunk
            # frame u reads frame t iff t's chunk is within u's window
            assert bool(changed[u]) == (cu - left <= c <= cu), (t, u)


def test_padding_does_not_change_valid_outputs():
    m = make(chunk=4, left=1)
    a = torch.randn(1, 9, D)
    x = torch.cat([a, 1e3 * torch.randn(1, 7, D)], 1)  # garbage after frame 9
    x = torch.cat([x, torch.randn(1, 16, D)], 0)  # (2, 16, D)
    y = m(x, torch.tensor([9, 16]))
    assert torch.allclose(y[0, :9], m(a)[0], atol=1e-5)
    assert torch.isfinite(y).all()


def test_padded_queries_with_no_valid_key_are_finite():
    m = make(chunk=2, left=0)
    y = m(torch.randn(2, 10, D), torch.tensor([3, 0]))  # late chunks see only padding
    assert torch.isfinite(y).all()


def test_dropout_only_in_training():
    m = make(dropout=0.5)
    x = torch.randn(1, 8, D)
    assert torch.equal(m(x), m(x))  # eval: deterministic
    ref = make(dropout=0.0)
    ref.load_state_dict(m.state_dict())
    assert torch.allclose(m(x), ref(x), atol=1e-6)
    m.train()
    assert not torch.allclose(m(x), m(x))


# ----------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("left", [0, 1, 2])
@pytest.mark.parametrize("chunk", [1, 4, 5])
def test_step_equals_forward(chunk, left):
    m = make(chunk=chunk, left=left)
    T = 3 * chunk + max(1, chunk - 2)  # a partial final chunk when chunk > 1
    x = torch.randn(2, T, D)
    ys, state = stream(m, x, chunk)
    assert (ys - m(x)).abs().max().item() <= 1e-5
    assert state.pos.tolist() == [T, T]


def test_step_equals_forward_float64():
    m = make(chunk=4, left=2, dtype=torch.float64)
    x = torch.randn(1, 19, D, dtype=torch.float64)
    ys, _ = stream(m, x, 4)
    assert (ys - m(x)).abs().max().item() <= 1e-12


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_any_sdpa_output_layout(monkeypatch, n_kv_heads):
    """CUDA's flash and memory-efficient kernels return (X, H, Tq, P) stored as (X, Tq, H, P), not
    contiguous (an H200 run found ``step`` failing on it); every path must accept that layout."""
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def strided_sdpa(*args, **kwargs):
        y = sdpa(*args, **kwargs)  # (X, H, Tq, P)
        y = y.transpose(1, 2).contiguous().transpose(1, 2)  # same values, the CUDA kernels' strides
        assert not y.is_contiguous() or y.shape[1] == 1 or y.shape[2] == 1
        return y

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", strided_sdpa)
    chunk, left, T = 3, 1, 11
    m = make(n_heads=4, n_kv_heads=n_kv_heads, chunk=chunk, left=left)
    x = torch.randn(2, T, D)
    ref = attention_ref(m, x, torch.tensor([T, T]), chunk, left)
    assert torch.allclose(m(x), ref, atol=1e-5)
    assert torch.allclose(m.forward_dense(x), ref, atol=1e-5)
    ys, _ = stream(m, x, chunk)
    assert torch.allclose(ys, ref, atol=1e-5)


def test_streams_at_different_positions_in_one_batch():
    chunk = 4
    m = make(chunk=chunk, left=1)
    xa, xb = torch.randn(1, 20, D), torch.randn(1, 16, D)
    # stream a starts one chunk earlier: prime it alone, then batch it with a fresh stream b
    ya0, sa = m.step(xa[:, :chunk], m.init_state(1))
    state = concat([sa, m.init_state(1)])
    assert state.pos.tolist() == [chunk, 0]
    outs = []
    for i in range(0, 16, chunk):
        xx = torch.cat([xa[:, chunk + i : 2 * chunk + i], xb[:, i : i + chunk]], 0)  # (2, Tc, D)
        y, state = m.step(xx, state)
        outs.append(y)
    y = torch.cat(outs, 1)  # (2, 16, D)
    ya = torch.cat([ya0, y[:1]], 1)
    assert (ya - m(xa)).abs().max().item() <= 1e-5
    assert (y[1:] - m(xb)).abs().max().item() <= 1e-5


def test_state_shape_is_constant_and_input_state_untouched():
    m = make(chunk=2, left=3)
    state = m.init_state(2)
    shapes = {k: v.shape for k, v in vars(state).items()}
    n = num_elements(state)
    for i in range(50):
        before = state.k.clone()
        _, new = m.step(torch.randn(2, 2, D), state)
        assert torch.equal(state.k, before)  # not mutated in place
        assert {k: v.shape for k, v in vars(new).items()} == shapes
        assert num_elements(new) == n
        state = new
    assert state.pos.tolist() == [100, 100]


def test_step_rejects_oversized_chunk():
    m = make(chunk=4)
    with pytest.raises(ValueError, match="1..4 frames"):
        m.step(torch.randn(1, 5, D), m.init_state(1))


class _Step(torch.nn.Module):
    """step with the state as flat tensors in and out, as ONNX sees it."""

    def __init__(self, attn):
        super().__init__()
        self.attn = attn

    def forward(self, x, k, v, pos):
        y, s = self.attn.step(x, AttentionCache(k, v, pos))
        return y, s.k, s.v, s.pos


@pytest.mark.parametrize("left", [0, 2])
def test_onnx_export_of_step_matches_onnxruntime(tmp_path, left):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    m = make(chunk=4, left=left)
    state = m.init_state(2)
    path = tmp_path / "attn_step.onnx"
    names = ["x", "k", "v", "pos"]
    with pytest.warns(DeprecationWarning):  # torch 2.13: TorchScript exporter still works
        torch.onnx.export(
            _Step(m), (torch.randn(2, 4, D), state.k, state.v, state.pos), str(path),
            dynamo=False, opset_version=17, input_names=names, output_names=["y", "k_out", "v_out", "pos_out"],
            dynamic_axes={"x": {0: "B", 1: "Tc"}, "k": {0: "B"}, "v": {0: "B"}, "pos": {0: "B"}},
        )
    sess = ort.InferenceSession(str(path))
    state = m.init_state(2)
    state.pos[1] = 4  # second stream one chunk ahead (its cache of zeros is masked either way)
    x = torch.randn(2, 11, D)
    for i in range(0, 11, 4):  # 4, 4, then a flush of 3 frames
        xx = x[:, i : i + 4]
        with torch.no_grad():
            y, new = m.step(xx, state)
        got = sess.run(None, {"x": xx.numpy(), "k": state.k.numpy(), "v": state.v.numpy(), "pos": state.pos.numpy()})
        np.testing.assert_allclose(got[0], y.numpy(), atol=1e-5)
        np.testing.assert_allclose(got[1], new.k.numpy(), atol=1e-5)
        np.testing.assert_array_equal(got[3], new.pos.numpy())
        state = new


# ----------------------------------------------------------------------------- chunked == dense


@pytest.mark.parametrize(
    "T,chunk,left",
    [(11, 3, 1), (16, 4, 0), (17, 4, 2), (5, 8, 2), (3, 8, 0), (13, 1, 3), (1, 1, 0), (30, 5, 10), (24, 6, 1)],
)
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_chunked_forward_equals_dense_values_and_gradients(T, chunk, left, n_kv_heads):
    """Values of every row (padded queries too) and gradients of x and of every parameter."""
    m = make(n_kv_heads=n_kv_heads, chunk=chunk, left=left, dtype=torch.float64)
    B = 4
    x = torch.randn(B, T, D, dtype=torch.float64)
    lengths = torch.randint(0, T + 1, (B,))
    lengths[0] = T  # one full row; the others ragged (0 frames allowed)
    g = torch.randn(B, T, D, dtype=torch.float64)  # upstream gradient on all rows
    results = []
    for fn in (m.forward, m.forward_dense):
        m.zero_grad(set_to_none=True)
        xg = x.clone().requires_grad_(True)
        y = fn(xg, lengths)
        (y * g).sum().backward()
        results.append((y.detach(), xg.grad, {n: p.grad for n, p in m.named_parameters()}))
    (y, gx, gp), (y_ref, gx_ref, gp_ref) = results
    assert torch.isfinite(y).all()
    assert torch.allclose(y, y_ref, atol=1e-12, rtol=0)
    assert torch.allclose(gx, gx_ref, atol=1e-11, rtol=0)
    for name in gp_ref:
        assert torch.allclose(gp[name], gp_ref[name], atol=1e-10, rtol=0), name


@pytest.mark.parametrize("T,chunk,left", [(11, 3, 1), (4, 8, 2)])
def test_chunked_forward_without_lengths_equals_dense(T, chunk, left):
    m = make(chunk=chunk, left=left, dtype=torch.float64)
    x = torch.randn(2, T, D, dtype=torch.float64)
    assert torch.allclose(m(x), m.forward_dense(x), atol=1e-12, rtol=0)


_MEMORY_PROBE = r"""
import json, resource, sys, torch
from asrlib.config import AttentionConfig
from asrlib.model.attention import GroupedQueryAttention
torch.set_num_threads(1)
T, D, H, C, LEFT = (int(a) for a in sys.argv[1:6])
m = GroupedQueryAttention(D, AttentionConfig(n_heads=H), C, LEFT).eval()
x = torch.randn(1, T, D)  # (B, T, D)
with torch.no_grad():
    m(x[:, : 4 * C])  # warm-up: kernels and allocator set up before the baseline
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    y = m(x, torch.tensor([T]))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_growth_bytes": 1024 * (after - before), "finite": bool(torch.isfinite(y).all())}))
"""


def test_long_input_attention_memory_is_linear_not_quadratic():
    """20 min of audio at 25 encoder frames/s with the demo model's attention (d 128, 4 heads,
    chunk 8, left 4). The dense path must at least hold its (T, T) bool mask (T^2 bytes,
    0.9 GB here; its (H, T, T) float32 scores would be 14.4 GB): the chunked forward must stay
    under a third of that mask alone (measured: 0.19 GB, growing linearly: 0.083 GB at T/2)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    T, D_, H, C, left = 30000, 128, 4, 8, 4
    dense_mask_bytes = T * T  # one (T, T) bool mask, the least the dense path allocates
    bound = dense_mask_bytes // 3
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(T), str(D_), str(H), str(C), str(left)],
        capture_output=True, text=True, env=env, check=True, timeout=600,
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["finite"]
    assert r["peak_growth_bytes"] < bound, (r, bound)


class _Forward(torch.nn.Module):
    def __init__(self, attn):
        super().__init__()
        self.attn = attn

    def forward(self, x, lengths):
        return self.attn(x, lengths)


def test_onnx_export_of_chunked_forward_with_dynamic_length(tmp_path):
    """Traced once at T = 13, run by onnxruntime at other lengths: no chunk count baked in."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    m = make(chunk=4, left=2)
    path = tmp_path / "attn_forward.onnx"
    with pytest.warns(DeprecationWarning):
        torch.onnx.export(
            _Forward(m), (torch.randn(2, 13, D), torch.tensor([13, 9])), str(path), dynamo=False,
            opset_version=17, input_names=["x", "lengths"], output_names=["y"],
            dynamic_axes={"x": {0: "B", 1: "T"}, "lengths": {0: "B"}},
        )
    sess = ort.InferenceSession(str(path))
    for T in (13, 3, 8, 22):
        x, lengths = torch.randn(2, T, D), torch.tensor([T, max(T - 4, 1)])
        (got,) = sess.run(None, {"x": x.numpy(), "lengths": lengths.numpy()})
        with torch.no_grad():
            ref = m.forward_dense(x, lengths)
        np.testing.assert_allclose(got, ref.numpy(), atol=1e-5)
