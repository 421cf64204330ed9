"""StreamingRecognizer: audio pieces of any length in, growing text out.

The same weights, the same chunk boundaries as training: the recogniser buffers samples until
a whole chunk of ``chunk_frames`` frontend frames is available, then runs the frontend, the
encoder and the decoder one step; ``finalize`` flushes the last partial chunk, so no final
word is ever dropped. Because every block is causal at chunk granularity, the encoder output
is the full model's output (tests check it to float32 round-off).

    rec = StreamingRecognizer(model, tokenizer)
    for piece in pieces:                 # 1 sample, 37 samples, 20 ms, 1 s …
        partial = rec.accept_waveform(piece)
    result = rec.finalize()              # text, tokens, per-token encoder frames

Several streams run batched (``num_streams``): ``accept_waveforms([piece_0, piece_1, …])``.
Streams that have a whole chunk ready are stepped together (their states are selected out of
the batch and written back); a stream's final partial chunk is run on its own.

Sample bookkeeping (per stream): the frontend needs ``win - hop`` samples of left context
before its first frame, so the first ``win - hop`` samples prime its cache; afterwards each
step eats ``chunk_frames * hop`` samples. The state of every stream has a fixed size: it does
not grow with elapsed time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from asrlib.decoding.result import DecodingResult
from asrlib.decoding.rnnt import RNNTGreedyDecoder, RNNTGreedyOptions
from asrlib.model import state as st
from asrlib.model.hybrid import HybridASR


class TorchStreamingBackend:
    """The PyTorch model as a streaming step: (state, samples) -> (encoder frames, state)."""

    def __init__(self, model: HybridASR, device: str | torch.device = "cpu"):
        self.model = model.eval()
        self.device = torch.device(device)
        fe = model.frontend
        self.hop, self.context = fe.hop_length, fe.win_length - fe.hop_length
        self.chunk_samples = model.encoder.chunk_frames * fe.hop_length
        self.blank = model.blank
        self.prediction, self.joint = model.prediction, model.joint

    def init_state(self, n: int) -> Any:
        return {"frontend": self.model.frontend.init_state(n, self.device),
                "encoder": self.model.encoder.init_state(n, self.device)}

    @torch.no_grad()
    def prime(self, state: Any, i: int, first: np.ndarray) -> Any:
        row = self.model.frontend.init_state(torch.from_numpy(first[None]).to(self.device))
        idx = torch.tensor([i], device=self.device)
        return {**state, "frontend": st.scatter(state["frontend"], idx, row)}

    @torch.no_grad()
    def step(self, state: Any, streams: list[int], samples: np.ndarray) -> tuple[Tensor, Any]:
        """samples (k, n * hop) for the k ``streams`` -> encoder frames (k, T', D), new state."""
        idx = torch.tensor(streams, device=self.device)
        fe_state, enc_state = st.select(state["frontend"], idx), st.select(state["encoder"], idx)
        feats, fe_state = self.model.frontend.step(torch.from_numpy(samples).to(self.device), fe_state)
        enc, enc_state = self.model.encoder.step(feats, enc_state)  # (k, T', D)
        new = {"frontend": st.scatter(state["frontend"], idx, fe_state),
               "encoder": st.scatter(state["encoder"], idx, enc_state)}
        return enc, new

    @torch.no_grad()
    def ctc_log_probs(self, enc: Tensor) -> Tensor:
        return self.model.ctc_head(enc)


@dataclass
class _Stream:
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # samples not yet used
    primed: bool = False
    frames: int = 0  # encoder frames produced so far
    decoder: Any = None  # RNNTGreedyState (batch of one) or CTC bookkeeping
    enc: list = field(default_factory=list)  # encoder chunks, when keep_encoder_output
    finished: bool = False


class StreamingRecognizer:
    def __init__(self, model: HybridASR | None = None, tokenizer=None, decoder: str = "rnnt_greedy",
                 num_streams: int = 1, max_symbols_per_frame: int = 5, device: str = "cpu",
                 keep_encoder_output: bool = False, backend: Any = None):
        if decoder not in ("rnnt_greedy", "ctc_greedy"):
            raise ValueError(f"streaming decoder must be 'rnnt_greedy' or 'ctc_greedy', got {decoder!r}")
        self.backend = backend if backend is not None else TorchStreamingBackend(model, device)
        self.tokenizer, self.decoder_name, self.num_streams = tokenizer, decoder, num_streams
        self.rnnt = RNNTGreedyDecoder(RNNTGreedyOptions(self.backend.blank, max_symbols_per_frame))
        self.keep_encoder_output = keep_encoder_output
        self.reset()

    def reset(self) -> None:
        self.state = self.backend.init_state(self.num_streams)
        self.streams = [self._new_stream() for _ in range(self.num_streams)]

    def _new_stream(self) -> _Stream:
        s = _Stream()
        if self.decoder_name == "rnnt_greedy":
            s.decoder = self.rnnt.init_state(1, self.backend.prediction, self.backend.device)
        else:
            s.decoder = {"tokens": [], "timestamps": [], "score": 0.0, "last": self.backend.blank}
        return s

    # ------------------------------------------------------------------ input
    def accept_waveform(self, samples, stream: int = 0) -> str:
        """Add samples to one stream; returns its partial text."""
        pieces: list = [None] * self.num_streams
        pieces[stream] = samples
        return self.accept_waveforms(pieces)[stream]

    def accept_waveforms(self, pieces: list) -> list[str]:
        """Add ``pieces[i]`` (array or None) to stream i; run every whole chunk that is ready."""
        for i, piece in enumerate(pieces):
            if piece is None:
                continue
            s = self.streams[i]
            if s.finished:
                raise RuntimeError(f"stream {i} was finalized; call reset() to start a new one")
            s.pending = np.concatenate([s.pending, np.asarray(piece, dtype=np.float32).reshape(-1)])
            if not s.primed and len(s.pending) >= self.backend.context:
                self.state = self.backend.prime(self.state, i, s.pending[: self.backend.context])
                s.pending, s.primed = s.pending[self.backend.context:], True
        n = self.backend.chunk_samples
        while True:
            ready = [i for i, s in enumerate(self.streams) if s.primed and len(s.pending) >= n]
            if not ready:
                break
            samples = np.stack([self.streams[i].pending[:n] for i in ready])  # (k, chunk_samples)
            for i in ready:
                self.streams[i].pending = self.streams[i].pending[n:]
            self._run(ready, samples)
        return [self.partial(i).text for i in range(self.num_streams)]

    def finalize(self, stream: int = 0) -> DecodingResult:
        """Flush the last partial chunk of ``stream`` and return its final result."""
        s = self.streams[stream]
        if not s.finished:
            whole = (len(s.pending) // self.backend.hop) * self.backend.hop if s.primed else 0
            if whole > 0:
                self._run([stream], s.pending[None, :whole])
            s.pending, s.finished = s.pending[whole:], True
        return self.partial(stream)

    def finalize_all(self) -> list[DecodingResult]:
        return [self.finalize(i) for i in range(self.num_streams)]

    # ------------------------------------------------------------------ one step
    def _run(self, streams: list[int], samples: np.ndarray) -> None:
        enc, self.state = self.backend.step(self.state, streams, samples)  # (k, T', D)
        ctc = self.backend.ctc_log_probs(enc) if self.decoder_name == "ctc_greedy" else None
        for row, i in enumerate(streams):
            s = self.streams[i]
            e = enc[row : row + 1]  # (1, T', D)
            if self.keep_encoder_output:
                s.enc.append(torch.as_tensor(e[0]).detach().cpu())
            if self.decoder_name == "rnnt_greedy":
                s.decoder = self.rnnt.decode_chunk(self.backend.prediction, self.backend.joint, e, s.decoder, s.frames)
            else:
                self._ctc_chunk(s, ctc[row], s.frames)
            s.frames += e.shape[1]

    def _ctc_chunk(self, s: _Stream, log_probs: Tensor, offset: int) -> None:
        """Greedy CTC continued across chunks: the last frame's symbol carries over."""
        d, blank = s.decoder, self.backend.blank
        best_lp, best = torch.as_tensor(log_probs).max(dim=-1)  # (T',), (T',)
        for t, (tok, lp) in enumerate(zip(best.tolist(), best_lp.tolist())):
            d["score"] += lp
            if tok != blank and tok != d["last"]:
                d["tokens"].append(tok)
                d["timestamps"].append(offset + t)
            d["last"] = tok

    # ------------------------------------------------------------------ output
    def partial(self, stream: int = 0) -> DecodingResult:
        d = self.streams[stream].decoder
        if self.decoder_name == "rnnt_greedy":
            tokens, stamps, score = d.tokens[0], d.timestamps[0], d.scores[0]
        else:
            tokens, stamps, score = d["tokens"], d["timestamps"], d["score"]
        text = self.tokenizer.decode(tokens) if self.tokenizer is not None else ""
        return DecodingResult(list(tokens), list(stamps), float(score), text)

    def encoder_output(self, stream: int = 0) -> Tensor:
        """All encoder frames of a stream so far (needs ``keep_encoder_output=True``): (T', D)."""
        chunks = self.streams[stream].enc
        return torch.cat(chunks) if chunks else torch.zeros(0, 0)

    def state_numel(self) -> int:
        """Elements in the batched model state: constant however long the streams run."""
        return st.num_elements(self.state)
