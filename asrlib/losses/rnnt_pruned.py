"""Pruned RNN-T loss (Kuang et al. 2022, "Pruned RNN-T for fast, memory-efficient ASR
training"; k2's algorithm) in plain PyTorch.

The full loss sends every lattice node (t, u) through the joint, B*T*(U+1) softmaxes over
V+1. Most of them carry no probability: at frame t the alignment sits near a few tokens. The
pruned loss finds those tokens with a cheap model and evaluates the real joint there only:

1. **Simple loss** (:func:`simple_lattice_log_probs`): a trivial joint ``am[t] + lm[u]``
   (:class:`asrlib.model.heads.SimpleProjections`, two linears to V+1 logits). Its softmax
   normaliser ``log sum_v exp(am[t, v] + lm[u, v])`` is a matrix product of exponentials,
   (B, T, V+1) @ (B, V+1, U+1), stable after subtracting the row maxima of am and lm: never
   a 4-D tensor. Optional smoothing mixes in am-only and lm-only log-softmaxes (k2's
   ``am_scale``/``lm_scale``). The lattice forward-backward gives the loss and the
   posterior of every transition.
2. **Prune ranges** (:func:`prune_ranges`): per frame, the window of R = ``prune_range``
   consecutive tokens with the most node posterior, then adjusted into a connected band:
   start 0 at frame 0, non-decreasing, at most R - 1 up per frame, and ending at U_b - R + 1
   (so the last window holds U_b) at frame T_b - 1. That needs U_b <= T_b * (R - 1); an
   utterance with more tokens cannot fit any band and its pruned loss is infinite (counted).
3. **Pruned loss** (:func:`pruned_lattice_log_probs`): the real joint on the (B, T, R) band
   nodes only, log-softmax over V+1 there (slice by slice of frames, recomputed in backward,
   like the full loss), scattered into the (B, T, U+1) lattice with -inf outside the band;
   the same forward-backward gives the loss.

:func:`pruned_rnnt_loss` runs the three; the trainer mixes the two losses with
:func:`loss_scales` (icefall's warm-up: simple 1.0 -> ``simple_loss_scale``, pruned 0.1 ->
1.0 over ``prune_warmup_steps``). The plain references are in :mod:`asrlib.losses.rnnt_ref`
(``prune_ranges_loop``, ``pruned_lattice_log_probs_full``).

Shapes: B batch, T frames, U target tokens, V vocabulary (blank = V), J joint hidden,
R prune range. enc (B, T, De), pred (B, U+1, Dp), targets (B, U), am (B, T, V+1),
lm (B, U+1, V+1), starts (B, T): the band of frame t is u in [starts[t], starts[t] + R).
"""

from __future__ import annotations

import torch
from torch import Tensor

from asrlib.losses.ctc import Reduction, reduce_losses
from asrlib.losses.lattice import lattice_loss
from asrlib.losses.rnnt import _check, mask_padding, sliced_joint_log_probs

# memory of one slice of band logits: the whole band is ~R/(U+1) of the full lattice, so slices
# this small cost nothing measurable (bench/rnnt_loss.py, big shape: t_chunk 25 vs 184 frames,
# 329 vs 454 MiB peak growth) and keep the loss's peak low
BAND_BUDGET_MIB = 32


def simple_lattice_log_probs(am: Tensor, lm: Tensor, targets: Tensor, blank: int, lm_scale: float = 0.0,
                             am_scale: float = 0.0) -> tuple[Tensor, Tensor]:
    """am (B, T, V+1), lm (B, U+1, V+1), targets (B, U) -> lp_blank (B, T, U+1), lp_label (B, T, U), float32.

    Plain: ``logp = log_softmax(am[:, :, None] + lm[:, None], -1)`` then gather, on (B, T, U+1, V+1).
    """
    dev = am.device.type
    with torch.autocast(dev, enabled=False):
        am, lm = am.float(), lm.float()
        b, t, _ = am.shape
        u = targets.shape[1]
        am_max = am.detach().amax(-1, keepdim=True)  # (B, T, 1); any constant gives the same value and gradient
        lm_max = lm.detach().amax(-1, keepdim=True)  # (B, U+1, 1)
        prod = torch.exp(am - am_max) @ torch.exp(lm - lm_max).transpose(1, 2)  # (B, T, U+1), entries in (0, V+1]
        norm = prod.clamp(min=torch.finfo(prod.dtype).tiny).log() + am_max + lm_max.transpose(1, 2)  # (B, T, U+1)
        am_label = am.gather(2, targets[:, None, :].expand(b, t, u))  # (B, T, U): am[t, y_u]
        lm_label = lm[:, :u].gather(2, targets[:, :, None]).squeeze(-1)  # (B, U, 1) -> (B, U): lm[u, y_u]
        lp_blank = am[:, :, blank, None] + lm[:, None, :, blank] - norm  # (B, T, U+1)
        lp_label = am_label + lm_label[:, None, :] - norm[:, :, :u]  # (B, T, U)
        if lm_scale or am_scale:
            am_lp, lm_lp = am.log_softmax(-1), lm.log_softmax(-1)  # (B, T, V+1), (B, U+1, V+1)
            am_only_label = am_lp.gather(2, targets[:, None, :].expand(b, t, u))  # (B, T, U)
            lm_only_label = lm_lp[:, :u].gather(2, targets[:, :, None]).squeeze(-1)  # (B, U)
            keep = 1.0 - lm_scale - am_scale
            lp_blank = keep * lp_blank + lm_scale * lm_lp[:, None, :, blank] + am_scale * am_lp[:, :, blank, None]
            lp_label = keep * lp_label + lm_scale * lm_only_label[:, None, :] + am_scale * am_only_label
    return lp_blank, lp_label


