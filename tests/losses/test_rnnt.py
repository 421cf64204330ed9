"""Native RNN-T loss vs a brute-force double loop written plainly here (full joint, scalar recursion)."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from asrlib.config import JointConfig
from asrlib.losses.rnnt import forward_variables, rnnt_loss, rnnt_loss_any, rnnt_loss_torchaudio, torchaudio_available
from asrlib.losses.rnnt_ref import forward_variables_loop, rnnt_loss_full_joint
from asrlib.model.heads import Joint

V = 5
BLANK = V


def make_case(seed=0, b=3, t=7, u=4, d_enc=6, d_pred=4, hidden=8, dtype=torch.float32, ragged=True):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    joint = Joint(d_enc, d_pred, V, JointConfig(hidden=hidden, activation="tanh")).to(dtype)
    enc = torch.randn(b, t, d_enc, generator=g, dtype=dtype, requires_grad=True)
    pred = torch.randn(b, u + 1, d_pred, generator=g, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, V, (b, u), generator=g)
    if ragged:
        enc_lengths = torch.tensor([t, max(t - 2, 1), max(t - 4, 1)])[:b]
        target_lengths = torch.tensor([u, max(u - 3, 0), max(u - 1, 0)])[:b]
        # padded target positions hold arbitrary legal ids
        for i in range(b):
            targets[i, target_lengths[i]:] = torch.randint(0, V, (u - int(target_lengths[i]),), generator=g)
    else:
        enc_lengths = torch.full((b,), t)
        target_lengths = torch.full((b,), u)
    return joint, enc, pred, targets, enc_lengths, target_lengths


def brute_force_losses(joint, enc, pred, targets, enc_lengths, target_lengths):
    """Per-utterance -log P(y|x): the textbook double loop over (t, u), one utterance at a time."""
    losses = []
    for b in range(enc.shape[0]):
        tb, ub = int(enc_lengths[b]), int(target_lengths[b])
        logp = torch.log_softmax(joint(enc[b : b + 1, :tb], pred[b : b + 1, : ub + 1])[0].double(), dim=-1)
        alpha = {}
        for t in range(tb):
            for u in range(ub + 1):
                if t == 0 and u == 0:
                    alpha[t, u] = torch.zeros((), dtype=torch.float64)
                    continue
                terms = []
                if t > 0:
                    terms.append(alpha[t - 1, u] + logp[t - 1, u, BLANK])
                if u > 0:
                    terms.append(alpha[t, u - 1] + logp[t, u - 1, targets[b, u - 1]])
                alpha[t, u] = torch.logsumexp(torch.stack(terms), dim=0)
        losses.append(-(alpha[tb - 1, ub] + logp[tb - 1, ub, BLANK]))
    return torch.stack(losses)


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("t_chunk", [1, 2, 0, 7])
def test_matches_brute_force_loss_and_gradients(t_chunk):
    joint, enc, pred, targets, el, tl = make_case(seed=1)
    params = [enc, pred] + list(joint.parameters())
    ref = brute_force_losses(joint, enc, pred, targets, el, tl)
    ref_grads = grads(ref.sum(), params)
    loss, n_inf = rnnt_loss(joint, enc, pred, targets, el, tl, BLANK, reduction="none", t_chunk=t_chunk)
    assert n_inf == 0 and loss.dtype == torch.float32 and loss.shape == (3,)
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    for g, r in zip(grads(loss.sum(), params), ref_grads):
        torch.testing.assert_close(g.double(), r.double(), rtol=1e-4, atol=1e-5)


def test_reductions():
    joint, enc, pred, targets, el, tl = make_case(seed=2)
    ref = brute_force_losses(joint, enc, pred, targets, el, tl).detach().float()
    s, _ = rnnt_loss(joint, enc, pred, targets, el, tl, BLANK, reduction="sum")
    mb, _ = rnnt_loss(joint, enc, pred, targets, el, tl, BLANK, reduction="mean_batch")
    mt, _ = rnnt_loss(joint, enc, pred, targets, el, tl, BLANK, reduction="mean_tokens")
    torch.testing.assert_close(s, ref.sum(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mb, ref.sum() / 3, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mt, ref.sum() / tl.sum().float(), rtol=1e-5, atol=1e-5)


def test_known_value_single_frame_empty_transcript():
    joint, enc, pred, targets, _, _ = make_case(seed=3, b=1, t=1, u=0, ragged=False)
    loss, _ = rnnt_loss(joint, enc, pred, targets, torch.tensor([1]), torch.tensor([0]), BLANK, reduction="sum")
    expected = -torch.log_softmax(joint(enc, pred)[0, 0, 0], dim=-1)[BLANK]
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-6, atol=1e-6)


def test_empty_transcript_is_sum_of_blanks():
    joint, enc, pred, targets, _, _ = make_case(seed=4, b=1, t=5, u=0, ragged=False)
    loss, _ = rnnt_loss(joint, enc, pred, targets, torch.tensor([5]), torch.tensor([0]), BLANK, reduction="sum")
    expected = -torch.log_softmax(joint(enc, pred)[0, :, 0], dim=-1)[:, BLANK].sum()
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-5)


def test_vectorised_recursion_matches_loop():
    g = torch.Generator().manual_seed(5)
    lp_blank = -torch.rand(2, 6, 5, generator=g, dtype=torch.float64) * 3
    lp_label = -torch.rand(2, 6, 4, generator=g, dtype=torch.float64) * 3
    torch.testing.assert_close(forward_variables(lp_blank, lp_label), forward_variables_loop(lp_blank, lp_label))
    # one path by hand: alpha[1, 1] = logaddexp(b[0,0] + l[1,0], l[0,0] + b[0,1])
    a11 = math.log(
        math.exp(lp_blank[0, 0, 0] + lp_label[0, 1, 0]) + math.exp(lp_label[0, 0, 0] + lp_blank[0, 0, 1])
    )
    assert abs(forward_variables(lp_blank, lp_label)[0, 1, 1].item() - a11) < 1e-12


def test_full_joint_reference_agrees():
    joint, enc, pred, targets, el, tl = make_case(seed=6)
    ref = brute_force_losses(joint, enc, pred, targets, el, tl).detach()
    for rec in ("vectorised", "loop"):
        loss, _ = rnnt_loss_full_joint(joint, enc, pred, targets, el, tl, BLANK, reduction="none", recursion=rec)
        torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)


def test_gradcheck_float64():
    joint, enc, pred, targets, el, tl = make_case(seed=7, b=2, t=3, u=2, d_enc=3, d_pred=2, hidden=4,
                                                   dtype=torch.float64)
    el, tl = torch.tensor([3, 2]), torch.tensor([2, 1])

    def f(e, p):
        return rnnt_loss(joint, e, p, targets, el, tl, BLANK, reduction="sum", t_chunk=2)[0].double()

    assert torch.autograd.gradcheck(f, (enc, pred), eps=1e-6, atol=1e-5)


def test_padding_does_not_affect_valid_utterances():
    joint, enc, pred, targets, el, tl = make_case(seed=8)
    base, _ = rnnt_loss(joint, enc, pred, targets, el, tl, BLANK, reduction="none")
    enc2, pred2, targets2 = enc.detach().clone(), pred.detach().clone(), targets.clone()
    enc2[1, int(el[1]):] = 100.0  # garbage in the padded frames
    pred2[1, int(tl[1]) + 1:] = -50.0  # and the padded prediction steps
    targets2[1, int(tl[1]):] = (targets2[1, int(tl[1]):] + 1) % V
    enc2.requires_grad_(True)
    loss2, _ = rnnt_loss(joint, enc2, pred2, targets2, el, tl, BLANK, reduction="none")
    torch.testing.assert_close(loss2, base)
    (g,) = torch.autograd.grad(loss2.sum(), enc2)
    assert torch.all(g[1, int(el[1]):] == 0)


def test_infeasible_zero_frames_counted_not_nan():
    joint, enc, pred, targets, _, _ = make_case(seed=9)
    el, tl = torch.tensor([7, 0, 3]), torch.tensor([4, 2, 0])
    loss, n_inf = rnnt_loss(joint, enc, pred, targets, el, tl, BLANK, reduction="none")
    assert n_inf == 1 and loss[1].item() == 0.0 and torch.isfinite(loss).all()
    keep = [0, 2]
    ref = brute_force_losses(joint, enc[keep], pred[keep], targets[keep], el[keep], tl[keep]).detach()
    torch.testing.assert_close(loss[[0, 2]].double(), ref, rtol=1e-5, atol=1e-5)
    (g,) = torch.autograd.grad(loss.sum(), enc)
    assert torch.isfinite(g).all()
    raw, n_raw = rnnt_loss(joint, enc, pred, targets, el, tl, BLANK, reduction="none", zero_infinity=False)
    assert n_raw == 1 and math.isinf(raw[1].item())


def test_batch_without_frames_is_all_infeasible():
    joint, enc, pred, targets, _, _ = make_case(seed=16, t=0)
    loss, n_inf = rnnt_loss(joint, enc, pred, targets, torch.zeros(3, dtype=torch.long), torch.tensor([4, 0, 2]), BLANK)
    assert n_inf == 3 and loss.item() == 0.0


def test_bad_target_id_is_a_clear_error():
    joint, enc, pred, targets, el, tl = make_case(seed=10)
    targets[0, 0] = BLANK
    with pytest.raises(ValueError, match="target ids"):
        rnnt_loss(joint, enc, pred, targets, el, tl, BLANK)


def test_stability_long_sequence():
    torch.manual_seed(11)
    t, u = 1000, 300
    joint = Joint(8, 8, 8, JointConfig(hidden=16))
    enc = (3 * torch.randn(1, t, 8)).requires_grad_(True)
    pred = (3 * torch.randn(1, u + 1, 8)).requires_grad_(True)
    targets = torch.randint(0, 8, (1, u))
    loss, n_inf = rnnt_loss(joint, enc, pred, targets, torch.tensor([t]), torch.tensor([u]), 8, reduction="sum")
    assert n_inf == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert torch.isfinite(enc.grad).all() and torch.isfinite(pred.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in joint.parameters())


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op produces."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in torch.utils._pytree.tree_leaves(out):
            if isinstance(x, torch.Tensor):
                self.max_numel = max(self.max_numel, x.numel())
        return out


@pytest.mark.parametrize("impl", ["native", "full_joint"])
def test_native_never_allocates_the_full_joint_tensor(impl):
    torch.manual_seed(12)
    b, t, u, v = 2, 24, 40, 512
    joint = Joint(4, 4, v, JointConfig(hidden=4))
    enc = torch.randn(b, t, 4, requires_grad=True)
    pred = torch.randn(b, u + 1, 4, requires_grad=True)
    targets = torch.randint(0, v, (b, u))
    el, tl = torch.tensor([t, t // 2]), torch.tensor([u, u // 2])
    full = b * t * (u + 1) * (v + 1)
    with LargestTensor() as probe:
        if impl == "native":
            loss, _ = rnnt_loss(joint, enc, pred, targets, el, tl, v, t_chunk=2)
        else:
            loss, _ = rnnt_loss_full_joint(joint, enc, pred, targets, el, tl, v)
        loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(enc.grad).all()
    if impl == "native":  # one slice of 2 frames: 1/12 of the full tensor
        assert probe.max_numel <= full // 12
    else:  # the probe does see the full tensor when it is built
        assert probe.max_numel >= full


def test_bf16_autocast_keeps_float32_loss():
    joint, enc, pred, targets, el, tl = make_case(seed=13)
    ref, _ = rnnt_loss(joint, enc, pred, targets, el, tl, BLANK, reduction="none")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = rnnt_loss(joint, enc, pred, targets, el, tl, BLANK, reduction="none", t_chunk=2)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref.detach(), rtol=5e-2, atol=5e-2)
    (g,) = torch.autograd.grad(loss.sum(), enc)
    assert torch.isfinite(g).all()


def test_backend_dispatch():
    joint, enc, pred, targets, el, tl = make_case(seed=14)
    a, _ = rnnt_loss_any(joint, enc, pred, targets, el, tl, BLANK, backend="native")
    b, _ = rnnt_loss(joint, enc, pred, targets, el, tl, BLANK)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="backend"):
        rnnt_loss_any(joint, enc, pred, targets, el, tl, BLANK, backend="warp")


@pytest.mark.skipif(not torchaudio_available(), reason="torchaudio is not installed")
def test_torchaudio_equality():
    joint, enc, pred, targets, el, tl = make_case(seed=15)
    a, _ = rnnt_loss_torchaudio(joint, enc, pred, targets, el, tl, BLANK, reduction="none")
    b, _ = rnnt_loss(joint, enc, pred, targets, el, tl, BLANK, reduction="none")
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
