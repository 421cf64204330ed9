"""The chunked SSD scan against the plain recurrence, and the recurrence against a formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from asrlib.model.ssd import expand_groups, segsum, ssd_chunked, ssd_one_chunk, ssd_sequential

H, P, N = 4, 3, 5


def _inputs(t, groups, dtype=torch.float64, batch=2, seed=0, dt_shift=0.0, a_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, t, H, P, generator=g, dtype=dtype)
    dt = F.softplus(torch.randn(batch, t, H, generator=g, dtype=dtype) + dt_shift)
    A = -torch.rand(H, generator=g, dtype=dtype).add(0.1) * a_scale
    B = torch.randn(batch, t, groups, N, generator=g, dtype=dtype)
    C = torch.randn(batch, t, groups, N, generator=g, dtype=dtype)
    h0 = torch.randn(batch, H, P, N, generator=g, dtype=dtype)
    return x, dt, A, B, C, h0


def test_segsum_matches_loop():
    a = torch.randn(2, 6, dtype=torch.float64)
    out = segsum(a)
    for b in range(2):
        for i in range(6):
            for j in range(6):
                want = sum(a[b, k].item() for k in range(j + 1, i + 1)) if i >= j else -math.inf
                assert out[b, i, j].item() == pytest.approx(want, abs=1e-12)


def test_expand_groups_maps_head_to_group():
    m = torch.randn(1, 3, 2, N)
    e = expand_groups(m, 4)  # 4 heads, 2 groups: heads 0,1 -> group 0; heads 2,3 -> group 1
    for h in range(4):
        assert torch.equal(e[:, :, h], m[:, :, h // 2])


def test_sequential_matches_closed_form_scalar_ssm():
    # H = P = N = G = 1, constant dt, A, B = b, C = c, x = 1, initial state h0:
    # h_t = r^(t+1) h0 + dt b (1 - r^(t+1)) / (1 - r),  r = exp(dt A),  y_t = c h_t
    t, dt0, a, b, c, h0 = 30, 0.3, -0.7, 1.5, -2.0, 0.4
    x = torch.ones(1, t, 1, 1, dtype=torch.float64)
    dt = torch.full((1, t, 1), dt0, dtype=torch.float64)
    A = torch.tensor([a], dtype=torch.float64)
    B = torch.full((1, t, 1, 1), b, dtype=torch.float64)
    C = torch.full((1, t, 1, 1), c, dtype=torch.float64)
    init = torch.full((1, 1, 1, 1), h0, dtype=torch.float64)
    r = math.exp(dt0 * a)
    want = [c * (r ** (i + 1) * h0 + dt0 * b * (1 - r ** (i + 1)) / (1 - r)) for i in range(t)]
    for fn in (ssd_sequential, ssd_chunked):
        y, final = fn(x, dt, A, B, C, 8, init)
        assert torch.allclose(y.flatten(), torch.tensor(want, dtype=torch.float64), atol=1e-12)
        assert final.item() == pytest.approx(want[-1] / c, abs=1e-12)


@pytest.mark.parametrize("t", [64, 77, 5, 1])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("with_init", [False, True])
def test_chunked_matches_sequential_float64(t, groups, with_init):
    x, dt, A, B, C, h0 = _inputs(t, groups)
    init = h0 if with_init else None
    y_ref, s_ref = ssd_sequential(x, dt, A, B, C, 16, init)
    y, s = ssd_chunked(x, dt, A, B, C, 16, init)
    assert y.shape == (2, t, H, P) and s.shape == (2, H, P, N)
    assert torch.allclose(y, y_ref, atol=1e-10, rtol=0)
    assert torch.allclose(s, s_ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 200])
def test_any_chunk_size(chunk):
    x, dt, A, B, C, h0 = _inputs(50, 2, seed=1)
    y_ref, s_ref = ssd_sequential(x, dt, A, B, C, 0, h0)
    y, s = ssd_chunked(x, dt, A, B, C, chunk, h0)
    assert torch.allclose(y, y_ref, atol=1e-10, rtol=0)
    assert torch.allclose(s, s_ref, atol=1e-10, rtol=0)


def test_split_sequence_continues_from_final_state():
    # scanning [0, 30) then [30, 77) from the first half's final state == scanning all of it
    x, dt, A, B, C, _ = _inputs(77, 1, seed=2)
    y_all, s_all = ssd_sequential(x, dt, A, B, C)
    y1, s1 = ssd_chunked(x[:, :30], dt[:, :30], A, B[:, :30], C[:, :30], 16)
    y2, s2 = ssd_chunked(x[:, 30:], dt[:, 30:], A, B[:, 30:], C[:, 30:], 16, s1)
    assert torch.allclose(torch.cat([y1, y2], 1), y_all, atol=1e-10)
    assert torch.allclose(s2, s_all, atol=1e-10)


@pytest.mark.parametrize("groups", [1, 2])
def test_gradients_match_sequential(groups):
    base = _inputs(37, groups, seed=3)
    grads = []
    for fn in (ssd_sequential, ssd_chunked):
        leaves = [v.clone().requires_grad_() for v in base]
        x, dt, A, B, C, h0 = leaves
        y, s = fn(x, dt, A, B, C, 16, h0)
        w = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
        loss = (y * w).sum() + (s**2).sum()
        loss.backward()
        grads.append([v.grad for v in leaves])
    for name, g_ref, g in zip(["x", "dt", "A", "B", "C", "h0"], *grads):
        assert g is not None and torch.isfinite(g).all(), name
        assert torch.allclose(g, g_ref, atol=1e-9, rtol=1e-9), name


def test_float32_stable_under_strong_decay():
    # large dt * |A| makes segment sums very negative; the chunked float32 scan must stay
    # finite and close to the float64 reference
    x, dt, A, B, C, h0 = _inputs(200, 1, seed=4, dt_shift=2.0, a_scale=16.0)
    y_ref, s_ref = ssd_sequential(x, dt, A, B, C, 0, h0)
    y, s = ssd_chunked(*(v.float() for v in (x, dt, A, B, C)), 64, h0.float())
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    assert (y.double() - y_ref).abs().max() <= 1e-4 * y_ref.abs().max()
    assert (s.double() - s_ref).abs().max() <= 1e-4 * s_ref.abs().max().clamp(min=1.0)


def test_padding_frames_do_not_touch_final_state():
    # a T that is not a multiple of the chunk: the final state is that after frame T-1,
    # identical to the sequential loop stopped there (padding must neither decay nor feed)
    x, dt, A, B, C, _ = _inputs(17, 1, seed=5)
    _, s_ref = ssd_sequential(x, dt, A, B, C)
    _, s = ssd_chunked(x, dt, A, B, C, 16)
    assert torch.allclose(s, s_ref, atol=1e-12)


@pytest.mark.parametrize("t", [1, 2, 8, 32])
@pytest.mark.parametrize("groups", [1, 2])
def test_one_chunk_matches_sequential(t, groups):
    """The streaming step's single-chunk form: outputs and final state of the plain recurrence,
    from a non-zero entering state, in float64 and float32 (and float32 out for float32 in)."""
    x, dt, A, B, C, h0 = _inputs(t, groups, seed=4)
    y_ref, s_ref = ssd_sequential(x, dt, A, B, C, 0, h0)
    y, s = ssd_one_chunk(x, dt, A, B, C, h0)
    assert y.shape == (2, t, H, P) and s.shape == (2, H, P, N)
    assert torch.allclose(y, y_ref, atol=1e-10, rtol=0) and torch.allclose(s, s_ref, atol=1e-10, rtol=0)
    y32, s32 = ssd_one_chunk(*(v.float() for v in (x, dt, A, B, C, h0)))
    assert y32.dtype == torch.float32
    assert torch.allclose(y32.double(), y_ref, atol=1e-4) and torch.allclose(s32.double(), s_ref, atol=1e-4)
