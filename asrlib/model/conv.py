"""Conformer convolution module, causal, with LayerNorm/RMSNorm (never BatchNorm).

    x -> Linear(D, 2D) -> GLU -> causal depthwise Conv1d (kernel k, k-1 zeros on the left)
      -> LayerNorm | RMSNorm -> SiLU -> Linear(D, D) -> dropout

The input is already normed by the block (pre-norm is the block's job). BatchNorm is avoided
because its batch statistics differ between training and streaming and see padded frames.

Streaming: :class:`ConvCache` holds the last k-1 GLU outputs (zeros at the start = the left
padding); ``step`` accepts any chunk length >= 1 (0 returns an empty chunk).

Shapes:
    x (B, T, D) -> y (B, T, D); inside the depthwise conv (B, D, T)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F_
from torch import Tensor, nn

from asrlib.config import ConvModuleConfig
from asrlib.model.dropout import Dropout
from asrlib.model.norm import RMSNorm


def depthwise_step(conv: nn.Conv1d, window: Tensor) -> Tensor:
    """A depthwise ``conv`` (no padding) over a short window (B, C, k-1 + Tc) -> (B, C, Tc).

    For a streaming chunk of a few frames, the multiply-and-sum over the k taps costs a third of
    oneDNN's convolution call on a CPU (whose fixed cost dominates at this size); the ONNX
    export, which traces, keeps the convolution, which onnxruntime runs well. Same numbers."""
    if torch.jit.is_tracing() or window.is_cuda:
        return conv(window)
    taps = window.unfold(2, conv.kernel_size[0], 1)  # (B, C, Tc, k)
    out = (taps * conv.weight[:, 0][:, None, :]).sum(-1)  # (B, C, Tc)
    return out if conv.bias is None else out + conv.bias[:, None]


@dataclass
class ConvCache:
    """Last k-1 GLU outputs, channels first: x (B, D, k-1)."""

    x: Tensor


class ConvModule(nn.Module):
    """Pointwise-GLU -> causal depthwise conv -> norm -> SiLU -> pointwise; (B, T, D) -> (B, T, D)."""

    def __init__(self, d_model: int, cfg: ConvModuleConfig, dropout: float = 0.0):
        super().__init__()
        if cfg.kernel_size < 1:
            raise ValueError(f"encoder.conv.kernel_size must be >= 1, got {cfg.kernel_size}")
        self.cfg = cfg
        self.d_model = d_model
        self.k = cfg.kernel_size
        self.pw_in = nn.Linear(d_model, 2 * d_model)
        self.depthwise = nn.Conv1d(d_model, d_model, self.k, groups=d_model)
        if cfg.norm == "layernorm":
            self.norm: nn.Module = nn.LayerNorm(d_model)
        elif cfg.norm == "rmsnorm":
            self.norm = RMSNorm(d_model)
        else:
            raise ValueError(f"encoder.conv.norm must be 'layernorm' or 'rmsnorm', got {cfg.norm!r}")
        self.act = nn.SiLU()
        self.pw_out = nn.Linear(d_model, d_model)
        self.dropout = Dropout(dropout)

    def _glu(self, x: Tensor) -> Tensor:
        return F_.glu(self.pw_in(x), dim=-1).transpose(1, 2)  # (B, T, 2D) -> (B, T, D) -> (B, D, T)

    def _after_conv(self, h: Tensor) -> Tensor:
        h = h.transpose(1, 2)  # (B, D, T) -> (B, T, D)
        return self.dropout(self.pw_out(self.act(self.norm(h))))

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """x (B, T, D) -> (B, T, D). Causal, so end padding cannot reach valid frames."""
        h = F_.pad(self._glu(x), (self.k - 1, 0))  # (B, D, k-1 + T)
        return self._after_conv(self.depthwise(h))

    def init_state(self, batch: int, device: torch.device | str | None = None) -> ConvCache:
        w = self.pw_in.weight
        dev = device if device is not None else w.device
        return ConvCache(x=torch.zeros(batch, self.d_model, self.k - 1, device=dev, dtype=w.dtype))

    def step(self, x: Tensor, state: ConvCache) -> tuple[Tensor, ConvCache]:
        """x (B, Tc, D) -> y (B, Tc, D), new cache."""
        if x.shape[1] == 0:
            return x, state
        h = torch.cat([state.x.to(x.dtype), self._glu(x)], dim=2)  # (B, D, k-1 + Tc)
        new_state = ConvCache(x=h[:, :, h.shape[2] - (self.k - 1) :])  # (B, D, k-1)
        return self._after_conv(depthwise_step(self.depthwise, h)), new_state
