"""One lattice forward–backward for every transducer loss: alpha, beta and analytic gradients.

The full (native), the simple and the pruned RNN-T losses all end in the same lattice of
(t, u) nodes with two log-probabilities per node (see :mod:`asrlib.losses.rnnt`):

    lp_blank[t, u]  leave (t, u) by a blank  -> (t+1, u);  (T-1, U) --blank--> end
    lp_label[t, u]  leave (t, u) by y[u]     -> (t, u+1)

This module computes, with no autograd graph over the frames:

- alpha[t, u] = log P(reach (t, u) from (0, 0))                       (forward)
- beta[t, u]  = log P(go from (t, u) to the end, final blank included)  (backward)
- log Z = alpha[T-1, U] + lp_blank[T-1, U] = beta[0, 0]
- the posterior (occupation) of every transition, which is also the gradient of log Z:

      d log Z / d lp_blank[t, u] = exp(alpha[t, u] + lp_blank[t, u] + beta[t+1, u] - log Z)
      d log Z / d lp_label[t, u] = exp(alpha[t, u] + lp_label[t, u] + beta[t, u+1] - log Z)

  (beta "[T_b, U_b]" = 0: the end). :class:`LatticeLogLik` returns log Z and hands these
  back in backward, so a loss over T frames costs two loops over T and one vectorised
  product, whatever the length; the pruned loss also reads them to choose its windows.

Both recursions loop over T only; along u they are first-order linear recurrences in log
space, solved in closed form by a log-cumulative-sum (``forward_variables`` in the module doc
of rnnt.py): for beta, with the suffix sums ``D[u] = sum_{k>=u} lp_label[t, k]``,
``beta[t, u] = D[u] + revlogcumsumexp(c - D)[u]`` where ``c[u] = beta[t+1, u] + lp_blank[t, u]``.
Everything runs in float64 (the tables are small). Log-probabilities of -inf (the pruned
loss's nodes outside the band) are raised to ``LOG_ZERO`` = -1e5 first: subtracting a
cumulative sum that holds -inf would give NaN, and exp(-1e5) is 0 in float64, so a path
through such a node weighs nothing next to any real path (whose log-prob is > -1e5 unless
it is ~15000 frames of uniform guessing over 1000 tokens).

Ragged batches: utterance b ends at (T_b - 1, U_b); nodes beyond are ignored (beta = -inf
there, so their gradient is exactly 0). T_b = 0 has no path: log Z = -inf, gradient 0.
:func:`asrlib.losses.rnnt_ref.forward_variables_loop` is the plain node-by-node reference.

Shapes: B batch, T frames, U target tokens.
    lp_blank (B, T, U+1), lp_label (B, T, U), enc_lengths (B,), target_lengths (B,)
    -> log Z (B,), occ_blank (B, T, U+1), occ_label (B, T, U)
"""

from __future__ import annotations

import torch
from torch import Tensor

LOG_ZERO = -1e5  # stands for log 0 inside the recursions (see module doc)


def forward_variables(lp_blank: Tensor, lp_label: Tensor) -> Tensor:
    """alpha[b, t, u] = log P(reach node (t, u)), float64 (B, T, U+1); alpha[:, 0, 0] = 0.

    One Python loop over T; the recurrence along U is closed-form. Differentiable by autograd
    (the "old recursion" that the native loss used before :class:`LatticeLogLik`), and the
    forward half of :func:`lattice_posteriors` under no_grad.
    """
    lb = lp_blank.double()
    ll = lp_label.double()
    b, t, _ = lb.shape
    cum = torch.cat([ll.new_zeros(b, t, 1), ll.cumsum(dim=-1)], dim=-1)  # C: (B, T, U+1)
    # unbind, not cum[:, i]: the backward of T selections would write T full-size zero tensors
    cum_t, lb_t = cum.unbind(dim=1), lb.unbind(dim=1)  # T x (B, U+1)
    rows = [cum_t[0]]  # frame 0: only label emissions lead right from (0, 0)
    for i in range(1, t):
        a = rows[-1] + lb_t[i - 1]  # (B, U+1): arrive at frame i by a blank
        rows.append(cum_t[i] + torch.logcumsumexp(a - cum_t[i], dim=-1))
    return torch.stack(rows, dim=1)  # (B, T, U+1)


def _terminal(target_lengths: Tensor, u1: int) -> Tensor:
    """(B, U+1) float64: 0 at u = U_b (where the final blank leaves), -inf elsewhere."""
    u = torch.arange(u1, device=target_lengths.device)[None]  # (1, U+1)
    zero = torch.zeros((), dtype=torch.float64, device=target_lengths.device)
    return torch.where(u == target_lengths[:, None], zero, float("-inf"))


