"""CTC decoding: greedy (best path) and prefix beam search.

A CTC output is a label per encoder frame over V tokens + blank (id V). A *path* is one label
per frame; collapsing repeats and then dropping blanks maps a path to a *labelling*
("a a _ a b" -> "a a b"). Greedy decoding takes the most probable path; prefix beam search
looks for the most probable labelling, whose probability is the sum over all its paths.

Shapes: B batch, T encoder frames, V vocabulary (log-prob tables have V + 1 columns).
    log_probs (B, T, V + 1)  natural-log probabilities, e.g. CTCHead output
    lengths   (B,)           valid frames per utterance; frames beyond are ignored
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from asrlib.decoding.result import DecodingResult, Detokenize, results_of

NEG_INF = float("-inf")


def _check_inputs(log_probs: Tensor, lengths: Tensor, blank: int) -> None:
    if log_probs.dim() != 3:
        raise ValueError(f"CTC decoding expects log_probs of shape (B, T, V+1), got {tuple(log_probs.shape)}")
    if lengths.shape != (log_probs.shape[0],):
        raise ValueError(
            f"lengths must have shape ({log_probs.shape[0]},) (one per utterance), got {tuple(lengths.shape)}"
        )
    if not 0 <= blank < log_probs.shape[-1]:
        raise ValueError(f"blank id {blank} is outside the {log_probs.shape[-1]} output units; asrlib uses blank = V")
    if len(lengths) and int(lengths.max()) > log_probs.shape[1]:
        raise ValueError(f"a length ({int(lengths.max())}) exceeds the number of frames ({log_probs.shape[1]})")


def _lse(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) for python floats, safe with -inf."""
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    m = max(a, b)
    return m + math.log1p(math.exp(-abs(a - b)))


class _ChunkedCTCDecoder:
    """What both CTC decoders share: ``decode`` is ``init_state`` plus one ``decode_chunk`` over
    the whole utterance (so streaming, chunk by chunk, gives the same result), and a state's
    ``tokens`` / ``timestamps`` / ``scores`` are its results."""

    options: "CTCGreedyOptions | CTCPrefixBeamOptions"

    @torch.no_grad()
    def decode(self, log_probs: Tensor, lengths: Tensor, detokenize: Detokenize | None = None) -> list[DecodingResult]:
        _check_inputs(log_probs, lengths, self.options.blank)
        state = self.decode_chunk(log_probs, self.init_state(log_probs.shape[0]), 0, lengths)
        return self.results(state, detokenize)

    @staticmethod
    def results(state, detokenize: Detokenize | None = None) -> list[DecodingResult]:
        """The hypotheses held by a state (partial results while streaming): for beam search each
        stream's best labelling, were its utterance to end now."""
        return results_of(state, detokenize)


@dataclass(frozen=True)
class CTCGreedyOptions:
    blank: int  # id of the blank unit (asrlib: V, the last column)


@dataclass
class CTCGreedyState:
    """What greedy CTC carries from one chunk of frames to the next, for B utterances."""

    tokens: list[list[int]]  # tokens so far, per utterance
    timestamps: list[list[int]]  # absolute frame of each token, per utterance
    scores: list[float]  # log-prob of the best path so far, per utterance
    last: Tensor  # (B,) label of the last frame seen (-1 before the first frame)

    def select(self, rows: list[int]) -> "CTCGreedyState":
        """The state of utterances ``rows`` (a batch of len(rows))."""
        return CTCGreedyState([list(self.tokens[r]) for r in rows], [list(self.timestamps[r]) for r in rows],
                              [self.scores[r] for r in rows], self.last[rows].clone())

    def scatter(self, rows: list[int], sub: "CTCGreedyState") -> "CTCGreedyState":
        """A copy with utterances ``rows`` replaced by ``sub`` (a ``select`` result, advanced)."""
        out = self.select(list(range(len(self.tokens))))
        for k, r in enumerate(rows):
            out.tokens[r], out.timestamps[r], out.scores[r] = sub.tokens[k], sub.timestamps[k], sub.scores[k]
            out.last[r] = sub.last[k]
        return out


