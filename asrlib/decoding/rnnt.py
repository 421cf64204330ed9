"""RNN-T decoding: batched (and streamable) greedy search, and beam search over the same lattice.

The decoders only call these methods, so any object that has them works (tests use fakes):
    pred_net.init_state(batch, device) -> state   a dataclass of tensors, batch first
    pred_net.step(tokens (B,), state) -> (out (B, Dp), state)   the blank id is the start symbol
    joint.project_encoder(enc (..., De)) -> (..., J)
    joint.project_prediction(out (..., Dp)) -> (..., J)
    joint.combine(e (..., J), p (..., J)) -> logits (..., V + 1)

Scores are natural-log probabilities of the chosen path: the sum of log_softmax(logits) of
every symbol taken, tokens and blanks alike. A frame ends with a blank (its log-prob is
added) or because the per-frame symbol cap was reached (nothing is added).

Shapes: B batch, T encoder frames, De encoder dim, J joint dim, V vocabulary.
    enc (B, T, De)   encoder output;   lengths (B,)  valid frames per utterance
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from asrlib.decoding.result import DecodingResult, Detokenize, results_of
from asrlib.model import state as st


def _check_enc(enc: Tensor, lengths: Tensor | None) -> None:
    if enc.dim() != 3:
        raise ValueError(f"RNN-T decoding expects encoder output of shape (B, T, D), got {tuple(enc.shape)}")
    if lengths is not None and lengths.shape != (enc.shape[0],):
        raise ValueError(f"lengths must have shape ({enc.shape[0]},) (one per utterance), got {tuple(lengths.shape)}")


def _per_utterance(enc_chunk: Tensor, lengths: Tensor | None, frame_offset: int | list[int]) -> tuple[list[int], list[int]]:
    """Each utterance's valid frames in the chunk (all Tc without ``lengths``) and the absolute
    frame its first one is (``frame_offset``: one for all, or one each)."""
    batch, n_frames = enc_chunk.shape[0], enc_chunk.shape[1]
    valid = [n_frames] * batch if lengths is None else [int(x) for x in lengths.tolist()]
    offsets = [frame_offset] * batch if isinstance(frame_offset, int) else list(frame_offset)
    return valid, offsets


def _prime(pred_net: Any, batch: int, blank: int, device: torch.device) -> tuple[Any, Tensor]:
    """Prediction state and output after the start symbol (the blank id): state, (B, Dp)."""
    state = pred_net.init_state(batch, device)
    start = torch.full((batch,), blank, dtype=torch.long, device=device)
    out, state = pred_net.step(start, state)  # (B, Dp)
    return state, out


@dataclass(frozen=True)
class RNNTGreedyOptions:
    blank: int  # id of the blank unit (asrlib: V, the last output)
    max_symbols_per_frame: int = 5  # tokens one frame may emit before we force the next frame
    lookahead_frames: int = 8  # frames one joint call scores (a 320 ms chunk at x4 subsampling)


@dataclass
class RNNTGreedyState:
    """Everything greedy decoding carries from one chunk of encoder frames to the next."""

    pred_state: Any  # prediction-network state (B rows), updated only by emitted tokens
    pred_out: Tensor  # (B, Dp) prediction-network output after the last emitted token
    tokens: list[list[int]]  # tokens so far, per utterance
    timestamps: list[list[int]]  # absolute encoder frame of each token, per utterance
    scores: list[float]  # log-prob of the path so far, per utterance

    def select(self, rows: list[int]) -> "RNNTGreedyState":
        """The state of utterances ``rows`` (a batch of len(rows))."""
        idx = torch.tensor(rows, device=self.pred_out.device)
        return RNNTGreedyState(st.select(self.pred_state, idx), self.pred_out.index_select(0, idx),
                               [list(self.tokens[r]) for r in rows], [list(self.timestamps[r]) for r in rows],
                               [self.scores[r] for r in rows])

    def scatter(self, rows: list[int], sub: "RNNTGreedyState") -> "RNNTGreedyState":
        """A copy with utterances ``rows`` replaced by ``sub`` (a ``select`` result, advanced)."""
        idx = torch.tensor(rows, device=self.pred_out.device)
        pred_out = self.pred_out.clone()
        pred_out[idx] = sub.pred_out.to(pred_out.dtype)
        tokens, stamps, scores = [list(x) for x in self.tokens], [list(x) for x in self.timestamps], list(self.scores)
        for k, r in enumerate(rows):
            tokens[r], stamps[r], scores[r] = sub.tokens[k], sub.timestamps[k], sub.scores[k]
        return RNNTGreedyState(st.scatter(self.pred_state, idx, sub.pred_state), pred_out, tokens, stamps, scores)


class _ChunkedRNNTDecoder:
    """What both RNN-T decoders share: ``decode`` is ``init_state`` plus one ``decode_chunk`` over
    the whole encoder output (so streaming, chunk by chunk, gives the same result), and a state's
    ``tokens`` / ``timestamps`` / ``scores`` are its results."""

    @torch.no_grad()
    def decode(
        self, pred_net: Any, joint: Any, enc: Tensor, lengths: Tensor, detokenize: Detokenize | None = None
    ) -> list[DecodingResult]:
        _check_enc(enc, lengths)
        state = self.init_state(enc.shape[0], pred_net, enc.device)
        state = self.decode_chunk(pred_net, joint, enc, state, 0, lengths)
        return self.results(state, detokenize)

    @staticmethod
    def results(state, detokenize: Detokenize | None = None) -> list[DecodingResult]:
        """The hypotheses held by a state (partial results while streaming): for beam search each
        stream's best hypothesis, were its utterance to end now."""
        return results_of(state, detokenize)


