"""One macaron Conformer block: FFN/2 -> mixer -> causal conv -> FFN/2, all pre-norm.

The mixer is grouped-query attention (chunked causal mask) or, in every ``mamba_period``-th
block, a Mamba2 mixer. Every sub-layer is pre-normed (RMSNorm) and residual:

    x = x + 1/2 * FFN1(norm(x))
    x = x + Mixer(norm(x))           # GQA or Mamba2
    x = x + Conv(norm(x))            # causal depthwise conv module
    y = x + 1/2 * FFN2(norm(x))

The original Conformer also normalises the block output (``y = norm(x)``). That norm sits on
the residual path, so every block divides the gradient by the residual's RMS: measured on the
demo preset it shrank the gradient ~3x per block (block 6: 0.30, block 1: 0.002) and the
encoder did not learn in 500 steps. Pure pre-norm keeps the residual path an identity; the
encoder applies one RMSNorm after the last block instead.

Shapes: B batch, T encoder frames, D d_model.
    forward(x (B, T, D), lengths (B,))  -> (B, T, D)
    step(x (B, Tc, D), BlockCache)      -> (B, Tc, D), BlockCache
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
from torch import Tensor, nn

from asrlib.config import EncoderConfig
from asrlib.model.attention import AttentionCache, GroupedQueryAttention, StepShared
from asrlib.model.conv import ConvCache, ConvModule
from asrlib.model.dropout import Dropout
from asrlib.model.ffn import SwiGLU, swiglu_hidden
from asrlib.model.mamba2 import Mamba2Cache, Mamba2Mixer
from asrlib.model.norm import RMSNorm


@dataclass
class BlockCache:
    """Streaming state of one block: its mixer's cache and its conv module's cache."""

    mixer: Union[AttentionCache, Mamba2Cache]
    conv: ConvCache


class ConformerBlock(nn.Module):
    def __init__(self, cfg: EncoderConfig, mixer: str, chunk_size: int):
        """``mixer`` is "gqa" or "mamba2"; ``chunk_size`` is the attention chunk in encoder frames."""
        super().__init__()
        d = cfg.d_model
        hidden = swiglu_hidden(d, cfg.ffn_mult)
        self.kind = mixer
        self.ffn1_norm, self.ffn1 = RMSNorm(d), SwiGLU(d, hidden, cfg.dropout)
        self.mixer_norm = RMSNorm(d)
        if mixer == "gqa":
            self.mixer = GroupedQueryAttention(d, cfg.attention, chunk_size, cfg.left_chunks)
        elif mixer == "mamba2":
            self.mixer = Mamba2Mixer(d, cfg.mamba2)
        else:
            raise ValueError(f"unknown mixer {mixer!r}: expected 'gqa' or 'mamba2'")
        self.conv_norm, self.conv = RMSNorm(d), ConvModule(d, cfg.conv, cfg.dropout)
        self.ffn2_norm, self.ffn2 = RMSNorm(d), SwiGLU(d, hidden, cfg.dropout)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        x = torch.add(x, self.ffn1(self.ffn1_norm(x)), alpha=0.5)  # the macaron half-step
        x = x + self.dropout(self.mixer(self.mixer_norm(x), lengths))
        x = x + self.conv(self.conv_norm(x))
        return torch.add(x, self.ffn2(self.ffn2_norm(x)), alpha=0.5)

    def init_state(self, batch: int, device: torch.device | str = "cpu") -> BlockCache:
        return BlockCache(mixer=self.mixer.init_state(batch, device), conv=self.conv.init_state(batch, device))

    def step(self, x: Tensor, state: BlockCache, shared: StepShared | None = None) -> tuple[Tensor, BlockCache]:
        """``shared``: an attention mixer's ``step_shared`` for this step (ignored by Mamba2)."""
        x = torch.add(x, self.ffn1(self.ffn1_norm(x)), alpha=0.5)  # the macaron half-step
        if self.kind == "gqa":
            y, mixer_state = self.mixer.step(self.mixer_norm(x), state.mixer, shared)
        else:
            y, mixer_state = self.mixer.step(self.mixer_norm(x), state.mixer)
        x = x + self.dropout(y)
        y, conv_state = self.conv.step(self.conv_norm(x), state.conv)
        x = x + y
        x = torch.add(x, self.ffn2(self.ffn2_norm(x)), alpha=0.5)
        return x, BlockCache(mixer=mixer_state, conv=conv_state)
