"""Key windows of chunk-causal attention: each chunk's own frames and its left chunks' frames.

Under the chunked causal mask (:mod:`asrlib.model.masks`) the queries of chunk ``m`` (frames
``m*C .. m*C + C - 1``) see exactly the keys of chunks ``m - left_chunks .. m``: a window of
``W = (left_chunks + 1) * C`` frames that starts at frame ``m*C - L`` (``L = left_chunks * C``).
Attention computed per chunk against its window costs O(T * W) instead of the O(T^2) of the
dense (T, T) mask, with the same result.

``chunk_windows`` pads time with ``L`` zero frames in front (the frames before t = 0 that do
not exist) and up to a multiple of C at the end, then gathers the overlapping windows with
index arithmetic (``unfold`` would be a view, but it does not export to ONNX with a dynamic
T). ``window_key_mask`` says which window slots are real: slot ``j`` of chunk ``m`` holds frame
``s = m*C - L + j``, valid iff ``0 <= s < length``.
Plain arange arithmetic, pad and indexing: no Python loop over chunks, differentiable, traceable.

Shapes: B batch, K heads (any leading head dim), T time, P head dim, C chunk size,
M = ceil(T / C) chunks, L = left_chunks * C left-context frames, W = L + C window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def num_chunks(T: int, chunk_size: int) -> int:
    """M = ceil(T / C): the last chunk may be partial."""
    return (T + chunk_size - 1) // chunk_size  # not -(-T // C): ONNX integer Div truncates


def pad_time_to_chunks(x: Tensor, chunk_size: int) -> Tensor:
    """x (B, K, T, P) -> (B, K, M*C, P), zero frames appended at the end."""
    T = x.shape[2]
    return F.pad(x, (0, 0, 0, num_chunks(T, chunk_size) * chunk_size - T))  # (B, K, M*C, P)


def chunk_windows(x: Tensor, chunk_size: int, left_chunks: int) -> Tensor:
    """x (B, K, T, P) -> (B, M, K, W, P) contiguous copy: window ``m`` holds frames
    ``m*C - L .. m*C + C - 1`` (zeros where the frame is before 0 or at/after T)."""
    C, L = chunk_size, left_chunks * chunk_size
    x = F.pad(pad_time_to_chunks(x, C), (0, 0, L, 0))  # (B, K, S, P), S = L + M*C
    B, K, S, P = x.shape
    M = (S - L) // C
    dev = x.device
    frame = torch.arange(M, device=dev)[:, None, None] * C + torch.arange(L + C, device=dev)  # (M, 1, W)
    flat = torch.arange(K, device=dev)[None, :, None] * S + frame  # (M, K, W) index into K*S
    w = x.reshape(B, K * S, P).index_select(1, flat.reshape(-1))  # (B, M*K*W, P), one Gather
    return w.view(B, M, K, L + C, P)  # (B, M, K, W, P)


def window_key_mask(lengths: Tensor, T: int, chunk_size: int, left_chunks: int) -> Tensor:
    """(B, M, C, W) bool: True where query ``i`` of chunk ``m`` may attend to window slot ``j``.

    Slot ``j`` is allowed iff its frame ``s = m*C - L + j`` exists (``0 <= s < lengths[b]``).
    The query's own slot (``j = L + i``) is always allowed, as in the dense path: padded
    queries, whose keys may all be padding, stay finite; valid queries see their own frame
    anyway, so they are unchanged.
    """
    C, L = chunk_size, left_chunks * chunk_size
    M = num_chunks(T, C)
    dev = lengths.device
    m = torch.arange(M, device=dev)[:, None, None]  # (M, 1, 1)
    i = torch.arange(C, device=dev)[None, :, None]  # (1, C, 1)
    j = torch.arange(L + C, device=dev)[None, None, :]  # (1, 1, W)
    s = m * C - L + j  # (M, 1, W) absolute key frame of each slot
    exists = (s >= 0)[None] & (s[None] < lengths[:, None, None, None])  # (B, M, 1, W)
    return exists | (j == L + i)[None]  # (B, M, C, W)