class RNNTGreedyDecoder(_ChunkedRNNTDecoder):
    """Greedy RNN-T search, batched: the utterances advance one emitted label at a time together.

    On each frame the best symbol is taken: a token is emitted (that utterance's prediction
    network steps, the others' state is left alone) and the frame is tried again, up to
    ``max_symbols_per_frame`` times; a blank ends the frame. Each utterance is on its own
    frame, and the frames up to its next token are found in one joint call (see
    ``decode_chunk``). Frames beyond an utterance's length are masked out. ``decode`` is
    ``init_state`` plus one ``decode_chunk``, so feeding the encoder output in chunks gives the
    same result.
    """

    def __init__(self, options: RNNTGreedyOptions):
        if options.max_symbols_per_frame < 1:
            raise ValueError(f"max_symbols_per_frame must be >= 1, got {options.max_symbols_per_frame}")
        if options.lookahead_frames < 1:
            raise ValueError(f"lookahead_frames must be >= 1, got {options.lookahead_frames}")
        self.options = options

    @torch.no_grad()
    def init_state(self, batch: int, pred_net: Any, device: torch.device | str = "cpu") -> RNNTGreedyState:
        pred_state, pred_out = _prime(pred_net, batch, self.options.blank, torch.device(device))
        empty = [[] for _ in range(batch)]
        return RNNTGreedyState(pred_state, pred_out, empty, [[] for _ in range(batch)], [0.0] * batch)

    @torch.no_grad()
    def decode_chunk(
        self,
        pred_net: Any,
        joint: Any,
        enc_chunk: Tensor,
        state: RNNTGreedyState,
        frame_offset: int | list[int] = 0,
        lengths: Tensor | None = None,
    ) -> RNNTGreedyState:
        """Continue over ``enc_chunk`` (B, Tc, De), whose first frame is ``frame_offset`` (one
        int, or one per utterance: streams at different points step together).

        ``lengths`` (B,) counts the valid frames of this chunk (default: all Tc). The state
        passed in is not modified; a new one is returned.

        The search loops over labels, not frames: between two emissions the prediction output
        does not change, so one joint call scores every frame of a window of
        ``lookahead_frames`` at once, and the blanks up to the next token are read off it.
        A window with no token costs one joint call instead of one per frame.
        """
        _check_enc(enc_chunk, lengths)
        blank, cap, window = self.options.blank, self.options.max_symbols_per_frame, self.options.lookahead_frames
        batch, n_frames = enc_chunk.shape[0], enc_chunk.shape[1]
        valid, offsets = _per_utterance(enc_chunk, lengths, frame_offset)
        tokens = [list(x) for x in state.tokens]
        stamps = [list(x) for x in state.timestamps]
        scores = list(state.scores)
        pred_state, pred_out = state.pred_state, state.pred_out.clone()
        pred_proj = joint.project_prediction(pred_out)  # (B, J)
        e = joint.project_encoder(enc_chunk)  # (B, Tc, J)
        for w0 in range(0, n_frames, window):
            ends = [min(v, w0 + window) for v in valid]  # per utterance, the end of its frames in this window
            t = [w0] * batch  # the frame each utterance is on
            on_frame = [0] * batch  # tokens it has emitted on that frame
            rows = [b for b in range(batch) if ends[b] > w0]
            while rows:
                t0, t1 = min(t[b] for b in rows), max(ends[b] for b in rows)
                idx = torch.tensor(rows, device=e.device)
                logits = joint.combine(e[idx, t0:t1], pred_proj[idx][:, None])  # (R, t1 - t0, V + 1)
                best_lp, best = (x.cpu().tolist() for x in logits.float().log_softmax(dim=-1).max(dim=-1))
                emitters, labels = [], []
                for k, b in enumerate(rows):
                    lp_b, best_b = best_lp[k], best[k]  # (t1 - t0,) each, frame t at t - t0
                    while t[b] < ends[b] and best_b[t[b] - t0] == blank:  # blanks close frames
                        scores[b] += lp_b[t[b] - t0]
                        t[b], on_frame[b] = t[b] + 1, 0
                    if t[b] == ends[b]:
                        continue
                    label = best_b[t[b] - t0]
                    scores[b] += lp_b[t[b] - t0]
                    tokens[b].append(label)
                    stamps[b].append(offsets[b] + t[b])
                    on_frame[b] += 1
                    if on_frame[b] == cap:  # the cap closes the frame without a blank
                        t[b], on_frame[b] = t[b] + 1, 0
                    emitters.append(b)
                    labels.append(label)
                if not emitters:
                    break
                label_t = torch.tensor(labels, dtype=torch.long, device=pred_proj.device)
                if len(emitters) == batch:  # every utterance emitted (one stream: always): no select / scatter
                    out, pred_state = pred_net.step(label_t, pred_state)  # (B, Dp)
                    pred_out = out.to(pred_out.dtype, copy=True)  # an ordinary tensor, like the clone above
                    pred_proj = joint.project_prediction(out).to(pred_proj.dtype)  # (B, J)
                else:
                    idx_dev = torch.tensor(emitters, device=pred_proj.device)
                    out, sub = pred_net.step(label_t, st.select(pred_state, idx_dev))  # (E, Dp)
                    pred_state = st.scatter(pred_state, idx_dev, sub)
                    pred_out[idx_dev] = out.to(pred_out.dtype)
                    pred_proj[idx_dev] = joint.project_prediction(out).to(pred_proj.dtype)  # (E, J)
                rows = [b for b in emitters if t[b] < ends[b]]
        return RNNTGreedyState(pred_state, pred_out, tokens, stamps, scores)


