"""Rotary position embedding (RoPE) with absolute positions given as a tensor.

Each head vector of size P is split in two HALVES (the "rotate_half" layout of GPT-NeoX /
LLaMA, not the interleaved pairs of the original paper): channel ``i`` and channel
``i + P/2`` form a 2-D pair rotated by the angle ``pos * base ** (-2i / P)``. Rotating both
queries and keys makes the score ``q(m) . k(n)`` depend on positions only through ``m - n``.

Positions are passed explicitly, ``(T,)`` for a whole sequence (0 .. T-1) or ``(B, T)`` when
every stream of a batch sits at its own offset (streaming: ``pos + arange(Tc)``). Angles are
computed in FLOAT64 from the integer positions and only cos/sin are cast to the input's dtype:
in float32 the angle ``pos * w`` itself would be off by ~1e-7 * pos radians (1e-4 at frame
1000, 1e-2 after an hour of streaming), breaking the relative-position property. The
frequencies are not a buffer, so that ``model.half()`` or ``.float()`` cannot round them.

Shapes: B batch, H heads, T time, P head dim (even).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def rope_inv_freq(head_dim: int, base: float, device=None) -> Tensor:
    """(P/2,) float64 angular frequencies ``base ** (-2i / P)``."""
    return base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim)


def rotate_half(x: Tensor) -> Tensor:
    """(…, P) -> (…, P): ``[x1, x2] -> [-x2, x1]`` on the two halves."""
    x1, x2 = x.chunk(2, dim=-1)  # (…, P/2) each
    return torch.cat((-x2, x1), dim=-1)


def rope_cos_sin(positions: Tensor, head_dim: int, base: float, dtype: torch.dtype,
                 inv_freq: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """cos, sin (B|1, 1, T, P) of the angles for ``positions`` (T,) or (B, T), computed in float64."""
    pos = positions.to(torch.float64)
    if pos.dim() == 1:
        pos = pos[None, :]  # (1, T)
    freq = rope_inv_freq(head_dim, base, pos.device) if inv_freq is None else inv_freq  # (P/2,)
    angles = pos[:, :, None] * freq  # (B|1, T, P/2)
    angles = torch.cat((angles, angles), dim=-1)[:, None]  # (B|1, 1, T, P)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """``x`` (B, H, T, P) rotated by the angles whose cos/sin (B|1, 1, T, P) are given."""
    return x * cos + rotate_half(x) * sin


def apply_rope(x: Tensor, positions: Tensor, base: float = 10000.0) -> Tensor:
    """Rotate ``x`` (B, H, T, P) by ``positions`` (T,) or (B, T) (integer frames)."""
    return rotate(x, *rope_cos_sin(positions, x.shape[-1], base, x.dtype))


class RotaryEmbedding(nn.Module):
    """``apply_rope`` as a module (no parameters, no buffers: nothing to save or cast).

    ``cos_sin`` once, then ``rotate`` for queries and keys alike: the angles are the same for both.
    The float64 frequencies are kept per device as a plain attribute (not a buffer, so no cast
    reaches them), which saves recomputing P/2 powers on every call of a streaming step.
    """

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head dimension (d_model / n_heads), got {head_dim}")
        self.head_dim, self.base = head_dim, base
        self._freq: dict[torch.device, Tensor] = {}

    def cos_sin(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()  # a graph computes it inline
        freq = None if tracing else self._freq.get(positions.device)
        if freq is None:
            freq = rope_inv_freq(self.head_dim, self.base, positions.device)
            if not tracing:
                self._freq[positions.device] = freq
        return rope_cos_sin(positions, self.head_dim, self.base, dtype, freq)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        return rotate(x, *self.cos_sin(positions, x.dtype))
