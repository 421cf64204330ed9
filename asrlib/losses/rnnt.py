"""RNN-T loss in pure PyTorch that never holds the (B, T, U+1, V+1) joint tensor.

The transducer scores every alignment of U tokens to T frames as a path through a lattice
of (t, u) nodes: from (t, u) a path either emits the blank and moves to (t+1, u), or emits
token ``y[u]`` and moves to (t, u+1). It ends by emitting the blank from (T-1, U). Only two
numbers per node matter:

    lp_blank[t, u] = log P(blank  | enc t, pred u)        (B, T, U+1)
    lp_label[t, u] = log P(y[u]   | enc t, pred u)        (B, T, U)

The joint computes them through a (V+1)-way softmax per node, which is the memory problem:
at B=32, T=500, U=100, V=1024 the logits alone take 6.6 GB, and autograd keeps several
copies. :func:`lattice_log_probs` therefore evaluates the joint over slices of ``t_chunk``
frames, keeps only the two gathered numbers per node, and recomputes each slice during
backward (a custom autograd.Function, :class:`_SlicedJoint`): peak memory is one slice,
not the full tensor.

:func:`forward_variables` then runs the alpha recursion in log space, vectorised with one
loop over T: within a frame, alpha along u is a first-order linear recurrence
``alpha[t,u] = logaddexp(a[u], alpha[t,u-1] + lp_label[t,u-1])`` with
``a[u] = alpha[t-1,u] + lp_blank[t-1,u]``, whose closed form is a log-cumulative-sum:
with ``C[u] = sum_{k<u} lp_label[t,k]``, ``alpha[t,u] = C[u] + logcumsumexp(a - C)[u]``.
It runs in float64 (the tables are small), so subtracting C costs ~1e-16 * |C| of accuracy.
The loss uses it through :mod:`asrlib.losses.lattice`, which adds the matching beta
recursion and writes the gradient analytically (alpha + transition + beta - log Z), so no
autograd graph spans the frames; :func:`forward_variables` (differentiated by autograd)
remains as the reference it is tested and benchmarked against.

Shapes: B batch, T frames, U target tokens, V vocabulary (blank = V), J joint hidden.
    enc (B, T, De), pred (B, U+1, Dp), targets (B, U), enc_lengths (B,), target_lengths (B,)
    -> loss () or (B,) for reduction "none"; n_infeasible: int
"""

from __future__ import annotations

import torch
from torch import Tensor

from asrlib.losses.ctc import Reduction, reduce_losses
from asrlib.losses.lattice import forward_variables, lattice_loss  # noqa: F401 (forward_variables: re-exported)

DEFAULT_BUDGET_MIB = 256  # memory of one joint slice (forward + backward temporaries)


def _gather_log_probs(logits: Tensor, labels: Tensor, blank: int) -> tuple[Tensor, Tensor, Tensor]:
    """logits (B, t, N, V+1), labels (B, 1 or t, N) -> lp_blank, lp_label, logsumexp: 3 x (B, t, N).

    N = U+1 lattice columns (the full loss) or R band nodes (the pruned loss).

    Float32 (float64 if the logits are), whatever autocast did to the logits.
    """
    z = logits if logits.dtype == torch.float64 else logits.float()
    lse = torch.logsumexp(z, dim=-1)  # (B, t, U+1)
    idx = labels[..., None].expand(-1, z.shape[1], -1, -1)  # (B, 1 or t, N) -> (B, t, N, 1)
    return z[..., blank] - lse, z.gather(-1, idx).squeeze(-1) - lse, lse  # (B, t, N, 1) -> (B, t, N)


def _grad_logits(logits: Tensor, lse: Tensor, labels: Tensor, blank: int, g_blank: Tensor,
                 g_label: Tensor) -> Tensor:
    """d loss / d logits from the gradients of lp_blank and lp_label, written out:
    d lp_k / d z_j = [j == k] - softmax_j. Same shape and dtype as ``logits``.

    Overwrites ``logits`` when it already has the dtype of ``lse`` (it is a recomputed
    temporary, and autograd does not save a Linear's output), sparing one full-slice buffer.
    """
    grad = logits.sub_(lse.unsqueeze(-1)) if logits.dtype == lse.dtype else logits.to(lse.dtype) - lse.unsqueeze(-1)
    grad.exp_()  # softmax (B, t, U+1, V+1)
    grad.mul_(-(g_blank + g_label).unsqueeze(-1))
    grad[..., blank] += g_blank
    idx = labels[..., None].expand(-1, grad.shape[1], -1, -1)  # (B, 1 or t, N) -> (B, t, N, 1)
    grad.scatter_add_(-1, idx, g_label.unsqueeze(-1))
    return grad.to(logits.dtype)


