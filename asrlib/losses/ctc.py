"""CTC loss: a thin, careful wrapper around ``torch.nn.functional.ctc_loss``.

What the wrapper adds to the torch function:

- batch-first log-probs, as :class:`asrlib.model.heads.CTCHead` returns them (torch wants
  time first);
- float32 arithmetic whatever the input dtype (bf16/fp16 log-probs are cast, autocast is
  switched off around the call);
- one reduction vocabulary shared with the RNN-T loss (:func:`reduce_losses`), where
  ``"mean_tokens"`` = sum of the per-utterance losses / total target tokens, so the two
  losses of the hybrid model sit on the same scale;
- a count of *infeasible* utterances: CTC needs one frame per token plus one blank frame
  between two equal neighbours; an utterance with fewer frames has probability 0 (loss inf).
  With ``zero_infinity`` it contributes 0 (and no gradient) instead of poisoning the batch.
- no host synchronisation under ``torch.compile``: the checks of tensor *values* (lengths,
  target ids) run in eager mode only, and the counts of infeasible utterances are then 0-d
  tensors (plain ints in eager mode), so the loss traces as one graph.

Shapes: B batch, T frames, U target tokens, V vocabulary (blank = V, so V + 1 classes).
    log_probs (B, T, V + 1), lengths (B,), targets (B, U), target_lengths (B,)
    -> loss () or (B,) for reduction "none"; n_infeasible: int
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Reduction = Literal["mean_tokens", "sum", "mean_batch", "none"]
REDUCTIONS = ("mean_tokens", "sum", "mean_batch", "none")


def reduce_losses(per_utt: Tensor, target_lengths: Tensor, reduction: str, zero_infinity: bool) -> tuple[Tensor, int]:
    """Per-utterance losses (B,) -> (reduced loss, number of infinite ones).

    Shared by the CTC and RNN-T losses. Infinite losses are zeroed (with no gradient) when
    ``zero_infinity``; they are counted either way. NaN is left alone: it means broken
    inputs, and the trainer's non-finite check should see it.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}: expected one of {', '.join(REDUCTIONS)}")
    inf = torch.isinf(per_utt)
    n_inf = _count(inf)
    if zero_infinity:  # where() is the identity (values and gradients) on finite entries
        per_utt = torch.where(inf, torch.zeros_like(per_utt), per_utt)
    if reduction == "none":
        return per_utt, n_inf
    total = per_utt.sum()
    if reduction == "sum":
        return total, n_inf
    if reduction == "mean_batch":
        return total / max(per_utt.shape[0], 1), n_inf
    n_tokens = target_lengths.sum().clamp(min=1)  # all-empty batch: divide by 1 (a tensor: no sync)
    return total / n_tokens, n_inf


def _count(flags: Tensor) -> int | Tensor:
    """Number of True entries: an int in eager mode, a 0-d tensor while compiling (no sync)."""
    n = flags.sum()
    return n if torch.compiler.is_compiling() else int(n)


def ctc_min_frames(targets: Tensor, target_lengths: Tensor) -> Tensor:
    """Frames a CTC path needs: U + number of equal neighbours (each needs a blank between).

    targets (B, U), target_lengths (B,) -> (B,) long.
    """
    u = targets.shape[1]
    if u < 2:
        return target_lengths.long()
    pos = torch.arange(1, u, device=targets.device)  # (U - 1,) index of the second of a pair
    repeat = (targets[:, 1:] == targets[:, :-1]) & (pos[None] < target_lengths[:, None])  # (B, U - 1)
    return target_lengths.long() + repeat.sum(dim=1)


def _check(log_probs: Tensor, lengths: Tensor, targets: Tensor, target_lengths: Tensor, blank: int) -> None:
    if log_probs.dim() != 3:
        raise ValueError(f"ctc_loss: log_probs must be (B, T, V+1), got shape {tuple(log_probs.shape)}")
    b, t, c = log_probs.shape
    if targets.dim() != 2 or targets.shape[0] != b:
        raise ValueError(f"ctc_loss: targets must be (B={b}, U), got shape {tuple(targets.shape)}")
    if lengths.shape != (b,) or target_lengths.shape != (b,):
        raise ValueError(
            f"ctc_loss: lengths and target_lengths must be (B={b},), got {tuple(lengths.shape)} "
            f"and {tuple(target_lengths.shape)}"
        )
    if not 0 <= blank < c:
        raise ValueError(f"ctc_loss: blank={blank} is not a class of log_probs with {c} classes")
    if torch.compiler.is_compiling():
        return  # the checks below read tensor values: a host sync (and graph break) per step
    if b and int(lengths.max()) > t:
        raise ValueError(f"ctc_loss: a length ({int(lengths.max())}) exceeds the {t} frames of log_probs")
    if b and int(target_lengths.max()) > targets.shape[1]:
        raise ValueError(
            f"ctc_loss: a target length ({int(target_lengths.max())}) exceeds the {targets.shape[1]} "
            "columns of targets"
        )
    valid = torch.arange(targets.shape[1], device=targets.device)[None] < target_lengths[:, None]  # (B, U)
    ids = targets[valid]
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= c or bool((ids == blank).any())):
        raise ValueError(
            f"ctc_loss: target ids must lie in 0..{c - 1} and never equal the blank ({blank}); "
            f"got values from {int(ids.min())} to {int(ids.max())}. Is the tokenizer the one the model was built for?"
        )


def ctc_loss(
    log_probs: Tensor,
    lengths: Tensor,
    targets: Tensor,
    target_lengths: Tensor,
    blank: int,
    reduction: Reduction = "mean_tokens",
    zero_infinity: bool = True,
) -> tuple[Tensor, int]:
    """CTC loss of batch-first log-probs; returns (loss, n_infeasible). See the module doc."""
    _check(log_probs, lengths, targets, target_lengths, blank)
    valid = torch.arange(targets.shape[1], device=targets.device)[None] < target_lengths[:, None]  # (B, U)
    targets = torch.where(valid, targets, torch.zeros_like(targets)).long()  # padding -> a legal id
    with torch.autocast(log_probs.device.type, enabled=False):
        lp = log_probs.float().transpose(0, 1)  # (B, T, V+1) -> (T, B, V+1)
        # torch's own zero_infinity also zeroes the gradient of infeasible rows (the raw
        # gradient there is NaN); the rows are then counted from the frame arithmetic.
        per_utt = F.ctc_loss(
            lp, targets, lengths.long(), target_lengths.long(),
            blank=blank, reduction="none", zero_infinity=zero_infinity,
        )  # (B,)
    if zero_infinity:
        infeasible = ctc_min_frames(targets, target_lengths) > lengths.to(targets.device)
        n_inf = _count(infeasible)
        loss, _ = reduce_losses(per_utt, target_lengths, reduction, zero_infinity=False)
        return loss, n_inf
    return reduce_losses(per_utt, target_lengths, reduction, zero_infinity=False)
