"""Decoders: CTC greedy / prefix beam, RNN-T greedy (batched, streamable) / beam."""

from asrlib.decoding.ctc import CTCGreedyDecoder, CTCGreedyOptions, CTCPrefixBeamDecoder, CTCPrefixBeamOptions
from asrlib.decoding.result import DecodingResult
from asrlib.decoding.rnnt import (
    RNNTBeamDecoder,
    RNNTBeamOptions,
    RNNTBeamState,
    RNNTGreedyDecoder,
    RNNTGreedyOptions,
    RNNTGreedyState,
)

__all__ = [
    "DecodingResult",
    "CTCGreedyDecoder",
    "CTCGreedyOptions",
    "CTCPrefixBeamDecoder",
    "CTCPrefixBeamOptions",
    "RNNTGreedyDecoder",
    "RNNTGreedyOptions",
    "RNNTGreedyState",
    "RNNTBeamDecoder",
    "RNNTBeamOptions",
    "RNNTBeamState",
]