def _frames(x: Tensor, sl: slice) -> Tensor:
    """x[:, sl], or x itself when its frame axis is 1 (shared by every frame: broadcast)."""
    return x if x.shape[1] == 1 else x[:, sl]


class _SlicedJoint(torch.autograd.Function):
    """(e (B, T, J), p (B, 1 or T, N, J)) -> lp_blank, lp_label (B, T, N), one slice of frames at a time.

    p (B, 1, U+1, J) pairs every frame with every prediction step (the full lattice); p
    (B, T, R, J) pairs frame t with its own R steps (the pruned loss's band). labels (B, 1 or
    T, N) are the token ids gathered at those nodes.

    Forward keeps nothing of a slice but its two gathered log-probs. Backward recomputes each
    slice's logits (under the autocast state of the forward), forms their gradient from the
    softmax, and backpropagates it through ``joint.combine`` into e, p and the joint's
    parameters. ``joint.combine`` must be deterministic (no dropout), which the Joint is.
    """

    @staticmethod
    def forward(ctx, joint, t_chunk: int, blank: int, labels: Tensor, e: Tensor, p: Tensor, *params: Tensor):
        dev = e.device.type
        ctx.amp = (dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        ctx.joint, ctx.t_chunk, ctx.blank, ctx.params = joint, t_chunk, blank, params
        blanks, labs, lses = [], [], []
        for t0 in range(0, e.shape[1], t_chunk):
            sl = slice(t0, t0 + t_chunk)
            logits = joint.combine(e[:, sl, None], _frames(p, sl))  # (B, t, N, V+1)
            lb, ll, lse = _gather_log_probs(logits, _frames(labels, sl), blank)
            blanks.append(lb)
            labs.append(ll)
            lses.append(lse)
        ctx.save_for_backward(e, p, labels, torch.cat(lses, dim=1))  # lse: (B, T, N), small
        return torch.cat(blanks, dim=1), torch.cat(labs, dim=1)  # 2 x (B, T, N)

    @staticmethod
    def backward(ctx, g_blank: Tensor, g_label: Tensor):
        e, p, labels, lse = ctx.saved_tensors
        dev, amp_on, amp_dtype = ctx.amp
        grad_e = torch.zeros_like(e)
        grad_p = torch.zeros_like(p)
        grad_params: list[Tensor | None] = [None] * len(ctx.params)
        for t0 in range(0, e.shape[1], ctx.t_chunk):
            sl = slice(t0, t0 + ctx.t_chunk)
            e_leaf = e[:, sl].detach().requires_grad_(True)
            p_leaf = _frames(p, sl).detach().requires_grad_(True)
            with torch.enable_grad(), torch.autocast(dev, dtype=amp_dtype, enabled=amp_on):
                logits = ctx.joint.combine(e_leaf[:, :, None], p_leaf)  # (B, t, N, V+1)
            with torch.autocast(dev, enabled=False):
                grad = _grad_logits(logits.detach(), lse[:, sl], _frames(labels, sl), ctx.blank, g_blank[:, sl],
                                    g_label[:, sl])
            grads = torch.autograd.grad(logits, [e_leaf, p_leaf, *ctx.params], grad, allow_unused=True)
            grad_e[:, sl] = grads[0]
            if p.shape[1] == 1:
                grad_p += grads[1]
            else:
                grad_p[:, sl] = grads[1]
            for i, g in enumerate(grads[2:]):
                if g is not None:
                    grad_params[i] = g if grad_params[i] is None else grad_params[i] + g
        return (None, None, None, None, grad_e, grad_p, *grad_params)


def auto_t_chunk(batch: int, frames: int, nodes_u: int, joint_dim: int, n_out: int,
                 budget_mib: float = DEFAULT_BUDGET_MIB) -> int:
    """Frames per joint slice so that one slice's temporaries fit in ``budget_mib``.

    Per lattice node the backward of a slice holds about 2 hidden-size tensors (pre- and
    post-activation) and 3 output-size ones (logits, softmax/gradient, gradient of hidden),
    4 bytes each.
    """
    per_frame = batch * nodes_u * (2 * joint_dim + 3 * n_out) * 4
    return int(max(1, min(frames, budget_mib * 2**20 // max(per_frame, 1))))


def lattice_log_probs(joint, enc: Tensor, pred: Tensor, targets: Tensor, blank: int,
                      t_chunk: int = 0) -> tuple[Tensor, Tensor]:
    """lp_blank (B, T, U+1) and lp_label (B, T, U), float32, without the full joint tensor.

    ``targets`` must already hold legal ids (0..V-1) everywhere, padding included.
    """
    e = joint.project_encoder(enc)  # (B, T, J)
    p = joint.project_prediction(pred)  # (B, U+1, J)
    labels = torch.cat([targets, targets.new_zeros(e.shape[0], 1)], dim=1)  # (B, U+1); last column unused
    lp_blank, lp_label = sliced_joint_log_probs(joint, e, p[:, None], labels[:, None], blank, t_chunk)
    return lp_blank, lp_label[:, :, :-1]  # (B, T, U+1) -> (B, T, U)


def sliced_joint_log_probs(joint, e: Tensor, p: Tensor, labels: Tensor, blank: int, t_chunk: int = 0,
                           budget_mib: float = DEFAULT_BUDGET_MIB) -> tuple[Tensor, Tensor]:
    """Projected e (B, T, J), p (B, 1 or T, N, J), labels (B, 1 or T, N) -> lp_blank, lp_label (B, T, N).

    The joint slice by slice (see :class:`_SlicedJoint`); ``t_chunk`` 0 = from ``budget_mib``.
    """
    b, t, j = e.shape
    if t_chunk <= 0:
        t_chunk = auto_t_chunk(b, t, p.shape[2], j, blank + 1, budget_mib)
    params = [q for q in joint.parameters() if q.requires_grad]
    return _SlicedJoint.apply(joint, t_chunk, blank, labels, e, p, *params)


def mask_padding(lp_blank: Tensor, lp_label: Tensor, enc_lengths: Tensor,
                 target_lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Zero the lattice outside each utterance, so padding cannot reach valid nodes' gradients."""
    _, t, u1 = lp_blank.shape
    dev = lp_blank.device
    in_t = torch.arange(t, device=dev)[None, :, None] < enc_lengths.to(dev)[:, None, None]  # (B, T, 1)
    in_u = torch.arange(u1, device=dev)[None, None, :] <= target_lengths.to(dev)[:, None, None]  # (B, 1, U+1)
    lp_blank = torch.where(in_t & in_u, lp_blank, torch.zeros_like(lp_blank))
    lp_label = torch.where(in_t & in_u[:, :, 1:], lp_label, torch.zeros_like(lp_label))
    return lp_blank, lp_label


def sequence_losses(alpha: Tensor, lp_blank: Tensor, enc_lengths: Tensor, target_lengths: Tensor) -> Tensor:
    """-log P(y | x) per utterance (B,) float32: -(alpha + lp_blank) at (T_b - 1, U_b).

    Utterances with no frames (T_b = 0) cannot emit the final blank: their loss is inf.
    """
    dev = alpha.device
    b_idx = torch.arange(alpha.shape[0], device=dev)
    t_last = (enc_lengths.to(dev).long() - 1).clamp(min=0)
    u_last = target_lengths.to(dev).long()
    ll = alpha[b_idx, t_last, u_last] + lp_blank.double()[b_idx, t_last, u_last]  # (B,)
    loss = (-ll).to(lp_blank.dtype)  # float32 (float64 only when the joint runs in float64)
    return torch.where(enc_lengths.to(dev) > 0, loss, torch.full_like(loss, float("inf")))


def _check(enc: Tensor, pred: Tensor, targets: Tensor, enc_lengths: Tensor, target_lengths: Tensor,
           blank: int) -> Tensor:
    """Validate shapes and ids; return targets with padding replaced by a legal id (0)."""
    if enc.dim() != 3 or pred.dim() != 3 or targets.dim() != 2:
        raise ValueError(
            f"rnnt_loss: expected enc (B, T, De), pred (B, U+1, Dp), targets (B, U); got "
            f"{tuple(enc.shape)}, {tuple(pred.shape)}, {tuple(targets.shape)}"
        )
    b, t, _ = enc.shape
    u = targets.shape[1]
    if pred.shape[0] != b or targets.shape[0] != b or pred.shape[1] != u + 1:
        raise ValueError(
            f"rnnt_loss: pred must be (B={b}, U+1={u + 1}, Dp) for targets of shape {tuple(targets.shape)}; "
            f"got pred {tuple(pred.shape)} (did you feed the prediction network the targets?)"
        )
    if enc_lengths.shape != (b,) or target_lengths.shape != (b,):
        raise ValueError(f"rnnt_loss: enc_lengths and target_lengths must be (B={b},)")
    if b and (int(enc_lengths.max()) > t or int(enc_lengths.min()) < 0):
        raise ValueError(f"rnnt_loss: enc_lengths must lie in 0..{t} (the frames of enc), got {enc_lengths.tolist()}")
    if b and (int(target_lengths.max()) > u or int(target_lengths.min()) < 0):
        raise ValueError(f"rnnt_loss: target_lengths must lie in 0..{u} (the columns of targets)")
    valid = torch.arange(u, device=targets.device)[None] < target_lengths.to(targets.device)[:, None]  # (B, U)
    ids = targets[valid]
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= blank):
        raise ValueError(
            f"rnnt_loss: target ids must lie in 0..{blank - 1} (blank is {blank}); got values from "
            f"{int(ids.min())} to {int(ids.max())}. Is the tokenizer the one the model was built for?"
        )
    return torch.where(valid, targets, torch.zeros_like(targets)).long()


def rnnt_loss(joint, enc: Tensor, pred: Tensor, targets: Tensor, enc_lengths: Tensor, target_lengths: Tensor,
              blank: int, reduction: Reduction = "mean_tokens", t_chunk: int = 0,
              zero_infinity: bool = True) -> tuple[Tensor, int]:
    """Native, memory-efficient RNN-T loss; returns (loss, n_infeasible). See the module doc.

    ``joint`` is an :class:`asrlib.model.heads.Joint` (anything with project_encoder,
    project_prediction and combine). ``t_chunk`` = frames per joint slice, 0 = chosen from a
    {budget} MiB budget. Gradients reach enc, pred and the joint's parameters.
    """
    targets = _check(enc, pred, targets, enc_lengths, target_lengths, blank)
    if enc.shape[1] == 0:  # no frames anywhere: every utterance is infeasible
        per_utt = torch.full((enc.shape[0],), float("inf"), device=enc.device) + 0 * enc.sum() + 0 * pred.sum()
        return reduce_losses(per_utt, target_lengths, reduction, zero_infinity)
    lp_blank, lp_label = lattice_log_probs(joint, enc, pred, targets, blank, t_chunk)
    lp_blank, lp_label = mask_padding(lp_blank, lp_label, enc_lengths, target_lengths)
    per_utt, _, _ = lattice_loss(lp_blank, lp_label, enc_lengths, target_lengths)  # (B,)
    return reduce_losses(per_utt, target_lengths, reduction, zero_infinity)


rnnt_loss.__doc__ = rnnt_loss.__doc__.replace("{budget}", str(DEFAULT_BUDGET_MIB))


def rnnt_loss_torchaudio(joint, enc: Tensor, pred: Tensor, targets: Tensor, enc_lengths: Tensor,
                         target_lengths: Tensor, blank: int, reduction: Reduction = "mean_tokens",
                         t_chunk: int = 0, zero_infinity: bool = True) -> tuple[Tensor, int]:
    """Same contract, computed by ``torchaudio.functional.rnnt_loss`` on the FULL joint tensor.

    Faster on GPU for small shapes, but holds (B, T, U+1, V+1) logits; ``t_chunk`` is ignored.
    """
    try:
        from torchaudio.functional import rnnt_loss as ta_rnnt_loss
    except ImportError as e:
        raise ImportError(
            "rnnt backend 'torchaudio' needs torchaudio: `pip install torchaudio` (matching your torch "
            "version), or set loss.rnnt_backend = \"native\""
        ) from e
    targets = _check(enc, pred, targets, enc_lengths, target_lengths, blank)
    logits = joint(enc, pred).float()  # (B, T, U+1, V+1)
    lengths = enc_lengths.to(logits.device).int()
    per_utt = ta_rnnt_loss(
        logits, targets.int(), lengths.clamp(min=1), target_lengths.to(logits.device).int(),
        blank=blank, reduction="none", clamp=-1,
    )  # (B,)
    per_utt = torch.where(lengths > 0, per_utt, torch.full_like(per_utt, float("inf")))
    return reduce_losses(per_utt, target_lengths, reduction, zero_infinity)


def torchaudio_available() -> bool:
    try:
        import torchaudio.functional  # noqa: F401
    except ImportError:
        return False
    return True


def rnnt_loss_any(joint, enc: Tensor, pred: Tensor, targets: Tensor, enc_lengths: Tensor, target_lengths: Tensor,
                  blank: int, reduction: Reduction = "mean_tokens", t_chunk: int = 0, zero_infinity: bool = True,
                  backend: str = "auto") -> tuple[Tensor, int]:
    """Dispatch on ``backend``: "native", "torchaudio", or "auto" (torchaudio if importable)."""
    if backend not in ("auto", "native", "torchaudio"):
        raise ValueError(f"rnnt backend {backend!r}: expected 'auto', 'native' or 'torchaudio'")
    use_ta = backend == "torchaudio" or (backend == "auto" and torchaudio_available())
    fn = rnnt_loss_torchaudio if use_ta else rnnt_loss
    return fn(joint, enc, pred, targets, enc_lengths, target_lengths, blank, reduction, t_chunk, zero_infinity)