def prune_ranges(occ_blank: Tensor, occ_label: Tensor, enc_lengths: Tensor, target_lengths: Tensor,
                 prune_range: int) -> Tensor:
    """Transition posteriors (B, T, U+1), (B, T, U) -> window starts (B, T) long, a connected band.

    Steps (vectorised; :func:`asrlib.losses.rnnt_ref.prune_ranges_loop` does them one frame at a time):
    best window per frame among starts 0..S_b (S_b = max(U_b - R + 1, 0)); S_b from frame
    T_b - 1 on; non-decreasing (running minimum from the right); 0 at frame 0; steps capped at
    R - 1 by lowering later frames; raised to S_b - (T_b - 1 - t)(R - 1) so the end is reached.
    """
    r = prune_range
    b, t, u1 = occ_blank.shape
    dev = occ_blank.device
    el, tl = enc_lengths.to(dev).long(), target_lengths.to(dev).long()
    node = occ_blank.clone()  # (B, T, U+1): posterior of passing through node (t, u)
    node[..., :-1] += occ_label
    cum = torch.cat([node.new_zeros(b, t, 1), node.cumsum(-1)], dim=-1)  # (B, T, U+2)
    s_all = torch.arange(u1, device=dev)  # (U+1,) candidate starts
    window = cum[..., (s_all + r).clamp(max=u1)] - cum[..., :u1]  # (B, T, U+1): mass of [s, s+R)
    s_max = (tl - r + 1).clamp(min=0)  # (B,) S_b
    window = torch.where(s_all[None, None] <= s_max[:, None, None], window, -1.0)
    starts = window.argmax(-1)  # (B, T)
    frame = torch.arange(t, device=dev)[None]  # (1, T)
    last = (el - 1)[:, None]  # (B, 1)
    starts = torch.where(frame >= last, s_max[:, None], starts)  # the last frame holds U_b
    starts = starts.flip(1).cummin(1).values.flip(1)  # non-decreasing
    starts = torch.where(frame == 0, 0, starts)  # (0, 0) is in the band
    step = frame * (r - 1)  # (1, T)
    starts = (starts - step).cummin(1).values + step  # at most R - 1 up per frame
    starts = torch.maximum(starts, s_max[:, None] - (last - frame) * (r - 1))  # reach S_b by T_b - 1
    return torch.where(frame >= last, s_max[:, None], starts)  # (B, T)


def band_fits(enc_lengths: Tensor, target_lengths: Tensor, prune_range: int) -> Tensor:
    """(B,) bool: a connected band of ``prune_range`` tokens can go from (0, 0) to (T_b-1, U_b)."""
    return (enc_lengths > 0) & (target_lengths <= enc_lengths * (prune_range - 1))


