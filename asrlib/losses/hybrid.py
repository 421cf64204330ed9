"""The hybrid objective: loss = (1 - w) * rnnt + w * ctc, its parts for logging, and
``HybridLoss``: the model and both losses in one module (what the trainer wraps in DDP).

With ``loss.inter_ctc_weight`` > 0, ``HybridLoss`` adds ``inter_ctc_weight`` x the mean CTC loss
of the CTC head (the same weights, after the encoder's final norm) over the outputs of the
blocks ``loss.inter_ctc_blocks``: intermediate CTC (Lee & Watanabe 2021), a training-only term
that nothing at inference reads.

With ``loss.phone_ctc_weight`` > 0 and ``phones`` passed to ``HybridLoss.forward`` (the trainer
spells each transcript with the lexicon, asrlib/lexicon.py), ``HybridLoss`` adds
``phone_ctc_weight`` x the per-phone mean CTC loss of the model's ``phone_head`` over the phone
targets: an auxiliary, training-only target. Without ``phones`` (evaluation's dev loss) the term is
left out. ``loss.phone_ctc_block`` = k > 0 gives the phone head the output of block k (through the
encoder's final norm, as intermediate CTC does) instead of the encoder's: phones below, letters on
top (hierarchical multitask CTC).

With ``loss.rnnt = "pruned"`` the rnnt term is ``simple_scale * simple + pruned_scale * pruned``
(asrlib/losses/rnnt_pruned.py), the scales following icefall's warm-up over
``loss.prune_warmup_steps`` optimiser steps: the trainer passes ``step=`` to
``HybridLoss.forward`` (without it the post-warm-up scales are used).

Both parts should use the same reduction (e.g. "mean_tokens") so that w means what it says.

Shapes: every loss here is a scalar () tensor (or matching (B,) tensors for "none").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from asrlib.data.augment import apply_spec_augment, spec_augment_noise
from asrlib.losses.ctc import ctc_loss
from asrlib.losses.rnnt import rnnt_loss_any
from asrlib.losses.rnnt_pruned import loss_scales, pruned_rnnt_loss


def hybrid_loss(rnnt: Tensor, ctc: Tensor, ctc_weight: float) -> Tensor:
    """(1 - ctc_weight) * rnnt + ctc_weight * ctc; ctc_weight in [0, 1]."""
    if not 0.0 <= ctc_weight <= 1.0:
        raise ValueError(f"loss.ctc_weight = {ctc_weight}: expected a number in [0, 1] (0 = pure RNN-T, 1 = pure CTC)")
    return (1.0 - ctc_weight) * rnnt + ctc_weight * ctc


@dataclass
class LossParts:
    """One step's losses: ``total`` carries the gradient; the rest are for logging."""

    total: Tensor  # (1 - w) * rnnt + w * ctc
    rnnt: Tensor  # RNN-T loss (already reduced)
    ctc: Tensor  # CTC loss (already reduced)
    n_infeasible_rnnt: int = 0  # utterances whose RNN-T loss was infinite (no frames)
    n_infeasible_ctc: int = 0  # utterances with fewer frames than CTC needs

    @classmethod
    def combine(cls, rnnt: tuple[Tensor, int], ctc: tuple[Tensor, int], ctc_weight: float) -> "LossParts":
        """From the (loss, n_infeasible) pairs that rnnt_loss and ctc_loss return."""
        return cls(hybrid_loss(rnnt[0], ctc[0], ctc_weight), rnnt[0], ctc[0], rnnt[1], ctc[1])


