"""The causal encoder: causal subsampling + a stack of Conformer blocks.

Block i (counting from 1) uses a Mamba2 mixer when ``i % mamba_period == 0`` (blocks 3, 6, 9,
… by default), grouped-query attention otherwise.

Chunking: ``EncoderConfig.chunk_frames`` is given in frontend frames (10 ms each) and must be a
multiple of the subsampling factor; the attention chunk is ``chunk_frames // factor`` encoder
frames. Streaming feeds the encoder exactly ``chunk_frames`` frontend frames per step (fewer
only for the final flush), so both paths see the same chunk boundaries.

Input scale: the subsampling output is multiplied by ``input_scale`` (default sqrt(d_model),
ESPnet's and NeMo's "xscale") before the first block. With PyTorch's default init the
subsampling output has an RMS of ~0.26 while each block's branches add ~0.5, so the audio
starts as a small part of the residual stream, and Adam's lr-sized steps on the subsampling
move it little relative to the rest. Measured on the digits demo (8 s batches, 2 seeds), dev
WER stayed at 100 % for 400 steps at scale 1 and fell below 90 % at step 250-300 with
sqrt(d_model); zero-initialising the branches instead, a higher lr, a higher CTC weight or
no augmentation did not do that (notebook 04 and bench/learning_start.py).

Shapes: B batch, T frontend frames, M mel bins, T' encoder frames, D d_model.
    forward(feats (B, T, M), lengths (B,))   -> (B, T', D), lengths' (B,)
    step(feats (B, Tc, M), EncoderState)     -> (B, ceil(Tc / factor), D), EncoderState
    forward_taps / step_taps: the same, plus the listed blocks' outputs through the final norm
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from asrlib.config import EncoderConfig, FrontendConfig, SubsamplingConfig
from asrlib.model.block import BlockCache, ConformerBlock
from asrlib.model.norm import RMSNorm
from asrlib.model.subsampling import CausalSubsampling, SubsamplingCache


def mixer_kinds(cfg: EncoderConfig) -> list[str]:
    """Which mixer each block uses: "mamba2" for blocks period, 2*period, … (1-based)."""
    p = cfg.mamba_period
    return ["mamba2" if p > 0 and (i + 1) % p == 0 else "gqa" for i in range(cfg.n_blocks)]


@dataclass
class EncoderState:
    subsampling: SubsamplingCache
    blocks: list[BlockCache]


class Encoder(nn.Module):
    def __init__(self, frontend: FrontendConfig, sub: SubsamplingConfig, cfg: EncoderConfig):
        super().__init__()
        if sub.factor not in (4, 8):
            raise ValueError(f"model.subsampling.factor must be 4 or 8, got {sub.factor}")
        if cfg.chunk_frames <= 0 or cfg.chunk_frames % sub.factor:
            raise ValueError(
                f"model.encoder.chunk_frames ({cfg.chunk_frames}) must be a positive multiple of "
                f"model.subsampling.factor ({sub.factor})"
            )
        self.cfg = cfg
        self.factor = sub.factor
        self.chunk_frames = cfg.chunk_frames  # frontend frames per streaming step
        self.chunk_size = cfg.chunk_frames // sub.factor  # encoder frames per attention chunk
        self.subsampling = CausalSubsampling(frontend.n_mels, cfg.d_model, sub)
        self.blocks = nn.ModuleList(ConformerBlock(cfg, kind, self.chunk_size) for kind in mixer_kinds(cfg))
        self.norm = RMSNorm(cfg.d_model)  # the blocks are pre-norm: one norm on the way out
        self.d_model = cfg.d_model
        self.input_scale = cfg.input_scale if cfg.input_scale > 0 else cfg.d_model**0.5

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return self.subsampling.output_lengths(lengths)

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        out, lengths, _ = self.forward_taps(feats, lengths, ())
        return out, lengths

    def forward_taps(self, feats: Tensor, lengths: Tensor, taps: tuple[int, ...]) -> tuple[Tensor, Tensor, list[Tensor]]:
        """``forward``, plus the output of each block numbered in ``taps`` (1-based, in the order
        given) through the final norm: what an intermediate CTC loss or a phone CTC on a lower block
        reads (``step_taps`` is its streaming twin)."""
        x, lengths = self.subsampling(feats, lengths)
        x = x * self.input_scale
        if x.shape[1] == 0:  # audio shorter than one window: nothing to mix
            return x, lengths, [x for _ in taps]
        outputs = {}
        for i, block in enumerate(self.blocks, start=1):
            x = block(x, lengths)
            if i in taps:
                outputs[i] = self.norm(x)
        return self.norm(x), lengths, [outputs[t] for t in taps]

    def init_state(self, batch: int, device: torch.device | str = "cpu") -> EncoderState:
        return EncoderState(
            subsampling=self.subsampling.init_state(batch, device),
            blocks=[b.init_state(batch, device) for b in self.blocks],
        )

    def step(self, feats: Tensor, state: EncoderState) -> tuple[Tensor, EncoderState]:
        out, state, _ = self.step_taps(feats, state, ())
        return out, state

    def step_taps(self, feats: Tensor, state: EncoderState,
                  taps: tuple[int, ...]) -> tuple[Tensor, EncoderState, list[Tensor]]:
        """``step``, plus the output of each block numbered in ``taps`` through the final norm, as
        ``forward_taps`` gives them for the whole utterance (the phone head's input, streaming)."""
        x, sub_state = self.subsampling.step(feats, state.subsampling)
        x = x * self.input_scale
        if x.shape[1] == 0:
            return x, EncoderState(subsampling=sub_state, blocks=state.blocks), [x for _ in taps]
        new_blocks, shared, outputs = [], None, {}
        for i, (block, block_state) in enumerate(zip(self.blocks, state.blocks), start=1):
            if block.kind == "gqa" and shared is None:
                # every attention block holds the same position and steps by the same chunk:
                # one key mask and one set of RoPE angles serve them all
                shared = block.mixer.step_shared(block_state.mixer.pos, x.shape[1], x.dtype)
            x, block_state = block.step(x, block_state, shared)
            new_blocks.append(block_state)
            if i in taps:
                outputs[i] = self.norm(x)
        return self.norm(x), EncoderState(subsampling=sub_state, blocks=new_blocks), [outputs[t] for t in taps]
