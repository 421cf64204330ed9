"""CTC wrapper vs torch's F.ctc_loss called directly (time-first), plus precision and infeasible counts."""

import pytest
import torch
import torch.nn.functional as F

from asrlib.losses.ctc import ctc_loss, ctc_min_frames

V = 6
BLANK = V


def make_case(seed=0, b=4, t=12, u=5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, V + 1, generator=g, requires_grad=True)
    targets = torch.randint(0, V, (b, u), generator=g)
    lengths = torch.tensor([t, t - 3, t - 1, t - 5])[:b]
    target_lengths = torch.tensor([u, 2, u - 1, 0])[:b]
    return logits, lengths, targets, target_lengths


def torch_reference(log_probs, lengths, targets, target_lengths):
    return F.ctc_loss(log_probs.transpose(0, 1), targets, lengths, target_lengths, blank=BLANK, reduction="none")


@pytest.mark.parametrize("reduction", ["none", "sum", "mean_batch", "mean_tokens"])
def test_matches_torch_ctc(reduction):
    logits, lengths, targets, tl = make_case()
    ref = torch_reference(logits.log_softmax(-1), lengths, targets, tl)
    expected = {
        "none": ref,
        "sum": ref.sum(),
        "mean_batch": ref.sum() / 4,
        "mean_tokens": ref.sum() / tl.sum(),
    }[reduction]
    loss, n_inf = ctc_loss(logits.log_softmax(-1), lengths, targets, tl, BLANK, reduction=reduction)
    assert n_inf == 0 and loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected)
    (g,) = torch.autograd.grad(loss.sum(), logits)
    (g_ref,) = torch.autograd.grad(expected.sum(), logits)
    torch.testing.assert_close(g, g_ref)


def test_torch_mean_is_not_ours():
    # torch "mean" divides each utterance by its own length; "mean_tokens" divides the sum by all tokens
    logits, lengths, targets, tl = make_case(seed=1)
    lp = logits.log_softmax(-1).detach()
    ours, _ = ctc_loss(lp, lengths, targets, tl.clamp(min=1), BLANK)
    per = torch_reference(lp, lengths, targets, tl.clamp(min=1))
    torch.testing.assert_close(ours, per.sum() / tl.clamp(min=1).sum())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input_gives_float32_loss(dtype):
    logits, lengths, targets, tl = make_case(seed=2)
    lp = logits.detach().log_softmax(-1).to(dtype)
    loss, _ = ctc_loss(lp, lengths, targets, tl, BLANK, reduction="none")
    assert loss.dtype == torch.float32
    ref = torch_reference(lp.float(), lengths, targets, tl)
    torch.testing.assert_close(loss, ref)


def test_infeasible_counted_and_zeroed():
    lp = torch.randn(3, 4, V + 1).log_softmax(-1).requires_grad_(True)
    # utt 0: 3 tokens in 4 frames (fine); utt 1: 5 tokens in 4 frames; utt 2: "1 1 1" needs 5 frames
    targets = torch.tensor([[0, 1, 2, 0, 0], [0, 1, 2, 3, 4], [1, 1, 1, 0, 0]])
    tl = torch.tensor([3, 5, 3])
    lengths = torch.tensor([4, 4, 4])
    assert ctc_min_frames(targets, tl).tolist() == [3, 5, 5]
    loss, n_inf = ctc_loss(lp, lengths, targets, tl, BLANK, reduction="none")
    assert n_inf == 2
    assert loss[1].item() == 0.0 and loss[2].item() == 0.0 and loss[0].item() > 0
    (g,) = torch.autograd.grad(loss.sum(), lp)
    assert torch.isfinite(g).all() and torch.all(g[1:] == 0)
    raw, n_raw = ctc_loss(lp, lengths, targets, tl, BLANK, reduction="none", zero_infinity=False)
    assert n_raw == 2 and torch.isinf(raw[1:]).all()


def test_padding_ids_anything_in_range():
    logits, lengths, targets, tl = make_case(seed=3)
    lp = logits.detach().log_softmax(-1)
    a, _ = ctc_loss(lp, lengths, targets, tl, BLANK, reduction="none")
    t2 = targets.clone()
    t2[1, 2:] = BLANK  # padding may even hold the blank id
    b, _ = ctc_loss(lp, lengths, t2, tl, BLANK, reduction="none")
    torch.testing.assert_close(a, b)


def test_bad_target_is_clear_error():
    logits, lengths, targets, tl = make_case(seed=4)
    targets[0, 0] = BLANK
    with pytest.raises(ValueError, match="blank"):
        ctc_loss(logits.log_softmax(-1), lengths, targets, tl, BLANK)
