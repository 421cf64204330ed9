"""Pruned RNN-T: simple loss vs an explicit 4-D additive joint, prune ranges, pruned == full for a
wide band, pruned vs the full joint cut to the band, edge cases, config."""

import math

import pytest
import torch

from asrlib.config import ConfigError, JointConfig, ModelConfig, load_config
from asrlib.losses.lattice import lattice_posteriors
from asrlib.losses.rnnt import mask_padding, rnnt_loss
from asrlib.losses.rnnt_pruned import (band_fits, loss_scales, prune_ranges, pruned_lattice_log_probs,
                                       pruned_rnnt_loss, simple_lattice_log_probs)
from asrlib.losses.rnnt_ref import forward_variables_loop, prune_ranges_loop, pruned_lattice_log_probs_full
from asrlib.model.heads import Joint, SimpleProjections

V = 6
BLANK = V


def make_case(seed=0, b=3, t=7, u=4, d_enc=5, d_pred=4, hidden=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    joint = Joint(d_enc, d_pred, V, JointConfig(hidden=hidden)).to(dtype)
    simple = SimpleProjections(d_enc, d_pred, V).to(dtype)
    enc = torch.randn(b, t, d_enc, generator=g, dtype=dtype, requires_grad=True)
    pred = torch.randn(b, u + 1, d_pred, generator=g, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, V, (b, u), generator=g)
    enc_lengths = torch.tensor([t, max(t - 2, 1), max(t - 4, 1)])[:b]
    target_lengths = torch.tensor([u, max(u - 3, 0), max(u - 1, 0)])[:b]
    return joint, simple, enc, pred, targets, enc_lengths, target_lengths


def lattice_loop_losses(lb, ll, el, tl):
    """-log P per utterance by the node-by-node recursion (float64)."""
    out = []
    for i in range(lb.shape[0]):
        tb, ub = int(el[i]), int(tl[i])
        alpha = forward_variables_loop(lb[i : i + 1, :tb, : ub + 1], ll[i : i + 1, :tb, :ub])
        out.append(-(alpha[0, tb - 1, ub] + lb[i, tb - 1, ub].double()))
    return torch.stack(out)


def simple_reference(am, lm, targets, lm_scale=0.0, am_scale=0.0):
    """The additive joint written plainly: the whole (B, T, U+1, V+1) tensor, then gather."""
    logp = torch.log_softmax(am[:, :, None, :] + lm[:, None, :, :], dim=-1)  # (B, T, U+1, V+1)
    am_lp = torch.log_softmax(am, -1)[:, :, None, :].expand_as(logp)
    lm_lp = torch.log_softmax(lm, -1)[:, None, :, :].expand_as(logp)
    logp = (1 - lm_scale - am_scale) * logp + lm_scale * lm_lp + am_scale * am_lp
    u = targets.shape[1]
    lb = logp[..., BLANK]
    ll = logp[:, :, :u].gather(-1, targets[:, None, :, None].expand(-1, logp.shape[1], -1, 1)).squeeze(-1)
    return lb, ll


@pytest.mark.parametrize("scales", [(0.0, 0.0), (0.25, 0.0), (0.1, 0.2)])
def test_simple_loss_equals_explicit_4d_additive_joint(scales):
    joint, simple, enc, pred, targets, el, tl = make_case(seed=1)
    am, lm = simple(enc, pred)
    am = (am * 4).detach().requires_grad_(True)  # peakier logits test the max-subtraction
    lm = (lm * 4).detach().requires_grad_(True)
    lb, ll = simple_lattice_log_probs(am, lm, targets, BLANK, *scales)
    rb, rl = simple_reference(am, lm, targets, *scales)
    torch.testing.assert_close(lb, rb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ll, rl, rtol=1e-5, atol=1e-5)
    (simple_loss, _), _ = pruned_rnnt_loss(joint, lambda e, p: (am, lm), enc, pred, targets, el, tl, BLANK,
                                           lm_scale=scales[0], am_scale=scales[1], reduction="sum")
    ref = lattice_loop_losses(*mask_padding(rb, rl, el, tl), el, tl).sum()
    torch.testing.assert_close(simple_loss.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    g = torch.autograd.grad(simple_loss, [am, lm])
    r = torch.autograd.grad(ref, [am, lm])
    for a, b in zip(g, r):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-5)


def test_pruned_with_wide_band_equals_full_loss():
    joint, simple, enc, pred, targets, el, tl = make_case(seed=2)
    params = [enc, pred] + list(joint.parameters())
    full, n_full = rnnt_loss(joint, enc, pred, targets, el, tl, BLANK, reduction="none")
    for r in (targets.shape[1] + 1, targets.shape[1] + 3):
        (_, _), (pruned, n) = pruned_rnnt_loss(joint, simple, enc, pred, targets, el, tl, BLANK, prune_range=r,
                                               reduction="none")
        assert n == n_full == 0
        torch.testing.assert_close(pruned, full, rtol=1e-5, atol=1e-5)
        g = torch.autograd.grad(pruned.sum(), params, retain_graph=True)
        ref = torch.autograd.grad(full.sum(), params, retain_graph=True)
        for a, b in zip(g, ref):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("r", [2, 3])
def test_pruned_equals_full_joint_cut_to_the_band(r):
    joint, simple, enc, pred, targets, el, tl = make_case(seed=3, t=8, u=5, dtype=torch.float64)
    starts = torch.tensor([[0, 0, 1, 2, 2, 3, 3, 5 - r + 1], [0] * 8, [0, 1, 1, 2, 3, 5 - r, 5 - r, 5 - r]])
    starts = starts.clamp(max=torch.clamp(tl - r + 1, min=0)[:, None])
    lb, ll = pruned_lattice_log_probs(joint, enc, pred, targets, starts, r, BLANK)
    rb, rl = pruned_lattice_log_probs_full(joint, enc, pred, targets, starts, r, BLANK)
    torch.testing.assert_close(lb, rb)
    torch.testing.assert_close(ll, rl)


def test_pruned_loss_values_and_gradients_vs_band_reference():
    joint, simple, enc, pred, targets, el, tl = make_case(seed=4, t=9, u=6, dtype=torch.float64)
    r = 3
    params = [enc, pred] + list(joint.parameters()) + list(simple.parameters())
    (_, _), (pruned, n) = pruned_rnnt_loss(joint, simple, enc, pred, targets, el, tl, BLANK, prune_range=r,
                                           reduction="none")
    assert n == 0 and torch.isfinite(pruned).all()
    # reference: the same band (from the simple lattice), the full joint cut to it, the scalar recursion
    am, lm = simple(enc, pred)
    sb, sl = mask_padding(*simple_lattice_log_probs(am, lm, targets, BLANK), el, tl)
    _, ob, ol = lattice_posteriors(sb, sl, el, tl)
    starts = prune_ranges_loop(ob, ol, el, tl, r)
    rb, rl = pruned_lattice_log_probs_full(joint, enc, pred, targets, starts, r, BLANK)
    rb, rl = mask_padding(rb, rl, el, tl)
    finite = -1e3  # the loop's autograd is NaN through logaddexp(-inf, -inf); exp(-1e3) = 0 in float64
    ref = lattice_loop_losses(rb.clamp(min=finite), rl.clamp(min=finite), el, tl)
    torch.testing.assert_close(pruned, ref)
    g = torch.autograd.grad(pruned.sum(), params, allow_unused=True)
    gr = torch.autograd.grad(ref.sum(), params, allow_unused=True)
    for a, b in zip(g, gr):
        if b is None:  # the simple projections: the pruned loss does not reach them
            assert a is None or (a == 0).all()
        else:
            torch.testing.assert_close(a, b)


def check_band(starts, el, tl, r):
    for i in range(starts.shape[0]):
        tb, ub = int(el[i]), int(tl[i])
        s = starts[i, :tb].tolist()
        assert s[0] == 0 and s[-1] == max(ub - r + 1, 0) and s[-1] + r - 1 >= ub
        assert all(0 <= a <= max(ub - r + 1, 0) for a in s)
        assert all(0 <= b - a <= r - 1 for a, b in zip(s, s[1:]))


@pytest.mark.parametrize("seed", range(4))
def test_prune_ranges_properties_and_loop_reference(seed):
    g = torch.Generator().manual_seed(seed)
    b, t, u, r = 4, 12, 9, 3
    lb = -4 * torch.rand(b, t, u + 1, generator=g, dtype=torch.float64)
    ll = -4 * torch.rand(b, t, u, generator=g, dtype=torch.float64)
    el, tl = torch.tensor([12, 9, 5, 3]), torch.tensor([9, 2, 8, 0])
    lb, ll = mask_padding(lb, ll, el, tl)
    _, ob, ol = lattice_posteriors(lb, ll, el, tl)
    starts = prune_ranges(ob, ol, el, tl, r)
    torch.testing.assert_close(starts, prune_ranges_loop(ob, ol, el, tl, r))
    check_band(starts, el, tl, r)


def test_band_contains_a_known_alignment():
    """A peaked lattice whose one likely path is known: the band must hold every node of it."""
    g = torch.Generator().manual_seed(5)
    t, u, r = 30, 40, 4
    per_frame = torch.zeros(t, dtype=torch.long)  # tokens emitted in each frame, <= r - 1, summing to u
    while int(per_frame.sum()) < u:
        i = int(torch.randint(0, t, (1,), generator=g))
        if per_frame[i] < r - 1:
            per_frame[i] += 1
    lb = torch.full((1, t, u + 1), -30.0, dtype=torch.float64)
    ll = torch.full((1, t, u), -30.0, dtype=torch.float64)
    path, pos = [], 0
    for i in range(t):
        for _ in range(int(per_frame[i])):
            path.append((i, pos))
            ll[0, i, pos] = -0.01
            pos += 1
        path.append((i, pos))
        lb[0, i, pos] = -0.01
    el, tl = torch.tensor([t]), torch.tensor([u])
    _, ob, ol = lattice_posteriors(lb, ll, el, tl)
    starts = prune_ranges(ob, ol, el, tl, r)
    check_band(starts, el, tl, r)
    for i, p in path:
        assert starts[0, i] <= p < starts[0, i] + r, (i, p, starts[0, i].item())


def test_infeasible_empty_and_zero_frames_counted_never_nan():
    joint, simple, enc, pred, targets, _, _ = make_case(seed=6, t=5, u=6)
    r = 2
    el, tl = torch.tensor([5, 2, 0]), torch.tensor([6, 0, 3])  # 6 > 5 * (r - 1): no band fits
    assert band_fits(el, tl, r).tolist() == [False, True, False]
    (s, ns), (p, np_) = pruned_rnnt_loss(joint, simple, enc, pred, targets, el, tl, BLANK, prune_range=r,
                                         reduction="none")
    full, nf = rnnt_loss(joint, enc, pred, targets, el, tl, BLANK, reduction="none")
    assert ns == nf == 1 and np_ == 2  # the full and simple losses count only T_b = 0
    assert p[0] == 0 and p[2] == 0 and s[2] == 0 and torch.isfinite(s).all() and torch.isfinite(p).all()
    torch.testing.assert_close(p[1], full[1])  # U = 0: only blanks, any band holds them
    g = torch.autograd.grad((s + p).sum(), [enc, pred] + list(joint.parameters()) + list(simple.parameters()))
    assert all(torch.isfinite(x).all() for x in g)


def test_long_sequence_stays_finite():
    torch.manual_seed(7)
    t, u = 1000, 300
    joint, simple = Joint(8, 8, 8, JointConfig(hidden=16)), SimpleProjections(8, 8, 8)
    enc = (3 * torch.randn(1, t, 8)).requires_grad_(True)
    pred = (3 * torch.randn(1, u + 1, 8)).requires_grad_(True)
    targets = torch.randint(0, 8, (1, u))
    (s, _), (p, n) = pruned_rnnt_loss(joint, simple, enc, pred, targets, torch.tensor([t]), torch.tensor([u]), 8,
                                      reduction="sum")
    assert n == 0 and torch.isfinite(s) and torch.isfinite(p) and p.item() > 0
    (s + p).backward()
    assert torch.isfinite(enc.grad).all() and torch.isfinite(pred.grad).all()


def test_bad_input_is_a_clear_error():
    joint, simple, enc, pred, targets, el, tl = make_case(seed=8)
    bad = targets.clone()
    bad[0, 0] = BLANK
    with pytest.raises(ValueError, match="target ids"):
        pruned_rnnt_loss(joint, simple, enc, pred, bad, el, tl, BLANK)
    with pytest.raises(ValueError, match="pred must be"):
        pruned_rnnt_loss(joint, simple, enc, pred[:, :-1], targets, el, tl, BLANK)
    with pytest.raises(ValueError, match="enc_lengths"):
        pruned_rnnt_loss(joint, simple, enc, pred, targets, el + 5, tl, BLANK)
    with pytest.raises(ValueError, match="prune_range"):
        pruned_rnnt_loss(joint, simple, enc, pred, targets, el, tl, BLANK, prune_range=1)


def test_loss_scales_warm_up():
    assert loss_scales(0, 0.5, 100) == (1.0, 0.1)
    s, p = loss_scales(50, 0.5, 100)
    assert math.isclose(s, 0.75) and math.isclose(p, 0.55)
    assert loss_scales(100, 0.5, 100) == loss_scales(None, 0.5, 100) == (0.5, 1.0)
    assert loss_scales(3, 0.5, 0) == (0.5, 1.0)


def test_config_keys_are_checked():
    cfg = load_config(None, ["loss.rnnt=pruned", "model.joint.simple_projections=true", "loss.prune_range=4"])
    assert cfg.loss.rnnt == "pruned" and cfg.loss.prune_range == 4
    with pytest.raises(ConfigError, match="model.joint.simple_projections"):
        load_config(None, ["loss.rnnt=pruned"])
    with pytest.raises(ConfigError, match="loss.prune_range"):
        load_config(None, ["loss.prune_range=1"])
    with pytest.raises(ConfigError, match="loss.lm_scale"):
        load_config(None, ["loss.lm_scale=1.5"])
    with pytest.raises(ConfigError, match="loss.rnnt"):
        load_config(None, ["loss.rnnt=warp"])


def test_model_builds_and_reloads_simple_projections():
    from asrlib.model.hybrid import build_model

    cfg = ModelConfig(vocab_size=V)
    assert build_model(cfg).simple is None
    cfg.joint.simple_projections = True
    m = build_model(cfg)
    assert isinstance(m.simple, SimpleProjections)
    state = m.state_dict()
    assert any(k.startswith("simple.") for k in state)
    build_model(cfg).load_state_dict(state)  # the config alone rebuilds it


def test_pruned_never_allocates_a_4d_lattice_tensor():
    from test_rnnt import LargestTensor  # tests/losses/test_rnnt.py: the largest tensor any op produces

    torch.manual_seed(9)
    b, t, u, v, j, r = 2, 24, 40, 256, 16, 4
    joint, simple = Joint(4, 4, v, JointConfig(hidden=j)), SimpleProjections(4, 4, v)
    enc = torch.randn(b, t, 4, requires_grad=True)
    pred = torch.randn(b, u + 1, 4, requires_grad=True)
    targets = torch.randint(0, v, (b, u))
    with LargestTensor() as probe:
        (s, _), (p, _) = pruned_rnnt_loss(joint, simple, enc, pred, targets, torch.tensor([t, t // 2]),
                                          torch.tensor([u, u // 2]), v, prune_range=r)
        (s + p).backward()
    assert torch.isfinite(enc.grad).all()
    assert probe.max_numel <= b * t * r * (v + 1)  # the band's logits; the full one is (u + 1) / r = 10x that
