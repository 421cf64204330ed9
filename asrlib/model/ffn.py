"""SwiGLU feed-forward: down(silu(gate(x)) * up(x)), no biases, then dropout.

Stateless and per frame, so it is trivially causal and streams as it is.

Shapes:
    x (..., D) -> hidden (..., H) -> y (..., D)
"""

from __future__ import annotations

import torch.nn.functional as F_
from torch import Tensor, nn

from asrlib.model.dropout import Dropout


def swiglu_hidden(d_model: int, ffn_mult: float) -> int:
    """round(ffn_mult * d_model * 2 / 3), rounded up to a multiple of 8.

    The 2/3 keeps the parameter count of a 3-matrix SwiGLU close to a 2-matrix FFN of
    width ``ffn_mult * d_model``.
    """
    h = round(ffn_mult * d_model * 2 / 3)
    return max(8, (h + 7) // 8 * 8)


class SwiGLU(nn.Module):
    """SwiGLU FFN with gate, up and down projections (no biases)."""

    def __init__(self, d_model: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.gate = nn.Linear(d_model, hidden, bias=False)
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.down(F_.silu(self.gate(x)) * self.up(x)))
