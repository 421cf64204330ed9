"""Lattice forward-backward (analytic gradients) vs autograd through the node-by-node loop."""

import math

import torch

from asrlib.losses.lattice import LatticeLogLik, backward_variables, lattice_loss, lattice_posteriors
from asrlib.losses.rnnt import forward_variables, mask_padding
from asrlib.losses.rnnt_ref import forward_variables_loop


def random_tables(seed, b=3, t=6, u=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    lb = (-3 * torch.rand(b, t, u + 1, generator=g, dtype=dtype)).requires_grad_(True)
    ll = (-3 * torch.rand(b, t, u, generator=g, dtype=dtype)).requires_grad_(True)
    return lb, ll


def loop_losses(lb, ll, el, tl):
    """Reference: -(alpha + final blank) from the scalar double loop, one utterance at a time."""
    out = []
    for i in range(lb.shape[0]):
        tb, ub = int(el[i]), int(tl[i])
        if tb == 0:
            out.append(torch.tensor(float("inf"), dtype=torch.float64))
            continue
        alpha = forward_variables_loop(lb[i : i + 1, :tb, : ub + 1], ll[i : i + 1, :tb, :ub])
        out.append(-(alpha[0, tb - 1, ub] + lb[i, tb - 1, ub].double()))
    return torch.stack(out)


def beta_loop(lb, ll, tb, ub):
    """beta by hand for one utterance: (T_b, U_b+1) float64."""
    beta = [[None] * (ub + 1) for _ in range(tb)]
    for t in reversed(range(tb)):
        for u in reversed(range(ub + 1)):
            terms = []
            if t == tb - 1 and u == ub:
                terms.append(lb[t, u])
            if t < tb - 1:
                terms.append(beta[t + 1][u] + lb[t, u])
            if u < ub:
                terms.append(beta[t][u + 1] + ll[t, u])
            beta[t][u] = torch.logsumexp(torch.stack(terms), 0) if terms else torch.tensor(float("-inf"))
    return torch.tensor([[float(x) for x in row] for row in beta], dtype=torch.float64)


def test_loss_and_gradients_equal_autograd_through_loop_ragged():
    lb, ll = random_tables(0)
    el, tl = torch.tensor([6, 4, 2]), torch.tensor([4, 1, 3])  # U_b > T_b in the last one
    mb, ml = mask_padding(lb, ll, el, tl)
    loss, occ_b, occ_l = lattice_loss(mb, ml, el, tl)
    ref = loop_losses(lb, ll, el, tl)
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-12, atol=1e-12)
    g = torch.autograd.grad(loss.sum(), [lb, ll])
    r = torch.autograd.grad(ref.sum(), [lb, ll])
    for a, b in zip(g, r):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # the posteriors are the gradients of log Z, and each frame-step is crossed once:
    # the blank posteriors of an utterance sum to T_b, its label posteriors to U_b
    torch.testing.assert_close(occ_b.sum((1, 2)), el.double())
    torch.testing.assert_close(occ_l.sum((1, 2)), tl.double())


def test_beta_matches_hand_loop_and_log_z():
    lb, ll = random_tables(1, b=2, t=5, u=3)
    el, tl = torch.tensor([5, 3]), torch.tensor([3, 2])
    mb, ml = mask_padding(lb.detach(), ll.detach(), el, tl)
    beta = backward_variables(mb, ml, el, tl)
    for i in range(2):
        tb, ub = int(el[i]), int(tl[i])
        torch.testing.assert_close(beta[i, :tb, : ub + 1], beta_loop(mb[i], ml[i], tb, ub))
        assert torch.isneginf(beta[i, tb:]).all() and torch.isneginf(beta[i, :, ub + 1 :]).all()
    log_z, _, _ = lattice_posteriors(mb, ml, el, tl)
    torch.testing.assert_close(log_z, beta[:, 0, 0])
    torch.testing.assert_close(log_z, -loop_losses(mb, ml, el, tl))


def test_alpha_matches_loop():
    lb, ll = random_tables(2)
    torch.testing.assert_close(forward_variables(lb, ll), forward_variables_loop(lb, ll))


def test_gradcheck_float64():
    lb, ll = random_tables(3, b=2, t=4, u=3)
    el, tl = torch.tensor([4, 3]), torch.tensor([3, 2])

    def f(a, b):
        a, b = mask_padding(a, b, el, tl)
        return LatticeLogLik.apply(a, b, el, tl)[0]

    assert torch.autograd.gradcheck(f, (lb, ll), eps=1e-6, atol=1e-7)


def test_minus_inf_nodes_as_in_loop():
    """A band of -inf nodes (what the pruned loss produces) gives the loop's values and gradients."""
    lb, ll = random_tables(4, b=2, t=6, u=4)
    band = torch.zeros(2, 6, 5, dtype=torch.bool)
    for t in range(6):
        s = min(t, 2)  # window of 3 tokens, start 0,1,2,2,2,2
        band[:, t, s : s + 3] = True
    nb = torch.where(band, lb, float("-inf"))
    nl = torch.where(band[..., :-1], ll, float("-inf"))
    el, tl = torch.tensor([6, 6]), torch.tensor([4, 4])
    loss, _, _ = lattice_loss(nb, nl, el, tl)
    # the loop's autograd gives NaN through logaddexp(-inf, -inf): -1000 is as good as -inf here
    ref = loop_losses(torch.where(band, lb, -1e3), torch.where(band[..., :-1], ll, -1e3), el, tl)
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss, ref.detach())
    g = torch.autograd.grad(loss.sum(), [lb, ll], retain_graph=True)
    r = torch.autograd.grad(ref.sum(), [lb, ll])
    for a, b in zip(g, r):
        torch.testing.assert_close(a, b)
        assert torch.isfinite(a).all()
    assert (g[0][~band] == 0).all() and (g[1][~band[..., :-1]] == 0).all()


def test_empty_targets_zero_frames_and_padding():
    lb, ll = random_tables(5, b=3, t=4, u=0)
    el, tl = torch.tensor([4, 0, 2]), torch.tensor([0, 0, 0])
    mb, ml = mask_padding(lb, ll, el, tl)
    loss, _, _ = lattice_loss(mb, ml, el, tl)
    assert math.isinf(loss[1].item())
    torch.testing.assert_close(loss[[0, 2]], -torch.stack([lb[0, :, 0].sum(), lb[2, :2, 0].sum()]).detach())
    (g,) = torch.autograd.grad(torch.where(torch.isinf(loss), 0.0, loss).sum(), lb)
    assert torch.isfinite(g).all() and (g[1] == 0).all() and (g[2, 2:] == 0).all()


def test_long_lattice_stays_finite():
    g = torch.Generator().manual_seed(6)
    t, u = 1000, 300
    lb = torch.log_softmax(torch.randn(1, t, u + 1, 2, generator=g), -1)[..., 0].requires_grad_(True)
    ll = (-8 * torch.rand(1, t, u, generator=g)).requires_grad_(True)
    loss, occ_b, occ_l = lattice_loss(lb, ll, torch.tensor([t]), torch.tensor([u]))
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all() and loss.item() > 0
    loss.sum().backward()
    assert torch.isfinite(lb.grad).all() and torch.isfinite(ll.grad).all()
    assert abs(occ_b.sum().item() - t) < 1e-6 and abs(occ_l.sum().item() - u) < 1e-6
