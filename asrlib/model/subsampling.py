"""Causal convolutional subsampling: log-mel frames -> encoder frames, 4x or 8x fewer.

Each stage is a 3x3 Conv2d with stride 2 over (time, mel):

* time is padded with 2 frames on the LEFT only, so output frame j of a stage reads its
  input frames 2j-2, 2j-1, 2j (never a later one);
* mel is padded with 1 bin on both sides (it is not a time axis, no causality involved).

Stage 0 maps 1 -> C channels; later stages are depthwise (3x3, groups = C) + pointwise (1x1),
which keeps them cheap. A SiLU follows each stage. Finally ``Linear(C * F_out, D)``.

Per stage T -> ceil(T / 2) = (T + 1) // 2 and F -> (F - 1) // 2 + 1. Through all stages,
output frame j depends on input frames ``factor * j - 2 * (factor - 1) .. factor * j``
(factor 4: 4j-6 .. 4j; factor 8: 8j-14 .. 8j).

Streaming: :class:`SubsamplingCache` keeps, per stage, the last 2 input frames of that stage
(zeros at the start = the left padding). ``step`` takes chunks whose length is a multiple of
the factor, except the final one (the flush), which may be any length.

Shapes:
    x (B, T, M) log-mel -> y (B, T', D), T' = output_lengths(T)
    inside a stage: (B, C, T, F)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F_
from torch import Tensor, nn

from asrlib.config import SubsamplingConfig


def _stage_len(n: int) -> int:
    return (n - 1) // 2 + 1


@dataclass
class SubsamplingCache:
    """Last 2 input frames of every stage: ``stages[i]`` is (B, C_in_i, 2, F_in_i)."""

    stages: list[Tensor]


class CausalSubsampling(nn.Module):
    """(B, T, M) -> (B, ceil-halved ``log2(factor)`` times T, D); causal in time."""

    def __init__(self, n_mels: int, d_model: int, cfg: SubsamplingConfig):
        super().__init__()
        if cfg.factor not in (4, 8):
            raise ValueError(f"subsampling.factor must be 4 or 8, got {cfg.factor}")
        self.cfg = cfg
        self.factor = cfg.factor
        self.n_stages = {4: 2, 8: 3}[cfg.factor]
        c = cfg.channels
        stages = [nn.Conv2d(1, c, kernel_size=3, stride=2)]
        for _ in range(self.n_stages - 1):
            stages.append(
                nn.Sequential(
                    nn.Conv2d(c, c, kernel_size=3, stride=2, groups=c),  # depthwise
                    nn.Conv2d(c, c, kernel_size=1),  # pointwise
                )
            )
        self.stages = nn.ModuleList(stages)
        self.act = nn.SiLU()
        # (channels, freq) of each stage's input, for the cache
        self.stage_inputs: list[tuple[int, int]] = []
        f = n_mels
        for i in range(self.n_stages):
            self.stage_inputs.append((1 if i == 0 else c, f))
            f = _stage_len(f)
        self.f_out = f
        self.out = nn.Linear(c * f, d_model)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """T -> ceil(T / 2) per stage; 0 stays 0."""
        lengths = torch.as_tensor(lengths)
        for _ in range(self.n_stages):
            lengths = torch.div(lengths + 1, 2, rounding_mode="floor")
        return lengths

    def _project(self, h: Tensor) -> Tensor:
        b, c, t, f = h.shape
        h = h.permute(0, 2, 1, 3).reshape(b, t, c * f)  # (B, C, T', F') -> (B, T', C*F')
        return self.out(h)  # (B, T', D)

    def _empty(self, x: Tensor) -> Tensor:
        return x.new_zeros(x.shape[0], 0, self.out.out_features)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, T, M), lengths (B,) -> y (B, T', D), lengths' (B,)."""
        out_lengths = self.output_lengths(lengths)
        if x.shape[1] == 0:
            return self._empty(x), out_lengths
        h = x.unsqueeze(1)  # (B, T, M) -> (B, 1, T, M)
        for stage in self.stages:
            h = F_.pad(h, (1, 1, 2, 0))  # freq: 1 each side; time: 2 on the left only
            h = self.act(stage(h))  # (B, C, ceil(T/2), (F-1)//2+1)
        return self._project(h), out_lengths

    # ------------------------------------------------------------------ streaming
    def init_state(self, batch: int, device: torch.device | str | None = None) -> SubsamplingCache:
        """Zeros: the left padding the full forward sees before frame 0."""
        dtype = self.out.weight.dtype
        dev = device if device is not None else self.out.weight.device
        return SubsamplingCache(
            stages=[torch.zeros(batch, c, 2, f, device=dev, dtype=dtype) for c, f in self.stage_inputs]
        )

    def step(self, x: Tensor, state: SubsamplingCache) -> tuple[Tensor, SubsamplingCache]:
        """x (B, Tc, M) -> y (B, ceil-halved Tc, D), new cache.

        Tc must be a multiple of ``factor`` except on the last call of a stream (the flush),
        otherwise later frames would be misaligned with the full forward.
        """
        if x.shape[1] == 0:
            return self._empty(x), state
        h = x.unsqueeze(1)  # (B, Tc, M) -> (B, 1, Tc, M)
        new_cache = []
        for stage, cached in zip(self.stages, state.stages):
            h = torch.cat([cached.to(h.dtype), h], dim=2)  # (B, C_in, 2 + Tc_i, F_in)
            new_cache.append(h[:, :, h.shape[2] - 2 :])  # (B, C_in, 2, F_in)
            h = self.act(stage(F_.pad(h, (1, 1, 0, 0))))  # (B, C, ceil(Tc_i/2), F_out)
        return self._project(h), SubsamplingCache(stages=new_cache)