def pruned_lattice_log_probs(joint, enc: Tensor, pred: Tensor, targets: Tensor, starts: Tensor, prune_range: int,
                             blank: int, t_chunk: int = 0) -> tuple[Tensor, Tensor]:
    """The real joint on the band only -> lp_blank (B, T, U+1), lp_label (B, T, U), -inf off the band.

    ``targets`` must hold legal ids everywhere (padding included). Float32 (float64 if the joint
    is). The band's logits are evaluated ``t_chunk`` frames at a time and recomputed in
    backward (:func:`asrlib.losses.rnnt.sliced_joint_log_probs`; 0 = from ``BAND_BUDGET_MIB``).
    """
    e = joint.project_encoder(enc)  # (B, T, J)
    p = joint.project_prediction(pred)  # (B, U+1, J)
    b, t, j = e.shape
    u1 = p.shape[1]
    u_idx = starts[:, :, None] + torch.arange(prune_range, device=e.device)  # (B, T, R)
    g_idx = u_idx.clamp(max=u1 - 1)  # columns beyond U are evaluated at U and dropped below
    flat = g_idx + (torch.arange(b, device=e.device) * u1)[:, None, None]  # (B, T, R) rows of p.reshape(B*(U+1), J)
    p_band = p.reshape(b * u1, j)[flat]  # (B, T, R, J); backward adds into (B*(U+1), J), not a 4-D tensor
    labels = torch.cat([targets, targets.new_zeros(b, 1)], dim=1)  # (B, U+1); last column unused
    band_labels = labels.gather(1, g_idx.reshape(b, -1)).reshape(b, t, prune_range)  # (B, T*R) -> (B, T, R)
    # the joint on (B, T, R, V+1) logits, slice by slice, recomputed in backward (as the full loss does)
    lb_band, ll_band = sliced_joint_log_probs(joint, e, p_band, band_labels, blank, t_chunk,
                                              BAND_BUDGET_MIB)  # 2 x (B, T, R)
    wide = lb_band.new_full((b, t, u1 + prune_range), float("-inf"))  # (B, T, U+1+R): room for u > U
    lp_blank = wide.scatter(2, u_idx, lb_band)[..., :u1]  # (B, T, U+1)
    lp_label = wide.scatter(2, u_idx, ll_band)[..., : u1 - 1]  # (B, T, U)
    return lp_blank, lp_label


def loss_scales(step: int | None, simple_loss_scale: float, warmup_steps: int) -> tuple[float, float]:
    """(simple, pruned) weights at optimiser step ``step``; None (or past warm-up) = the final ones.

    icefall's warm-up: simple 1.0 -> ``simple_loss_scale`` and pruned 0.1 -> 1.0, linearly.
    """
    if step is None or warmup_steps <= 0 or step >= warmup_steps:
        return simple_loss_scale, 1.0
    f = max(step, 0) / warmup_steps
    return 1.0 + f * (simple_loss_scale - 1.0), 0.1 + 0.9 * f


def pruned_rnnt_loss(joint, simple, enc: Tensor, pred: Tensor, targets: Tensor, enc_lengths: Tensor,
                     target_lengths: Tensor, blank: int, prune_range: int = 5, lm_scale: float = 0.0,
                     am_scale: float = 0.0, reduction: Reduction = "mean_tokens", zero_infinity: bool = True,
                     t_chunk: int = 0) -> tuple[tuple[Tensor, int], tuple[Tensor, int]]:
    """((simple loss, n_infeasible), (pruned loss, n_infeasible)); see the module doc.

    ``joint`` is a :class:`asrlib.model.heads.Joint`, ``simple`` a
    :class:`asrlib.model.heads.SimpleProjections`. Gradients reach enc, pred, both modules.
    The band's choice carries no gradient (as in k2). ``t_chunk``: frames of band logits at once (0 = auto).
    """
    if prune_range < 2:
        raise ValueError(f"pruned_rnnt_loss: prune_range = {prune_range}: expected an integer >= 2")
    targets = _check(enc, pred, targets, enc_lengths, target_lengths, blank)
    if enc.shape[1] == 0:  # no frames anywhere: every utterance is infeasible
        per_utt = torch.full((enc.shape[0],), float("inf"), device=enc.device) + 0 * enc.sum() + 0 * pred.sum()
        out = reduce_losses(per_utt, target_lengths, reduction, zero_infinity)
        return out, out
    am, lm = simple(enc, pred)  # (B, T, V+1), (B, U+1, V+1)
    lp_blank, lp_label = simple_lattice_log_probs(am, lm, targets, blank, lm_scale, am_scale)
    lp_blank, lp_label = mask_padding(lp_blank, lp_label, enc_lengths, target_lengths)
    simple_utt, occ_blank, occ_label = lattice_loss(lp_blank, lp_label, enc_lengths, target_lengths)  # (B,)
    starts = prune_ranges(occ_blank, occ_label, enc_lengths, target_lengths, prune_range)  # (B, T)
    lp_blank, lp_label = pruned_lattice_log_probs(joint, enc, pred, targets, starts, prune_range, blank, t_chunk)
    lp_blank, lp_label = mask_padding(lp_blank, lp_label, enc_lengths, target_lengths)
    pruned_utt, _, _ = lattice_loss(lp_blank, lp_label, enc_lengths, target_lengths)  # (B,)
    fits = band_fits(enc_lengths.to(enc.device), target_lengths.to(enc.device), prune_range)
    pruned_utt = torch.where(fits, pruned_utt, float("inf"))
    return (reduce_losses(simple_utt, target_lengths, reduction, zero_infinity),
            reduce_losses(pruned_utt, target_lengths, reduction, zero_infinity))
