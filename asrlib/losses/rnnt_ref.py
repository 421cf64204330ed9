"""Plain RNN-T references: the full joint tensor, and the scalar alpha recursion.

Two things the native loss (:mod:`asrlib.losses.rnnt`) is careful to avoid, written the
obvious way so they can be read, plotted and compared against:

- :func:`full_lattice_log_probs` builds the whole (B, T, U+1, V+1) logits tensor and its
  log-softmax, then gathers lp_blank / lp_label. This is the "full_joint" baseline of
  ``bench/rnnt_loss.py``;
- :func:`forward_variables_loop` runs the alpha recursion node by node, two Python loops;
- :func:`prune_ranges_loop` and :func:`pruned_lattice_log_probs_full`: the pruned loss's
  band, frame by frame, and its lattice cut out of the full one.

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
    logits = joint(enc, pred)  # (B, T, U+1, V+1): the big one
    logp = (logits if logits.dtype == torch.float64 else logits.float()).log_softmax(dim=-1)
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


def prune_ranges_loop(occ_blank: Tensor, occ_label: Tensor, enc_lengths: Tensor, target_lengths: Tensor,
                      prune_range: int) -> Tensor:
    """Window starts (B, T) of :func:`asrlib.losses.rnnt_pruned.prune_ranges`, one frame at a time."""
    r = prune_range
    b, t_max, _ = occ_blank.shape
    out = torch.zeros(b, t_max, dtype=torch.long)
    for i in range(b):
        tb, ub = int(enc_lengths[i]), int(target_lengths[i])
        s_max = max(ub - r + 1, 0)
        node = [[float(occ_blank[i, t, u]) + (float(occ_label[i, t, u]) if u < occ_label.shape[2] else 0.0)
                 for u in range(occ_blank.shape[2])] for t in range(t_max)]
        best = []
        for t in range(t_max):  # the heaviest window, the first of equals
            mass = [sum(node[t][s : s + r]) for s in range(s_max + 1)]
            best.append(s_max if t >= tb - 1 else mass.index(max(mass)))
        for t in reversed(range(t_max - 1)):  # non-decreasing
            best[t] = min(best[t], best[t + 1])
        best[0] = 0
        for t in range(1, t_max):  # at most R - 1 up per frame
            best[t] = min(best[t], best[t - 1] + r - 1)
        for t in range(t_max):  # reach s_max at the last frame
            best[t] = s_max if t >= tb - 1 else max(best[t], s_max - (tb - 1 - t) * (r - 1))
        out[i] = torch.tensor(best)
    return out


def pruned_lattice_log_probs_full(joint, enc: Tensor, pred: Tensor, targets: Tensor, starts: Tensor,
                                  prune_range: int, blank: int) -> tuple[Tensor, Tensor]:
    """The full joint's lattice with -inf outside the band [starts, starts + R): the pruned loss's reference."""
    lp_blank, lp_label = full_lattice_log_probs(joint, enc, pred, targets, blank)  # (B, T, U+1), (B, T, U)
    u = torch.arange(lp_blank.shape[2], device=lp_blank.device)[None, None]  # (1, 1, U+1)
    band = (u >= starts[..., None]) & (u < starts[..., None] + prune_range)  # (B, T, U+1)
    return lp_blank.masked_fill(~band, float("-inf")), lp_label.masked_fill(~band[..., :-1], float("-inf"))
