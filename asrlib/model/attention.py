"""Grouped-query self-attention with RoPE and the chunked causal mask, plus its streaming step.

H query heads share K key/value groups (H a multiple of K): query head ``h`` reads group
``h // (H / K)``. K = H is ordinary multi-head attention, K = 1 multi-query attention. SDPA's
``enable_gqa`` flag is avoided because it does not export to ONNX everywhere: instead the
G = H / K query heads of a group are stacked along the query axis (a reshape), so every path
attends with K heads of G * Tq queries and the keys and values are never copied per head.

Training (``forward``) is computed chunk by chunk: the queries of each chunk of
``chunk_size`` frames attend to the window of their own and their ``left_chunks`` previous
chunks (:mod:`asrlib.model.chunk_windows`), all chunks in one batched SDPA call, so time and
memory grow as O(T * W) with W = (left_chunks + 1) * chunk_size, not O(T^2). ``forward_dense``
is the reference it is tested against: full (T, T) scores under the chunk mask of
:mod:`asrlib.model.masks` AND the key padding mask. Both keep each query's own frame, so
padded queries stay finite. Streaming (``step``) feeds one chunk at a time; the
:class:`AttentionCache` keeps the post-RoPE keys/values of the last
``L = left_chunks * chunk_size`` frames, so the queries of a chunk see
``[cache (L) ; chunk (Tc)]`` — exactly the rows of the chunk mask. Keys are rotated with their
absolute positions once, when they enter the cache.

Shapes: B batch, T time, D model dim, H query heads, K kv groups, P head dim (D // H),
L cached frames, Tc frames in one streaming chunk, C chunk size, M = ceil(T / C) chunks,
W = L + C key window of one chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asrlib.config import AttentionConfig
from asrlib.model.chunk_windows import chunk_windows, num_chunks, pad_time_to_chunks, window_key_mask
from asrlib.model.masks import chunk_mask, key_padding_mask, stream_key_mask
from asrlib.model.rope import RotaryEmbedding, rotate


@dataclass
class AttentionCache:
    """Streaming state of one attention layer (fixed size, batch first).

    k, v: (B, K, L, P) post-RoPE keys and values of the last L frames (zeros before the start).
    pos:  (B,) long, frames this stream has seen so far (absolute position of the next frame).
    """

    k: Tensor
    v: Tensor
    pos: Tensor


@dataclass
class StepShared:
    """What one streaming step of every attention block of an encoder has in common: the blocks
    hold the same position and step by the same chunk, so ``Encoder.step`` computes it once."""

    mask: Tensor  # (B, 1, 1, L + Tc) bool: the valid keys of [cache ; chunk]
    cos: Tensor  # (B, 1, Tc, P) RoPE angles of the chunk's frames
    sin: Tensor  # (B, 1, Tc, P)


class GroupedQueryAttention(nn.Module):
    """Chunk-causal GQA. ``chunk_size`` and the cache are in ENCODER frames.

    forward: x (B, T, D), lengths (B,) or None -> (B, T, D)
    step:    x (B, Tc, D), AttentionCache -> (B, Tc, D), AttentionCache   (1 <= Tc <= chunk_size;
             Tc < chunk_size only for the final flush)
    """

    def __init__(self, d_model: int, cfg: AttentionConfig, chunk_size: int, left_chunks: int):
        super().__init__()
        H, K = cfg.n_heads, cfg.kv_heads()
        if d_model % H:
            raise ValueError(f"d_model={d_model} must be divisible by attention.n_heads={H}")
        if H % K:
            raise ValueError(
                f"attention.n_heads={H} must be a multiple of attention.n_kv_heads={K} "
                "(each group of query heads shares one key/value head)"
            )
        if chunk_size < 1 or left_chunks < 0:
            raise ValueError(f"need chunk_size >= 1 and left_chunks >= 0, got {chunk_size}, {left_chunks}")
        self.cfg = cfg
        self.n_heads, self.n_kv, self.head_dim = H, K, d_model // H
        self.chunk_size, self.left_chunks = chunk_size, left_chunks
        self.cache_len = left_chunks * chunk_size  # L
        P = self.head_dim
        self.q_proj = nn.Linear(d_model, H * P, bias=False)
        self.kv_proj = nn.Linear(d_model, 2 * K * P, bias=False)  # fused k and v
        self.out_proj = nn.Linear(H * P, d_model, bias=False)
        self.rope = RotaryEmbedding(P, cfg.rope_base)

    # ------------------------------------------------------------------ shared pieces

    def _project(self, x: Tensor, positions: Tensor | None = None,
                 angles: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, D) -> q (B, H, T, P), k (B, K, T, P), v (B, K, T, P); q and k rotated by the
        RoPE angles of ``positions`` (T,) or (B, T), or by ``angles`` = (cos, sin) computed before."""
        B, T, _ = x.shape
        P = self.head_dim
        q = self.q_proj(x).view(B, T, self.n_heads, P).transpose(1, 2)  # (B, H, T, P)
        kv = self.kv_proj(x).view(B, T, 2, self.n_kv, P)  # (B, T, 2, K, P)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, K, T, P) each
        if angles is None:
            cos, sin = self.rope.cos_sin(positions, q.dtype)  # the same angles for queries and keys
        else:
            cos, sin = angles[0].to(q.dtype), angles[1].to(q.dtype)
        qk = rotate(torch.cat((q, k), dim=1), cos, sin)  # (B, H + K, T, P): one rotation for both
        return qk[:, : self.n_heads], qk[:, self.n_heads :], v

    def _sdpa(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """q (X, Hx, Tq, P), k/v (X, Hx, S, P), mask (X|1, 1, Tq, S) bool -> (X, Hx, Tq, P).

        X is B (whole sequences) or B * M (chunks); Hx is H, or K with the G query heads of a
        group stacked along Tq."""
        p = self.cfg.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (X, H, Tq, P)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """q (B, H, Tq, P), k/v (B, K, S, P), mask (B|1, 1, Tq|1, S) bool -> (B, Tq, D).

        As in ``forward``, the G = H / K query heads of a group are stacked along the query
        axis (head h = k * G + g), so the keys and values are read once per group, never copied."""
        B, H, Tq, P = q.shape
        K = self.n_kv
        G = H // K
        if mask.shape[-2] != 1:  # one mask row per query: repeat the rows for the G stacked heads
            mask = mask.repeat(1, 1, G, 1)  # (B|1, 1, G*Tq, S)
        y = self._sdpa(q.reshape(B, K, G * Tq, P), k, v, mask)  # (B, K, G*Tq, P)
        # Split, never merge, before the permute: on CUDA, SDPA returns (B, K, G*Tq, P) stored as
        # (B, G*Tq, K, P), where K and G cannot be merged into H by a view.
        y = y.view(B, K, G, Tq, P).permute(0, 3, 1, 2, 4).reshape(B, Tq, H * P)  # (B, Tq, H*P)
        return self.out_proj(y)

    # ------------------------------------------------------------------ training path

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Chunk by chunk: x (B, T, D), lengths (B,) or None -> (B, T, D). Equals forward_dense."""
        B, T, _ = x.shape
        H, P, C = self.n_heads, self.head_dim, self.chunk_size
        M = num_chunks(T, C)
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long, device=x.device)
        K, G = self.n_kv, H // self.n_kv  # kv groups, query heads per group
        q, k, v = self._project(x, torch.arange(T, device=x.device))
        # The G query heads of a kv group are stacked along the query axis (the mask does not
        # depend on the head), so the key windows are never repeated per query head.
        q = pad_time_to_chunks(q, C).view(B, K, G, M, C, P)  # (B, K, G, M, C, P)
        q = q.permute(0, 3, 1, 2, 4, 5).reshape(B * M, K, G * C, P)  # (B*M, K, G*C, P)
        kw = chunk_windows(k, C, self.left_chunks)  # (B, M, K, W, P)
        vw = chunk_windows(v, C, self.left_chunks)  # (B, M, K, W, P)
        W = kw.shape[3]
        kw, vw = kw.reshape(B * M, K, W, P), vw.reshape(B * M, K, W, P)  # (B*M, K, W, P) views
        mask = window_key_mask(lengths, T, C, self.left_chunks)  # (B, M, C, W)
        mask = mask[:, :, None].expand(B, M, G, C, W).reshape(B * M, 1, G * C, W)  # (B*M, 1, G*C, W)
        y = self._sdpa(q, kw, vw, mask)  # (B*M, K, G*C, P)
        y = y.view(B, M, K, G, C, P).permute(0, 1, 4, 2, 3, 5)  # (B, M, C, K, G, P); head = k*G + g
        y = y.reshape(B, M * C, H * P)[:, :T]  # (B, T, H*P)
        return self.out_proj(y)

    def forward_dense(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Reference for ``forward``: (T, T) scores under the chunk and key padding masks.

        x (B, T, D), lengths (B,) or None -> (B, T, D). Memory O(T^2): tests only."""
        B, T, _ = x.shape
        positions = torch.arange(T, device=x.device)  # (T,)
        q, k, v = self._project(x, positions)
        mask = chunk_mask(T, self.chunk_size, self.left_chunks, x.device)[None, None]  # (1, 1, T, T)
        if lengths is not None:
            keys = key_padding_mask(lengths, T)[:, None, None, :]  # (B, 1, 1, T)
            # Keep the diagonal so that padded queries (whose keys may all be padding) stay
            # finite; valid queries already see their own frame, so they are unchanged.
            eye = torch.eye(T, dtype=torch.bool, device=x.device)[None, None]  # (1, 1, T, T)
            mask = (mask & keys) | eye  # (B, 1, T, T)
        return self._attend(q, k, v, mask)

    # ------------------------------------------------------------------ streaming path

    def init_state(
        self, batch: int, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
    ) -> AttentionCache:
        """Empty cache (zeros, all slots masked by pos = 0); dtype defaults to the weights'."""
        dtype = dtype or self.q_proj.weight.dtype
        shape = (batch, self.n_kv, self.cache_len, self.head_dim)  # (B, K, L, P)
        return AttentionCache(
            k=torch.zeros(shape, device=device, dtype=dtype),
            v=torch.zeros(shape, device=device, dtype=dtype),
            pos=torch.zeros(batch, dtype=torch.long, device=device),
        )

    def step_shared(self, pos: Tensor, chunk_len: int, dtype: torch.dtype) -> StepShared:
        """The key mask and RoPE angles of a step from position ``pos`` (B,) over ``chunk_len`` frames."""
        positions = pos[:, None] + torch.arange(chunk_len, device=pos.device)[None, :]  # (B, Tc)
        cos, sin = self.rope.cos_sin(positions, dtype)  # (B, 1, Tc, P) each
        return StepShared(mask=stream_key_mask(pos, self.cache_len, chunk_len)[:, None, None, :], cos=cos, sin=sin)

    def step(self, x: Tensor, state: AttentionCache, shared: StepShared | None = None) -> tuple[Tensor, AttentionCache]:
        """One chunk x (B, Tc, D) -> (B, Tc, D) and the new cache. ``shared``: ``step_shared`` of
        this state's position, when the caller computed it already (``Encoder.step`` does, once
        for all its attention blocks)."""
        Tc = x.shape[1]
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()) and not 1 <= Tc <= self.chunk_size:
            raise ValueError(
                f"step() takes one chunk of 1..{self.chunk_size} frames (full chunks, then one shorter "
                f"final flush), got {Tc}; split the input into chunks of chunk_size frames"
            )
        shared = self.step_shared(state.pos, Tc, x.dtype) if shared is None else shared
        q, k_new, v_new = self._project(x, angles=(shared.cos, shared.sin))
        k = torch.cat((state.k, k_new), dim=2)  # (B, K, L + Tc, P)
        v = torch.cat((state.v, v_new), dim=2)  # (B, K, L + Tc, P)
        y = self._attend(q, k, v, shared.mask)
        # The last L frames of [cache ; chunk] (slice from Tc, not from -L: L may be 0).
        new = AttentionCache(k=k[:, :, Tc:], v=v[:, :, Tc:], pos=state.pos + Tc)
        return y, new
