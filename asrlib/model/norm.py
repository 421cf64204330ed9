"""RMSNorm: scale each vector by the inverse root-mean-square of its entries.

    y = x / sqrt(mean(x^2 over the last dim) + eps) * weight

Unlike LayerNorm it does not subtract the mean and has no bias. It normalises
each frame on its own, so it is causal and identical in training and streaming.

Shapes:
    x: (..., D)  ->  y: (..., D)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension with a learnable per-channel weight."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype and x.dtype in (torch.float32, torch.float64) and not torch.jit.is_tracing():
            # the same formula as one fused operation: a streaming step runs ~27 norms per chunk,
            # and the eight small operations below each cost a dispatch (the ONNX exporter, which
            # traces, has no rms_norm before opset 23: it gets the formula)
            return F.rms_norm(x, (self.dim,), self.weight, self.eps)
        # compute in at least float32 so bf16/fp16 inputs keep the mean square; return x's dtype
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        rms_inv = torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)  # (..., 1)
        return (xf * rms_inv * self.weight.to(xf.dtype)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"