@dataclass(frozen=True)
class RNNTBeamOptions:
    blank: int  # id of the blank unit (asrlib: V, the last output)
    beam_size: int = 4  # hypotheses kept after every frame
    max_symbols_per_frame: int = 5  # tokens one frame may emit (as greedy's); 1 = icefall's modified beam search
    lm: Any = None  # a token-level language model for shallow fusion (asrlib.ngram.NgramLM), or None
    lm_weight: float = 0.0  # its log-probabilities' weight in the score
    token_bonus: float = 0.0  # added for every token emitted (offsets the deletions a language model brings)


@dataclass
class RNNTBeamState:
    """Everything beam search carries from one chunk of encoder frames to the next, per stream:
    its hypotheses (token sequence and timestamps), their scores, and the prediction network's
    state and output (A, Dp) after each (batched over that stream's hypotheses).

    ``ends`` is each hypothesis' score for ending here (lm_weight * log p_LM(</s> | tokens);
    0 without a language model): the best hypothesis, which ``tokens``, ``timestamps`` and
    ``scores`` give per stream, is the best one if the utterance ended now."""

    hyps: list[list[tuple[tuple[int, ...], tuple[int, ...]]]]
    hyp_scores: list[list[float]]
    ends: list[list[float]]
    pred_state: list[Any]
    pred_out: list[Tensor]

    def _totals(self) -> list[list[float]]:
        """Each stream's hypotheses' scores, ending included."""
        return [[s + e for s, e in zip(sc, en)] for sc, en in zip(self.hyp_scores, self.ends)]

    def _bests(self) -> list[int]:
        return [max(range(len(t)), key=t.__getitem__) for t in self._totals()]

    @property
    def tokens(self) -> list[list[int]]:
        return [list(h[k][0]) for h, k in zip(self.hyps, self._bests())]

    @property
    def timestamps(self) -> list[list[int]]:
        return [list(h[k][1]) for h, k in zip(self.hyps, self._bests())]

    @property
    def scores(self) -> list[float]:
        return [max(t) for t in self._totals()]

    def nbest(self, stream: int, detokenize: Detokenize | None = None) -> list[DecodingResult]:
        """Every hypothesis stream ``stream`` holds, best first, scored as ``scores`` scores the
        best (ending included): what a second pass rescores (asrlib/decoding/rescore.py)."""
        ranked = sorted(zip(self._totals()[stream], self.hyps[stream]), key=lambda x: -x[0])
        return [DecodingResult(list(seq), list(stamps), total, detokenize(list(seq)) if detokenize else "")
                for total, (seq, stamps) in ranked]

    def select(self, rows: list[int]) -> "RNNTBeamState":
        """The state of streams ``rows``."""
        return RNNTBeamState(*([getattr(self, f)[r] for r in rows] for f in _BEAM_FIELDS))

    def scatter(self, rows: list[int], sub: "RNNTBeamState") -> "RNNTBeamState":
        """A copy with streams ``rows`` replaced by ``sub`` (a ``select`` result, advanced)."""
        fields = [list(getattr(self, f)) for f in _BEAM_FIELDS]
        for k, r in enumerate(rows):
            for f, values in zip(_BEAM_FIELDS, fields):
                values[r] = getattr(sub, f)[k]
        return RNNTBeamState(*fields)