def backward_variables(lp_blank: Tensor, lp_label: Tensor, enc_lengths: Tensor, target_lengths: Tensor) -> Tensor:
    """beta[b, t, u] = log P(from (t, u) to the end of utterance b), float64 (B, T, U+1).

    The final blank is included: beta[b, T_b-1, U_b] = lp_blank[b, T_b-1, U_b]. -inf for
    nodes that cannot reach the end (t >= T_b, u > U_b). One loop over T, closed form along U.
    """
    lb, ll = lp_blank.double(), lp_label.double()
    b, t, u1 = lb.shape
    # work with u reversed, so that the suffix recurrence becomes a prefix one
    suffix = torch.cat([ll.new_zeros(b, t, 1), ll.flip(-1).cumsum(-1)], dim=-1)  # D[U-j] at j: (B, T, U+1)
    lb_rev = lb.flip(-1)  # (B, T, U+1)
    terminal = _terminal(target_lengths.to(lb.device).long(), u1).flip(-1)  # (B, U+1)
    last = (enc_lengths.to(lb.device).long() - 1)[:, None]  # (B, 1): each utterance's last frame
    nxt = torch.full_like(terminal, float("-inf"))  # beta of frame t+1, reversed
    rows = [nxt] * t
    d_t, lb_t = suffix.unbind(dim=1), lb_rev.unbind(dim=1)  # T x (B, U+1)
    for i in reversed(range(t)):
        nxt = torch.where(last == i, terminal, nxt)  # frame T_b - 1: the end follows
        c = nxt + lb_t[i]  # (B, U+1): leave (i, u) by a blank
        nxt = d_t[i] + torch.logcumsumexp(c - d_t[i], dim=-1)
        rows[i] = nxt
    return torch.stack(rows, dim=1).flip(-1)  # (B, T, U+1)


@torch.no_grad()
def lattice_posteriors(lp_blank: Tensor, lp_label: Tensor, enc_lengths: Tensor,
                       target_lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """log Z (B,) and the transition posteriors occ_blank (B, T, U+1), occ_label (B, T, U), float64.

    Inputs must be zero (or anything finite) outside each utterance; -inf inside is allowed
    (taken as ``LOG_ZERO``). log Z = -inf and posteriors 0 for utterances with T_b = 0.
    """
    lb = lp_blank.double().clamp(min=LOG_ZERO)
    ll = lp_label.double().clamp(min=LOG_ZERO)
    b, t, u1 = lb.shape
    dev = lb.device
    el, tl = enc_lengths.to(dev).long(), target_lengths.to(dev).long()
    if t == 0:
        return torch.full((b,), float("-inf"), dtype=torch.float64, device=dev), lb.clone(), ll.clone()
    alpha = forward_variables(lb, ll)  # (B, T, U+1)
    beta = backward_variables(lb, ll, el, tl)  # (B, T, U+1)
    feasible = el > 0
    b_idx = torch.arange(b, device=dev)
    log_z = alpha[b_idx, (el - 1).clamp(min=0), tl] + lb[b_idx, (el - 1).clamp(min=0), tl]  # (B,)
    log_z = torch.where(feasible, log_z, float("-inf"))
    z = torch.where(feasible, log_z, 0.0)[:, None, None]  # (B, 1, 1); 0 where no path (posteriors are 0 there)
    # beta after each blank: beta[t+1], or the end at t = T_b - 1
    after_blank = torch.cat([beta[:, 1:], torch.full_like(beta[:, :1], float("-inf"))], dim=1)  # (B, T, U+1)
    at_last = torch.arange(t, device=dev)[None, :, None] == (el - 1)[:, None, None]  # (B, T, 1)
    after_blank = torch.where(at_last, _terminal(tl, u1)[:, None, :], after_blank)
    occ_blank = torch.exp(alpha + lb + after_blank - z)  # (B, T, U+1)
    occ_label = torch.exp(alpha[..., :-1] + ll + beta[..., 1:] - z)  # (B, T, U)
    return log_z, occ_blank, occ_label


class LatticeLogLik(torch.autograd.Function):
    """(lp_blank, lp_label, enc_lengths, target_lengths) -> log Z (B,), occ_blank, occ_label.

    log Z is differentiable in both tables (gradient = the posteriors, scaled by the incoming
    gradient); the posteriors come out too, float64 and non-differentiable, for the pruning.
    """

    @staticmethod
    def forward(ctx, lp_blank: Tensor, lp_label: Tensor, enc_lengths: Tensor, target_lengths: Tensor):
        log_z, occ_blank, occ_label = lattice_posteriors(lp_blank, lp_label, enc_lengths, target_lengths)
        ctx.save_for_backward(occ_blank, occ_label)
        ctx.dtypes = (lp_blank.dtype, lp_label.dtype)
        ctx.mark_non_differentiable(occ_blank, occ_label)
        return log_z.to(lp_blank.dtype), occ_blank, occ_label

    @staticmethod
    def backward(ctx, g: Tensor, _g_occ_blank: Tensor, _g_occ_label: Tensor):
        occ_blank, occ_label = ctx.saved_tensors
        scale = g.double()[:, None, None]  # (B, 1, 1)
        return (scale * occ_blank).to(ctx.dtypes[0]), (scale * occ_label).to(ctx.dtypes[1]), None, None


def lattice_loss(lp_blank: Tensor, lp_label: Tensor, enc_lengths: Tensor,
                 target_lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """-log P(y | x) per utterance (B,) in the dtype of lp_blank (inf when T_b = 0), and the
    transition posteriors occ_blank (B, T, U+1), occ_label (B, T, U) (float64, no gradient).
    """
    log_z, occ_blank, occ_label = LatticeLogLik.apply(lp_blank, lp_label, enc_lengths, target_lengths)
    return -log_z, occ_blank, occ_label