class CTCGreedyDecoder(_ChunkedCTCDecoder):
    """Best path: argmax per frame, collapse repeats, drop blanks.

    ``timestamps`` holds the first frame of each emitted token; ``score`` is the log-prob of
    the best path (sum over valid frames of the max log-prob), not of the labelling.
    ``decode`` is ``init_state`` plus one ``decode_chunk``; feeding the log-probs in chunks
    gives the same result, because the last frame's label carries over to the next chunk.
    """

    def __init__(self, options: CTCGreedyOptions):
        self.options = options

    def init_state(self, batch: int) -> CTCGreedyState:
        return CTCGreedyState([[] for _ in range(batch)], [[] for _ in range(batch)], [0.0] * batch,
                              torch.full((batch,), -1, dtype=torch.long))

    @torch.no_grad()
    def decode_chunk(self, log_probs: Tensor, state: CTCGreedyState, frame_offset: int | list[int] = 0,
                     lengths: Tensor | None = None) -> CTCGreedyState:
        """Continue over ``log_probs`` (B, Tc, V + 1), whose first frame is ``frame_offset``
        (one int, or one per utterance); ``lengths`` (B,) valid frames (default all Tc)."""
        blank, (B, Tc) = self.options.blank, log_probs.shape[:2]
        lengths = torch.full((B,), Tc) if lengths is None else lengths.cpu()
        _check_inputs(log_probs, lengths, blank)
        offsets = [frame_offset] * B if isinstance(frame_offset, int) else list(frame_offset)
        best_lp, ids = (x.cpu() for x in log_probs.float().max(dim=-1))  # (B, Tc), (B, Tc)
        prev = torch.cat([state.last[:, None], ids[:, :-1]], dim=1)  # (B, Tc) label of frame t-1
        first = (ids != blank) & (ids != prev)  # (B, Tc) a token starts here
        out = state.select(list(range(B)))
        for b, n in enumerate(lengths.tolist()):
            frames = first[b, :n].nonzero().flatten().tolist()
            out.tokens[b] += ids[b, frames].tolist()
            out.timestamps[b] += [offsets[b] + f for f in frames]
            out.scores[b] += float(best_lp[b, :n].sum())
            if n > 0:
                out.last[b] = ids[b, n - 1]
        return out


@dataclass(frozen=True)
class CTCPrefixBeamOptions:
    blank: int  # id of the blank unit (asrlib: V, the last column)
    beam_size: int = 4  # prefixes kept after every frame
    prune_top_k: int = 16  # per frame, only the k most probable tokens may extend a prefix; 0 = all
    lm: Any = None  # a token-level language model for shallow fusion (asrlib.ngram.NgramLM), or None
    lm_weight: float = 0.0  # its log-probabilities' weight in the score
    token_bonus: float = 0.0  # added for every token of a prefix (offsets the deletions a language model brings)


@dataclass
class _Prefix:
    """Log-probs of all paths so far that collapse to this prefix, split by their last label,
    and what fusion adds to the prefix (a function of its tokens alone) and to its end."""

    blank: float = NEG_INF  # paths ending in blank
    nonblank: float = NEG_INF  # paths ending in the prefix's last token
    timestamps: tuple[int, ...] = ()  # frames of the tokens, from the likeliest contribution
    best: float = NEG_INF  # log-prob of that contribution (to pick timestamps)
    fusion: float = 0.0  # lm_weight * log p_LM(tokens) + token_bonus * len(tokens)
    end: float = 0.0  # lm_weight * log p_LM(</s> | tokens): the score for ending here

    @property
    def total(self) -> float:
        return _lse(self.blank, self.nonblank)

    def add(self, ends_blank: bool, logp: float, timestamps: tuple[int, ...]) -> None:
        if ends_blank:
            self.blank = _lse(self.blank, logp)
        else:
            self.nonblank = _lse(self.nonblank, logp)
        if logp > self.best:
            self.best, self.timestamps = logp, timestamps


@dataclass
class CTCPrefixBeamState:
    """What prefix beam search carries from one chunk of frames to the next, per stream: its
    prefixes (token tuple -> :class:`_Prefix`). ``tokens``, ``timestamps`` and ``scores`` are
    each stream's best labelling were its utterance to end now."""

    beams: list[dict[tuple[int, ...], _Prefix]]

    def _bests(self) -> list[tuple[tuple[int, ...], float]]:
        return [max(((k, p.total + p.fusion + p.end) for k, p in b.items()), key=lambda kv: kv[1])
                for b in self.beams]

    @property
    def tokens(self) -> list[list[int]]:
        return [list(k) for k, _ in self._bests()]

    @property
    def timestamps(self) -> list[list[int]]:
        return [list(b[k].timestamps) for b, (k, _) in zip(self.beams, self._bests())]

    @property
    def scores(self) -> list[float]:
        return [s for _, s in self._bests()]

    def select(self, rows: list[int]) -> "CTCPrefixBeamState":
        """The state of streams ``rows`` (prefixes are never changed in place, so shared)."""
        return CTCPrefixBeamState([self.beams[r] for r in rows])

    def scatter(self, rows: list[int], sub: "CTCPrefixBeamState") -> "CTCPrefixBeamState":
        """A copy with streams ``rows`` replaced by ``sub`` (a ``select`` result, advanced)."""
        beams = list(self.beams)
        for k, r in enumerate(rows):
            beams[r] = sub.beams[k]
        return CTCPrefixBeamState(beams)


