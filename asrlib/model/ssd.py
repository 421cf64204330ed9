"""The SSD scan of Mamba2: a chunked, matrix-form evaluation and its plain reference loop.

The state-space recurrence, per batch item and head h (state h_t is a P x N matrix):

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * x_t B_t^T        (x_t: P,  B_t: N)
    y_t = h_t C_t                                            (C_t: N,  y_t: P)

``ssd_sequential`` runs this loop frame by frame: obviously right, slow. ``ssd_chunked``
computes the same numbers with a few large matrix products (the "state-space duality"), and
``ssd_one_chunk`` does so for a sequence that fits one chunk (the streaming step):

1. split time into chunks of Q frames;
2. inside a chunk, y is a masked attention-like product  y_l = sum_{s<=l} (C_l.B_s) L_ls dt_s x_s
   whose mask L_ls = exp(a_{s+1} + ... + a_l), a = dt * A, is built from segment sums;
3. each chunk's contribution to the state at its end is a decayed sum of dt_s x_s B_s^T;
4. the states entering each chunk follow from a short recurrence over chunks, evaluated
   with the same segment-sum trick (one chunk-level "decay matrix");
5. each frame adds C_l . (state entering its chunk) decayed to frame l.

Segment sums are taken in log space by a cumulative sum of a masked matrix, never as a
difference of two long cumsums (that loses precision when sums grow large and negative);
``exp(-inf) = 0`` then realises the causal mask. Everything runs in at least float32.

Shapes: B batch, T time, H heads, P head dim, G groups of B/C (head h uses group h // (H/G)),
N state dim, Q chunk length, K number of chunks (T padded to K * Q).
    x (B, T, H, P), dt (B, T, H) (already softplus'ed, > 0), A (H,) (< 0),
    B_ (B, T, G, N), C (B, T, G, N), initial_state (B, H, P, N) or None
    -> y (B, T, H, P), final_state (B, H, P, N)
The D skip term (y += D * x) is the mixer's job, not this function's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64; half precisions and float32 compute in float32."""
    return torch.promote_types(x.dtype, torch.float32)


