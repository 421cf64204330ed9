"""HybridASR: frontend + causal encoder + CTC head + RNN-T prediction network and joint.

    audio (B, S) --Frontend--> feats (B, T, M) --Encoder--> enc (B, T', D)
    enc --CTCHead--> log-probs (B, T', V + 1)
    enc, PredictionNet(targets) --Joint--> RNN-T logits (evaluated slice by slice by the loss)
    enc, PredictionNet(targets) --SimpleProjections--> am, lm (pruned RNN-T loss only; training)

``build_model(cfg)`` is the one place where config numbers meet modules. The model keeps its
``ModelConfig`` so that a checkpoint (or ONNX metadata) alone can rebuild it.
"""

from __future__ import annotations

from torch import Tensor, nn

from asrlib.config import ModelConfig
from asrlib.model.encoder import Encoder
from asrlib.model.frontend import Frontend
from asrlib.model.heads import CTCHead, Joint, PredictionNet, SimpleProjections


class HybridASR(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("model.vocab_size must be set (build_model fills it from the tokenizer)")
        self.cfg = cfg
        self.blank = cfg.vocab_size
        self.frontend = Frontend(cfg.frontend)
        self.encoder = Encoder(cfg.frontend, cfg.subsampling, cfg.encoder)
        d = cfg.encoder.d_model
        self.ctc_head = CTCHead(d, cfg.vocab_size)
        self.prediction = PredictionNet(cfg.vocab_size, cfg.prediction)
        self.joint = Joint(d, self.prediction.out_dim, cfg.vocab_size, cfg.joint)
        # training-only projections of the pruned RNN-T loss; None unless the config asks for them
        self.simple = SimpleProjections(d, self.prediction.out_dim, cfg.vocab_size) if cfg.joint.simple_projections else None

    def features(self, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, S) samples -> log-mel (B, T, M) and frame lengths; SpecAugment goes after this."""
        return self.frontend(audio, lengths)

    def encode(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, M) features -> encoder output (B, T', D) and lengths."""
        return self.encoder(feats, lengths)

    def forward(self, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, S) samples -> encoder output (B, T', D) and its lengths (chunk-masked, causal)."""
        return self.encode(*self.features(audio, lengths))

    def output_lengths(self, audio_lengths: Tensor) -> Tensor:
        return self.encoder.output_lengths(self.frontend.output_lengths(audio_lengths))

    @property
    def chunk_samples(self) -> int:
        """Audio samples per streaming step (after the first win - hop priming samples)."""
        return self.encoder.chunk_frames * self.frontend.hop_length


def build_model(cfg: ModelConfig) -> HybridASR:
    return HybridASR(cfg)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
