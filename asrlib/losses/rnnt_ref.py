"""Plain RNN-T references: the full joint tensor, and the scalar alpha recursion.

Two things the native loss (:mod:`asrlib.losses.rnnt`) is careful to avoid, written the
obvious way so they can be read, plotted and compared against:

- :func:`full_lattice_log_probs` builds the whole (B, T, U+1, V+1) logits tensor and its
  log-softmax, then gathers lp_blank / lp_label. This is the "full_joint" baseline of
  ``bench/rnnt_loss.py``;
- :func:`forward_variables_loop` runs the alpha recursion node by node, two Python loops.

:func:`rnnt_loss_full_joint` = full lattice + (by default) the same lattice forward-backward
as the native loss, so a benchmark of the two measures the joint strategy and nothing else;
``recursion="vectorised"`` swaps in the autograd-differentiated alpha recursion and
``recursion="loop"`` the double loop (slow; small inputs only).

Shapes: B batch, T frames, U target tokens, V vocabulary (blank = V).
"""

from __future__ import annotations

import torch
from torch import Tensor

from asrlib.losses.ctc import Reduction, reduce_losses
from asrlib.losses.lattice import lattice_loss
from asrlib.losses.rnnt import _check, forward_variables, mask_padding, sequence_losses


def full_lattice_log_probs(joint, enc: Tensor, pred: Tensor, targets: Tensor, blank: int) -> tuple[Tensor, Tensor]:
    """enc (B, T, De), pred (B, U+1, Dp), targets (B, U) -> lp_blank (B, T, U+1), lp_label (B, T, U)."""
    logp = joint(enc, pred).float().log_softmax(dim=-1)  # (B, T, U+1, V+1): the big one
    lp_blank = logp[..., blank]  # (B, T, U+1)
    idx = targets[:, None, :, None].expand(-1, logp.shape[1], -1, -1)  # (B, U) -> (B, T, U, 1)
    lp_label = logp[:, :, :-1].gather(-1, idx).squeeze(-1)  # (B, T, U, 1) -> (B, T, U)
    return lp_blank, lp_label


def forward_variables_loop(lp_blank: Tensor, lp_label: Tensor) -> Tensor:
    """alpha (B, T, U+1) float64, node by node:

        alpha[0, 0] = 0
        alpha[t, u] = logaddexp(alpha[t-1, u] + lp_blank[t-1, u],    # arrive by a blank
                                alpha[t, u-1] + lp_label[t, u-1])    # arrive by token u-1
    """
    lb, ll = lp_blank.double(), lp_label.double()
    b, t_max, u1 = lb.shape
    neg_inf = torch.full((b,), float("-inf"), dtype=torch.float64, device=lb.device)
    alpha = [[None] * u1 for _ in range(t_max)]
    for t in range(t_max):
        for u in range(u1):
            if t == 0 and u == 0:
                alpha[t][u] = torch.zeros_like(neg_inf)
                continue
            from_blank = alpha[t - 1][u] + lb[:, t - 1, u] if t > 0 else neg_inf
            from_label = alpha[t][u - 1] + ll[:, t, u - 1] if u > 0 else neg_inf
            alpha[t][u] = torch.logaddexp(from_blank, from_label)
    return torch.stack([torch.stack(row, dim=1) for row in alpha], dim=1)  # (B, T, U+1)


def rnnt_loss_full_joint(joint, enc: Tensor, pred: Tensor, targets: Tensor, enc_lengths: Tensor,
                         target_lengths: Tensor, blank: int, reduction: Reduction = "mean_tokens",
                         zero_infinity: bool = True, recursion: str = "analytic") -> tuple[Tensor, int]:
    """RNN-T loss over the full joint tensor; same contract as :func:`asrlib.losses.rnnt.rnnt_loss`.

    ``recursion``: "analytic" (the lattice forward-backward the native loss uses), "vectorised"
    (alpha by one loop over T, differentiated by autograd) or "loop" (node by node).
    """
    targets = _check(enc, pred, targets, enc_lengths, target_lengths, blank)
    lp_blank, lp_label = full_lattice_log_probs(joint, enc, pred, targets, blank)
    lp_blank, lp_label = mask_padding(lp_blank, lp_label, enc_lengths, target_lengths)
    if recursion == "analytic":
        per_utt = lattice_loss(lp_blank, lp_label, enc_lengths, target_lengths)[0]
        return reduce_losses(per_utt, target_lengths, reduction, zero_infinity)
    if recursion == "vectorised":
        alpha = forward_variables(lp_blank, lp_label)
    elif recursion == "loop":
        alpha = forward_variables_loop(lp_blank, lp_label)
    else:
        raise ValueError(f"recursion={recursion!r}: expected 'analytic', 'vectorised' or 'loop'")
    per_utt = sequence_losses(alpha, lp_blank, enc_lengths, target_lengths)
    return reduce_losses(per_utt, target_lengths, reduction, zero_infinity)
