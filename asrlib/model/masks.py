"""Attention masks as pure functions: the chunked causal mask and key padding.

Convention: a boolean mask is ``True`` where attention is ALLOWED (the convention of
``torch.nn.functional.scaled_dot_product_attention``).

The chunked causal mask splits time into chunks of ``chunk_size`` frames. Frame ``t`` (chunk
``c_t = t // chunk_size``) may attend to frame ``s`` iff ``c_t - left_chunks <= c_s <= c_t``:
every frame of its own chunk (also the later ones in that chunk) and of the ``left_chunks``
chunks before it, nothing in later chunks. Streaming reproduces this exactly by processing one
chunk at a time with a cache of the last ``left_chunks * chunk_size`` frames.

Everything is ``arange`` arithmetic (no Python loop over frames), so it traces into ONNX.

Shapes: B batch, T time (queries and keys of a whole sequence), L cached frames, Tc chunk frames.
"""

from __future__ import annotations

import torch
from torch import Tensor


def chunk_mask(T: int, chunk_size: int, left_chunks: int, device=None) -> Tensor:
    """(T, T) bool: ``[t, s]`` is True where query frame t may attend to key frame s."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 frame, got {chunk_size}")
    if left_chunks < 0:
        raise ValueError(f"left_chunks must be >= 0, got {left_chunks}")
    chunk = torch.arange(T, device=device) // chunk_size  # (T,) chunk index of each frame
    diff = chunk[:, None] - chunk[None, :]  # (T, T) c_t - c_s
    return (diff >= 0) & (diff <= left_chunks)


def key_padding_mask(lengths: Tensor, T: int) -> Tensor:
    """(B, T) bool: True for valid frames (``t < lengths[b]``); padding sits at the end."""
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]  # (B, T)


def stream_key_mask(pos: Tensor, cache_len: int, chunk_len: int) -> Tensor:
    """(B, L + Tc) bool: valid keys of one streaming step over ``[cache (L) ; chunk (Tc)]``.

    Cache slot ``j`` holds absolute frame ``pos - L + j``; it is valid iff that frame exists,
    i.e. ``j >= L - pos``. All ``Tc`` frames of the current chunk are valid.
    """
    j = torch.arange(cache_len + chunk_len, device=pos.device)  # (L + Tc,)
    return j[None, :] >= (cache_len - pos)[:, None]  # (B, L + Tc)
