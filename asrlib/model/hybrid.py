"""HybridASR: frontend + causal encoder + CTC head + RNN-T prediction network and joint.

    audio (B, S) --Frontend--> feats (B, T, M) --Encoder--> enc (B, T', D)
    enc --CTCHead--> log-probs (B, T', V + 1)
    enc, PredictionNet(targets) --Joint--> RNN-T logits (evaluated slice by slice by the loss)
    enc, PredictionNet(targets) --SimpleProjections--> am, lm (pruned RNN-T loss only; training)
    block k's output --phone_head (a CTCHead over phones)--> log-probs (B, T', P + 1) (k = cfg.phone_block,
        0 = enc; trained by loss.phone_ctc_weight, read at inference only to rescore: asrlib/decoding/rescore.py)

Streaming is one step, defined here and nowhere else: ``init_stream`` gives a typed
``StreamState`` (frontend cache + encoder state, batch first), and ``stream_step`` turns
``samples`` new samples into encoder frames, CTC log-probs and (a model with a phone head) the
phone head's log-probs. The PyTorch streaming backend
calls it, the ONNX graph ``encoder_step.onnx`` is an export of it, and the tests use it.
``StreamingConstants`` (``model.streaming``) holds the numbers a caller buffers by.

``build_model(cfg)`` is the one place where config numbers meet modules. The model keeps its
``ModelConfig`` so that a checkpoint (or ONNX metadata) alone can rebuild it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from asrlib.config import ModelConfig
from asrlib.model.encoder import Encoder, EncoderState
from asrlib.model.frontend import Frontend, FrontendCache
from asrlib.model.heads import CTCHead, Joint, SimpleProjections, build_prediction


@dataclass
class StreamState:
    """Everything a stream carries between steps; every tensor is (B, …), fixed in size.

    ``asrlib.model.state.flatten(state, "state")`` names its tensors
    (``state.frontend.samples``, ``state.encoder.blocks.0.mixer.k`` …): the ONNX input names.
    """

    frontend: FrontendCache
    encoder: EncoderState


@dataclass(frozen=True)
class StreamingConstants:
    """The numbers a streaming caller buffers audio by (all in samples, except ``blank``)."""

    hop: int  # samples per frontend frame; a step takes a multiple of it
    context: int  # win - hop: the first samples of a stream prime the frontend (no frame yet)
    chunk_samples: int  # samples per full step: chunk_frames * hop
    blank: int  # id of the blank unit (= vocabulary size)
    sample_rate: int


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
        self.prediction = build_prediction(cfg.vocab_size, cfg.prediction)
        self.joint = Joint(d, self.prediction.out_dim, cfg.vocab_size, cfg.joint)
        # training-only projections of the pruned RNN-T loss; None unless the config asks for them
        self.simple = SimpleProjections(d, self.prediction.out_dim, cfg.vocab_size) if cfg.joint.simple_projections else None
        # CTC head over the phones of loss.phone_lexicon, on block cfg.phone_block; None unless the config asks
        # for it. Trained beside the others; at inference read only to rescore (asrlib/decoding/rescore.py).
        # Built last, with the random state restored after it: every other parameter, and whatever the
        # run draws next, is the same as without the head (so runs with and without it compare seed for seed).
        self.phone_head = None
        if cfg.phone_vocab_size > 0 and not 0 <= cfg.phone_block < cfg.encoder.n_blocks:
            raise ValueError(f"model.phone_block = {cfg.phone_block}: expected 0 (the encoder output) or a block "
                             f"number in 1 .. {cfg.encoder.n_blocks - 1}")
        if cfg.phone_vocab_size > 0:
            with torch.random.fork_rng(devices=[]):
                self.phone_head = CTCHead(d, cfg.phone_vocab_size)

    def features(self, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, S) samples -> log-mel (B, T, M) and frame lengths; SpecAugment goes after this."""
        return self.frontend(audio, lengths)

    def encode(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, M) features -> encoder output (B, T', D) and lengths."""
        return self.encoder(feats, lengths)

    def forward(self, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, S) samples -> encoder output (B, T', D) and its lengths (chunk-masked, causal)."""
        return self.encode(*self.features(audio, lengths))

    def forward_with_phones(self, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``forward``, plus the phone head's log-probs (B, T', P + 1) on block ``cfg.phone_block``
        (None for a model without a phone head): what ``stream_step`` gives chunk by chunk."""
        feats, feat_lengths = self.features(audio, lengths)
        enc, enc_lengths, tapped = self.encoder.forward_taps(feats, feat_lengths, self._phone_taps)
        return enc, enc_lengths, self._phones(enc, tapped)

    @property
    def _phone_taps(self) -> tuple[int, ...]:
        """The block the phone head reads, as a tap of the encoder ((): none, or the encoder output)."""
        return (self.cfg.phone_block,) if self.phone_head is not None and self.cfg.phone_block else ()

    def _phones(self, enc: Tensor, tapped: list[Tensor]) -> Tensor | None:
        return None if self.phone_head is None else self.phone_head(tapped[0] if tapped else enc)

    def output_lengths(self, audio_lengths: Tensor) -> Tensor:
        return self.encoder.output_lengths(self.frontend.output_lengths(audio_lengths))

    # ------------------------------------------------------------------ streaming
    @property
    def streaming(self) -> StreamingConstants:
        fe = self.frontend
        return StreamingConstants(hop=fe.hop_length, context=fe.win_length - fe.hop_length,
                                  chunk_samples=self.encoder.chunk_frames * fe.hop_length, blank=self.blank,
                                  sample_rate=fe.cfg.sample_rate)

    @property
    def chunk_samples(self) -> int:
        """Audio samples per streaming step (after the first win - hop priming samples)."""
        return self.streaming.chunk_samples

    def init_stream(self, batch: int | Tensor = 1, device: torch.device | str | None = None) -> StreamState:
        """The state of ``batch`` new streams. Pass a (B, context) tensor of each stream's first
        samples to prime the frontend with them: the frames then equal ``forward``'s exactly."""
        dev = device if device is not None else self.frontend.dft_kernel.device
        n = batch.shape[0] if isinstance(batch, Tensor) else batch
        return StreamState(self.frontend.init_state(batch, dev), self.encoder.init_state(n, dev))

    def stream_step(self, samples: Tensor, state: StreamState) -> tuple[Tensor, Tensor, Tensor | None, StreamState]:
        """samples (B, n * hop) -> encoder frames (B, ceil(n / subsampling), D), CTC log-probs
        (B, same, V + 1), the phone head's log-probs (B, same, P + 1) or None without one, new
        state. A full step is ``chunk_samples``; a final flush may be any whole number of hops."""
        feats, fe_state = self.frontend.step(samples, state.frontend)  # (B, n, M)
        enc, enc_state, tapped = self.encoder.step_taps(feats, state.encoder, self._phone_taps)  # (B, T', D)
        return enc, self.ctc_head(enc), self._phones(enc, tapped), StreamState(fe_state, enc_state)


def build_model(cfg: ModelConfig) -> HybridASR:
    return HybridASR(cfg)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