def expand_groups(m: Tensor, n_heads: int) -> Tensor:
    """(B, T, G, N) -> (B, T, H, N): head h reads group h // (H // G)."""
    b, t, g, n = m.shape
    if n_heads % g != 0:
        raise ValueError(f"ngroups={g} must divide the number of heads {n_heads}")
    m = m[:, :, :, None, :].expand(b, t, g, n_heads // g, n)  # (B, T, G, H/G, N)
    return m.reshape(b, t, n_heads, n)  # (B, T, H, N)


def segsum(a: Tensor) -> Tensor:
    """Segment sums: out[..., i, j] = a[..., j+1] + ... + a[..., i] for i >= j, -inf above.

    a (..., Q) -> (..., Q, Q). exp(out) is the decay from frame j to frame i (1 on the
    diagonal, 0 where j is in the future of i).
    """
    q = a.shape[-1]
    rows = a[..., :, None].expand(*a.shape, q)  # (..., Q, Q): rows[..., i, j] = a_i
    strictly_lower = torch.ones(q, q, dtype=torch.bool, device=a.device).tril(-1)
    rows = rows.masked_fill(~strictly_lower, 0.0)  # keep a_i only where i > j
    sums = rows.cumsum(dim=-2)  # (..., Q, Q): sum of a_k for j < k <= i
    lower = torch.ones(q, q, dtype=torch.bool, device=a.device).tril(0)
    return sums.masked_fill(~lower, float("-inf"))


def ssd_chunked(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B_: Tensor,
    C: Tensor,
    chunk_size: int,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Chunked SSD scan; see the module docstring. Any T >= 1 and any chunk_size >= 1."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    bsz, t, h, p = x.shape
    n = B_.shape[-1]
    out_dtype = x.dtype
    cd = _compute_dtype(x)
    x, dt, A, B_, C = (v.to(cd) for v in (x, dt, A, B_, C))
    Bh, Ch = expand_groups(B_, h), expand_groups(C, h)  # (B, T, H, N) each

    # Pad the END with zeros up to K * Q frames: dt = 0 there, so a padded frame neither
    # decays the state (exp(0) = 1) nor feeds it (dt * x = 0); the final state is that of
    # the last real frame.
    q = chunk_size
    pad = (-t) % q
    if pad:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        Bh = F.pad(Bh, (0, 0, 0, 0, 0, pad))
        Ch = F.pad(Ch, (0, 0, 0, 0, 0, pad))
    k = (t + pad) // q

    xdt = x * dt[..., None]  # (B, KQ, H, P): the input actually fed to the state
    xdt = xdt.reshape(bsz, k, q, h, p)  # (B, K, Q, H, P)
    Bc = Bh.reshape(bsz, k, q, h, n)  # (B, K, Q, H, N)
    Cc = Ch.reshape(bsz, k, q, h, n)  # (B, K, Q, H, N)
    a = (dt * A).reshape(bsz, k, q, h).permute(0, 1, 3, 2)  # (B, K, H, Q): log-decay per frame
    a_cum = a.cumsum(dim=-1)  # (B, K, H, Q): log-decay from chunk start to frame l (inclusive)

    # 2. Inside each chunk: attention-like product with the decay mask.
    decay = torch.exp(segsum(a))  # (B, K, H, Q, Q): frame s -> frame l
    scores = torch.einsum("bklhn,bkshn->bkhls", Cc, Bc) * decay  # (B, K, H, Q, Q)
    y_intra = torch.einsum("bkhls,bkshp->bklhp", scores, xdt)  # (B, K, Q, H, P)

    # 3. What each chunk alone adds to the state at its end.
    to_end = torch.exp(a_cum[..., -1:] - a_cum)  # (B, K, H, Q): frame s -> end of chunk
    xw = xdt * to_end.permute(0, 1, 3, 2)[..., None]  # (B, K, Q, H, P)
    chunk_states = torch.einsum("bkshp,bkshn->bkhpn", xw, Bc)  # (B, K, H, P, N)

    # 4. States entering each chunk: S_0 = initial, S_{k+1} = exp(sum a in chunk k) S_k + chunk_states_k.
    if initial_state is None:
        initial_state = torch.zeros(bsz, h, p, n, dtype=cd, device=x.device)
    all_states = torch.cat([initial_state.to(cd)[:, None], chunk_states], dim=1)  # (B, K+1, H, P, N)
    chunk_log_decay = F.pad(a_cum[..., -1], (0, 0, 1, 0))  # (B, K+1, H): 0 for the initial state
    chunk_decay = torch.exp(segsum(chunk_log_decay.transpose(1, 2)))  # (B, H, K+1, K+1)
    states = torch.einsum("bhij,bjhpn->bihpn", chunk_decay, all_states)  # (B, K+1, H, P, N)
    entering, final_state = states[:, :-1], states[:, -1]  # (B, K, H, P, N), (B, H, P, N)

    # 5. Each frame reads the state that entered its chunk, decayed up to that frame.
    y_inter = torch.einsum("bklhn,bkhpn->bklhp", Cc, entering)  # (B, K, Q, H, P)
    y_inter = y_inter * torch.exp(a_cum).permute(0, 1, 3, 2)[..., None]  # (B, K, Q, H, P)

    y = (y_intra + y_inter).reshape(bsz, k * q, h, p)[:, :t]  # (B, T, H, P)
    return y.to(out_dtype), final_state


def ssd_one_chunk(x: Tensor, dt: Tensor, A: Tensor, B_: Tensor, C: Tensor,
                  initial_state: Tensor) -> tuple[Tensor, Tensor]:
    """``ssd_chunked`` for a sequence that is one chunk (a streaming step), as plain batched
    matrix products over (B, H): steps 2, 3 and 5 above with K = 1 and no padding, and the
    state update of step 4 written out. The same numbers in about half the operations, since
    the chunk-level recurrence and the padding vanish; the same signature as ``ssd_chunked``
    less ``chunk_size`` (any T >= 1: the whole input is the chunk)."""
    h = x.shape[2]
    out_dtype = x.dtype
    cd = _compute_dtype(x)
    x, dt, A, B_, C = (v.to(cd) for v in (x, dt, A, B_, C))
    state = initial_state.to(cd)  # (B, H, P, N)
    Bh = expand_groups(B_, h).transpose(1, 2)  # (B, H, T, N)
    Ch = expand_groups(C, h).transpose(1, 2)  # (B, H, T, N)
    a = (dt * A).transpose(1, 2)  # (B, H, T): log-decay per frame
    a_cum = a.cumsum(-1)  # (B, H, T): log-decay from the chunk start to frame l
    xdt = (x * dt[..., None]).transpose(1, 2)  # (B, H, T, P)
    decay = torch.exp(segsum(a))  # (B, H, T, T): frame s -> frame l
    y = ((Ch @ Bh.transpose(-1, -2)) * decay) @ xdt  # (B, H, T, P): inside the chunk
    y = y + (Ch @ state.transpose(-1, -2)) * torch.exp(a_cum)[..., None]  # + the entering state, decayed
    to_end = torch.exp(a_cum[..., -1:] - a_cum)[..., None]  # (B, H, T, 1): frame s -> end of the chunk
    final = torch.exp(a_cum[..., -1])[..., None, None] * state + (xdt * to_end).transpose(-1, -2) @ Bh
    return y.transpose(1, 2).to(out_dtype), final  # (B, T, H, P), (B, H, P, N)


def ssd_sequential(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B_: Tensor,
    C: Tensor,
    chunk_size: int = 0,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Reference: the recurrence one frame at a time. ``chunk_size`` is ignored (same signature)."""
    bsz, t, h, p = x.shape
    n = B_.shape[-1]
    out_dtype = x.dtype
    cd = _compute_dtype(x)
    x, dt, A, B_, C = (v.to(cd) for v in (x, dt, A, B_, C))
    Bh, Ch = expand_groups(B_, h), expand_groups(C, h)  # (B, T, H, N)
    state = torch.zeros(bsz, h, p, n, dtype=cd, device=x.device) if initial_state is None else initial_state.to(cd)
    ys = []
    for i in range(t):
        keep = torch.exp(dt[:, i] * A)[:, :, None, None]  # (B, H, 1, 1)
        inp = (dt[:, i, :, None] * x[:, i])[..., None] * Bh[:, i, :, None, :]  # (B, H, P, N)
        state = keep * state + inp
        ys.append((state * Ch[:, i, :, None, :]).sum(-1))  # (B, H, P)
    y = torch.stack(ys, dim=1)  # (B, T, H, P)
    return y.to(out_dtype), state