_BEAM_FIELDS = ("hyps", "hyp_scores", "ends", "pred_state", "pred_out")


def _close(closed: dict, hyps: list, end_scores: list[float], r: int) -> None:
    """Close round ``r``'s open hypotheses into ``closed`` (seq -> (score, stamps, round, row))
    with these end scores; a sequence reached by several paths keeps its best one."""
    for a, ((seq, stamps), s) in enumerate(zip(hyps, end_scores)):
        if seq not in closed or s > closed[seq][0]:
            closed[seq] = (s, stamps, r, a)


class RNNTBeamDecoder(_ChunkedRNNTDecoder):
    """Beam search over the lattice greedy search walks: up to ``max_symbols_per_frame`` tokens
    per frame, then a blank (or the cap) ends the frame. Each stream (utterance) is searched on
    its own; like greedy search it runs chunk by chunk (``init_state``, ``decode_chunk``), and
    ``decode`` is one chunk of the whole utterance, so streaming gives the same result.

    Each frame runs in rounds. In round r every still-open hypothesis (r tokens on this frame)
    is scored for all symbols at once (one joint call, (A, V + 1)): its blank closes it for the
    frame, each token extends it into round r + 1 and steps the prediction network. Closed
    hypotheses are merged by token sequence (the better path is kept: max, not sum, so
    ``score`` is the log-prob of one path, comparable with :class:`RNNTGreedyDecoder` at the
    same cap) and the ``beam_size`` best survive. An open one is kept only among the
    ``beam_size`` best of its round and while it beats the worst closed survivor, since
    further symbols only lower a score. At the cap the open ones close without a blank.

    With a language model (``lm``, shallow fusion) a token's score is its log-prob plus
    ``lm_weight`` x log p_LM(token | the tokens before it) plus ``token_bonus``, and a
    hypothesis ends with ``lm_weight`` x log p_LM(</s> | its tokens): ``score`` is then that
    sum, no longer a probability. Without one, and with no bonus, nothing changes. A bonus
    larger than a token's cost lets a further symbol raise a score, so the pruning of open
    hypotheses by the worst closed survivor is then one more approximation of the beam's.

    With ``max_symbols_per_frame = 1`` this is icefall's ``modified_beam_search``. That is too
    tight for letters: at 25 frames per second a word boundary and a fast speaker need several
    letters in one frame, and the search dropped word-final letters ("THRE", "NIN").
    """

    def __init__(self, options: RNNTBeamOptions):
        if options.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {options.beam_size}")
        if options.max_symbols_per_frame < 1:
            raise ValueError(f"max_symbols_per_frame must be >= 1, got {options.max_symbols_per_frame}")
        if options.lm is not None and options.lm.vocab_size != options.blank:
            raise ValueError(f"the language model has {options.lm.vocab_size} pieces and the model {options.blank}: "
                             "build it with the model's tokenizer")
        self.options = options

    @torch.no_grad()
    def init_state(self, batch: int, pred_net: Any, device: torch.device | str = "cpu") -> RNNTBeamState:
        streams = []
        for _ in range(batch):
            pred_state, pred_out = _prime(pred_net, 1, self.options.blank, torch.device(device))
            streams.append(([((), ())], [0.0], [self._end(())], pred_state, pred_out))
        return RNNTBeamState(*(list(x) for x in zip(*streams)))

    @torch.no_grad()
    def decode_chunk(
        self,
        pred_net: Any,
        joint: Any,
        enc_chunk: Tensor,
        state: RNNTBeamState,
        frame_offset: int | list[int] = 0,
        lengths: Tensor | None = None,
    ) -> RNNTBeamState:
        """Continue every stream over its frames of ``enc_chunk`` (B, Tc, De), the first of
        which is frame ``frame_offset`` (one int, or one per stream); ``lengths`` (B,) counts
        each stream's valid frames (default: all Tc). Returns a new state."""
        _check_enc(enc_chunk, lengths)
        batch = enc_chunk.shape[0]
        valid, offsets = _per_utterance(enc_chunk, lengths, frame_offset)
        if len(state.hyps) != batch:
            raise ValueError(f"the state has {len(state.hyps)} streams and the chunk {batch}")
        hyps, scores, ends, pred_state, pred_out = (list(getattr(state, f)) for f in _BEAM_FIELDS)
        for b in range(batch):
            e = joint.project_encoder(enc_chunk[b, : valid[b]])  # (T_b, J)
            if e.shape[0] == 0:
                continue
            search = (hyps[b], scores[b], pred_state[b], pred_out[b],
                      joint.project_prediction(pred_out[b]))
            for t in range(e.shape[0]):
                search = self._frame(pred_net, joint, e[t], offsets[b] + t, *search)
            hyps[b], scores[b], pred_state[b], pred_out[b], _ = search
            ends[b] = [self._end(seq) for seq, _ in hyps[b]]
        return RNNTBeamState(hyps, scores, ends, pred_state, pred_out)

    def _end(self, seq: tuple[int, ...]) -> float:
        lm = self.options.lm
        return 0.0 if lm is None else self.options.lm_weight * float(lm.logprobs(lm.context(seq))[lm.eos])

    def _lm_rows(self, seqs: list[tuple[int, ...]]) -> Tensor:
        """(A, V) lm_weight * log p_LM(token | seq) for each hypothesis' token sequence."""
        lm = self.options.lm
        rows = np.stack([lm.logprobs(lm.context(seq))[: lm.vocab_size] for seq in seqs])
        return torch.from_numpy(rows).float() * self.options.lm_weight

    def _frame(self, pred_net: Any, joint: Any, e_t: Tensor, stamp: int, hyps: list, scores: list[float],
               pred_state: Any, pred_out: Tensor, pred_proj: Tensor) -> tuple[list, list[float], Any, Tensor, Tensor]:
        """One frame of one stream: e_t (J,) the projected encoder frame; the hypotheses (A of
        them), their scores, prediction states, outputs (A, Dp) and projections (A, J) in and out."""
        blank, beam, cap = self.options.blank, self.options.beam_size, self.options.max_symbols_per_frame
        dev = e_t.device
        # closed: seq -> (score, stamps, round, row of that round's states)
        closed: dict[tuple[int, ...], tuple[float, tuple[int, ...], int, int]] = {}
        rounds = []  # (pred_state, pred_out, pred_proj) of each round's open hypotheses
        for r in range(cap + 1):
            rounds.append((pred_state, pred_out, pred_proj))
            if r == cap:  # the cap closes the frame without a blank
                _close(closed, hyps, scores, r)
                break
            logp = joint.combine(e_t[None], pred_proj).float().log_softmax(dim=-1).cpu()  # (A, V + 1)
            _close(closed, hyps, [sc + float(lp) for sc, lp in zip(scores, logp[:, blank])], r)
            ranked = sorted(closed.values(), key=lambda c: -c[0])[:beam]
            floor = ranked[-1][0] if len(ranked) == beam else -math.inf
            closed = {k: c for k, c in closed.items() if c[0] >= floor}
            tok = logp.clone()
            tok[:, blank] = -math.inf
            if self.options.lm is not None:  # shallow fusion
                tok[:, :blank] += self._lm_rows([seq for seq, _ in hyps])
            tok[:, :blank] += self.options.token_bonus
            total = (torch.tensor(scores)[:, None] + tok).flatten()  # (A * (V + 1),)
            top_s, top_i = total.topk(min(beam, total.numel()))
            grow = [(s, divmod(i, tok.shape[1])) for s, i in zip(top_s.tolist(), top_i.tolist()) if s > floor]
            if not grow:
                break
            parents = torch.tensor([a for _, (a, _) in grow], device=dev)
            symbols = torch.tensor([v for _, (_, v) in grow], device=dev)
            out, pred_state = pred_net.step(symbols, st.select(pred_state, parents))  # (A', Dp)
            pred_out = out.to(pred_out.dtype)
            pred_proj = joint.project_prediction(out).to(pred_proj.dtype)  # (A', J)
            hyps = [(hyps[a][0] + (v,), hyps[a][1] + (stamp,)) for _, (a, v) in grow]
            scores = [s for s, _ in grow]
        ranked = sorted(closed.items(), key=lambda kv: -kv[1][0])[:beam]
        hyps = [(seq, stamps) for seq, (_, stamps, _, _) in ranked]
        scores = [c[0] for _, c in ranked]
        rows = [(r, a) for _, (_, _, r, a) in ranked]  # where each survivor's prediction state is
        pred_state = st.concat([st.select(rounds[r][0], torch.tensor([a], device=dev)) for r, a in rows])
        pred_out = torch.cat([rounds[r][1][a : a + 1] for r, a in rows])
        pred_proj = torch.cat([rounds[r][2][a : a + 1] for r, a in rows])
        return hyps, scores, pred_state, pred_out, pred_proj