class CTCPrefixBeamDecoder(_ChunkedCTCDecoder):
    """Prefix beam search for the most probable labelling (log space).

    For every prefix we keep two numbers: the log-prob of the paths ending in blank and of
    those ending in its last token. A frame extends prefix ``l`` (with last token ``z``) by:
    blank -> ``l`` (ends blank); ``z`` again -> ``l`` (repeat, collapsed); token ``c != z`` ->
    ``l + c`` from all paths; token ``z`` -> ``l + z`` only from paths ending in blank.

    ``score`` is log P(labelling) summed over the alignments the beam kept. With a beam
    larger than the number of possible prefixes the search is exact. ``timestamps`` are the
    frames at which the tokens were added, along the likeliest contribution.

    With a language model (``lm``, shallow fusion) prefixes are ranked by log P(prefix) +
    ``lm_weight`` x log p_LM(prefix) + ``token_bonus`` x its length, and a labelling ends with
    ``lm_weight`` x log p_LM(</s> | it): ``score`` is that sum. The LM part depends on the
    tokens alone, so it is added once, when a prefix is extended, and the path sums stay
    acoustic. Like the greedy decoder it runs chunk by chunk (``init_state``,
    ``decode_chunk``), and ``decode`` is one chunk of the whole utterance, so streaming gives
    the same result.
    """

    def __init__(self, options: CTCPrefixBeamOptions):
        if options.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {options.beam_size}")
        if options.lm is not None and options.lm.vocab_size != options.blank:
            raise ValueError(f"the language model has {options.lm.vocab_size} pieces and the model {options.blank}: "
                             "build it with the model's tokenizer")
        self.options = options

    def init_state(self, batch: int) -> CTCPrefixBeamState:
        return CTCPrefixBeamState([{(): _Prefix(blank=0.0, best=0.0, end=self._end(()))} for _ in range(batch)])

    @torch.no_grad()
    def decode_chunk(self, log_probs: Tensor, state: CTCPrefixBeamState, frame_offset: int | list[int] = 0,
                     lengths: Tensor | None = None) -> CTCPrefixBeamState:
        """Continue over ``log_probs`` (B, Tc, V + 1), whose first frame is ``frame_offset``
        (one int, or one per stream); ``lengths`` (B,) valid frames (default all Tc)."""
        B, Tc = log_probs.shape[:2]
        lengths = torch.full((B,), Tc) if lengths is None else lengths.cpu()
        _check_inputs(log_probs, lengths, self.options.blank)
        if len(state.beams) != B:
            raise ValueError(f"the state has {len(state.beams)} streams and the chunk {B}")
        offsets = [frame_offset] * B if isinstance(frame_offset, int) else list(frame_offset)
        beams = list(state.beams)
        for b, n in enumerate(lengths.tolist()):
            if n > 0:
                beams[b] = self._search(log_probs[b, :n].float().cpu(), beams[b], offsets[b])
        return CTCPrefixBeamState(beams)

    def _end(self, prefix: tuple[int, ...]) -> float:
        lm = self.options.lm
        return 0.0 if lm is None else self.options.lm_weight * float(lm.logprobs(lm.context(prefix))[lm.eos])

    def _lm_row(self, prefix: tuple[int, ...]):
        """log p_LM(. | prefix) over the pieces (None without a language model)."""
        lm = self.options.lm
        return None if lm is None else lm.logprobs(lm.context(prefix))

    def _search(self, lp: Tensor, beams: dict[tuple[int, ...], _Prefix], offset: int) -> dict[tuple[int, ...], _Prefix]:
        """One stream over its frames lp (T, V + 1), from ``beams``; frame t is ``offset + t``."""
        blank, k = self.options.blank, self.options.prune_top_k
        weight, bonus = self.options.lm_weight, self.options.token_bonus
        n_units = lp.shape[-1]
        k = n_units if k <= 0 else min(k, n_units)
        candidates = lp.topk(k, dim=-1).indices.tolist()  # (T, k) tokens that may extend
        rows = lp.tolist()  # (T, V + 1) as python floats: the loop below is scalar
        for t, row in enumerate(rows):
            nxt: dict[tuple[int, ...], _Prefix] = {}
            for prefix, p in beams.items():
                total = p.total
                last = prefix[-1] if prefix else None
                stay = nxt.setdefault(prefix, _Prefix(fusion=p.fusion))
                stay.add(True, total + row[blank], p.timestamps)
                if last is not None:
                    stay.add(False, p.nonblank + row[last], p.timestamps)
                lm_row = self._lm_row(prefix)  # only the candidates below look into it
                for c in candidates[t]:
                    if c == blank:
                        continue
                    from_paths = p.blank if c == last else total
                    ext = nxt.get(prefix + (c,))
                    if ext is None:  # fusion: + lm_weight * log p_LM(c | prefix) + token_bonus
                        lm = 0.0 if lm_row is None else weight * float(lm_row[c])
                        ext = nxt[prefix + (c,)] = _Prefix(fusion=p.fusion + (lm + bonus))
                    ext.add(False, from_paths + row[c], p.timestamps + (offset + t,))
            ranked = sorted(nxt.items(), key=lambda kv: kv[1].total + kv[1].fusion, reverse=True)
            beams = dict(ranked[: self.options.beam_size])
        for prefix, p in beams.items():  # the survivors are this call's own objects
            p.end = self._end(prefix)
        return beams