class HybridLoss(nn.Module):
    """Model + both losses in one forward, so DistributedDataParallel sees one call per step.

    forward(audio (B, S), audio_lengths, tokens (B, U), token_lengths, augment)
        -> dict of scalar tensors: loss, rnnt, ctc, and counts of infeasible utterances.
    ``augment`` turns SpecAugment on (training): a torch.Generator to draw from, or the noise
    already drawn (``spec_augment_noise``: what the trainer passes, so that no generator
    reaches torch.compile); None = no augmentation. ``phones`` (B, P) and ``phone_lengths`` (B,):
    the lexicon's phone targets, for the phone CTC term (``Lexicon.targets``).
    """

    def __init__(self, model, cfg):
        """``model`` is a HybridASR, ``cfg`` the run's Config (its [loss] and [spec_augment])."""
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(self, audio, audio_lengths, tokens, token_lengths, augment: torch.Generator | Tensor | None = None,
                step: int | None = None, phones: Tensor | None = None, phone_lengths: Tensor | None = None):
        """``step`` (optimiser updates so far) drives the pruned loss's warm-up; unused by the full loss."""
        m, lc = self.model, self.cfg.loss
        feats, feat_lengths = m.features(audio, audio_lengths)
        if augment is not None:  # SpecAugment: training only
            if isinstance(augment, torch.Generator):
                augment = spec_augment_noise(feats.shape[0], self.cfg.spec_augment, augment)
            feats = apply_spec_augment(feats, feat_lengths, self.cfg.spec_augment, augment, self.cfg.model.frontend)
        inter_blocks = tuple(lc.inter_ctc_blocks) if lc.inter_ctc_weight > 0 else ()
        phone_block = lc.phone_ctc_block if phones is not None and lc.phone_ctc_weight > 0 else 0
        if inter_blocks or phone_block:
            taps = inter_blocks + ((phone_block,) if phone_block else ())
            enc, enc_lengths, tapped = m.encoder.forward_taps(feats, feat_lengths, taps)
        else:  # through the module call, so that forward hooks on the encoder see every step
            (enc, enc_lengths), tapped = m.encode(feats, feat_lengths), []
        phone_enc = tapped.pop() if phone_block else enc  # what the phone head reads
        ctc = ctc_loss(m.ctc_head(enc), enc_lengths, tokens, token_lengths, blank=m.blank,
                       zero_infinity=lc.zero_infinity)
        inter = [ctc_loss(m.ctc_head(h), enc_lengths, tokens, token_lengths, blank=m.blank,
                          zero_infinity=lc.zero_infinity)[0] for h in tapped]
        pred = m.prediction(tokens)
        extra: dict[str, Tensor] = {}
        if lc.rnnt == "pruned":
            rnnt, extra = self._pruned_rnnt(enc, pred, tokens, enc_lengths, token_lengths, step)
        else:
            rnnt = rnnt_loss_any(m.joint, enc, pred, tokens, enc_lengths, token_lengths, blank=m.blank,
                                 t_chunk=lc.fused_t_chunk, zero_infinity=lc.zero_infinity, backend=lc.rnnt_backend)
            if getattr(m, "simple", None) is not None:  # unused projections: a zero term keeps DDP's reducer happy
                rnnt = (rnnt[0] + 0.0 * sum(p.sum() for p in m.simple.parameters()), rnnt[1])
        parts = LossParts.combine(rnnt, ctc, lc.ctc_weight)
        total = parts.total
        if inter:  # intermediate CTC: the same head on earlier blocks' outputs
            inter_ctc = torch.stack(inter).mean()
            total = total + lc.inter_ctc_weight * inter_ctc
            extra["inter_ctc"] = inter_ctc.detach()
        if phones is not None and lc.phone_ctc_weight > 0:
            if m.phone_head is None:
                raise ValueError("loss.phone_ctc_weight > 0 needs the model's phone head: build it with "
                                 "model.phone_vocab_size = the lexicon's number of phones")
            phone_ctc = ctc_loss(m.phone_head(phone_enc), enc_lengths, phones, phone_lengths, blank=m.phone_head.blank,
                                 zero_infinity=lc.zero_infinity)[0]
            total = total + lc.phone_ctc_weight * phone_ctc
            extra["phone_ctc"] = phone_ctc.detach()
        return {"loss": total, "rnnt": parts.rnnt.detach(), "ctc": parts.ctc.detach(),
                "infeasible": torch.as_tensor(parts.n_infeasible_rnnt + parts.n_infeasible_ctc,
                                              dtype=torch.float32), **extra}

    # ---------------------------------------------------------------- pruned RNN-T (training-step hook: ``step``)
    def _pruned_rnnt(self, enc, pred, tokens, enc_lengths, token_lengths, step):
        """(scaled simple + pruned, n_infeasible) and the unscaled parts + scales for logging."""
        m, lc = self.model, self.cfg.loss
        if getattr(m, "simple", None) is None:
            raise ValueError('loss.rnnt = "pruned" needs the model\'s simple projections: set '
                             "model.joint.simple_projections = true (a model built without them cannot train pruned)")
        (simple, _), (pruned, n_inf) = pruned_rnnt_loss(
            m.joint, m.simple, enc, pred, tokens, enc_lengths, token_lengths, m.blank, prune_range=lc.prune_range,
            lm_scale=lc.lm_scale, am_scale=lc.am_scale, zero_infinity=lc.zero_infinity,
            t_chunk=lc.fused_t_chunk)
        s_scale, p_scale = loss_scales(step, lc.simple_loss_scale, lc.prune_warmup_steps)
        extra = {"rnnt_simple": simple.detach(), "rnnt_pruned": pruned.detach(),
                 "simple_scale": torch.tensor(s_scale), "pruned_scale": torch.tensor(p_scale)}
        return (s_scale * simple + p_scale * pruned, n_inf), extra
