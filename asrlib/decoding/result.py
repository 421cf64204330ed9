"""The one result type every decoder returns, one per utterance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

Detokenize = Callable[[list[int]], str]  # token ids -> text (a tokenizer's decode)


@dataclass
class DecodingResult:
    """A decoded hypothesis for one utterance.

    ``score`` is a natural-log probability; each decoder's docstring says exactly which one
    (best path, sum over alignments, ...), so compare scores only between like decoders.
    """

    tokens: list[int] = field(default_factory=list)  # token ids 0 .. V-1, never the blank
    timestamps: list[int] = field(default_factory=list)  # encoder frame of each token (same length)
    score: float = 0.0  # log-prob of the hypothesis as defined by the decoder
    text: str = ""  # detokenize(tokens), or "" when no detokenizer was given


def results_of(state: Any, detokenize: Detokenize | None = None) -> list[DecodingResult]:
    """The hypotheses a decoder's state holds, one per stream, from its ``tokens``, ``timestamps``
    and ``scores`` (partial results while streaming; for a beam search each stream's best)."""
    return [DecodingResult(list(tok), list(ts), score, detokenize(tok) if detokenize else "")
            for tok, ts, score in zip(state.tokens, state.timestamps, state.scores)]
