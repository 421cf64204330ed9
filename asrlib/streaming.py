"""StreamingRecognizer: audio pieces of any length in, growing text out.

The same weights, the same chunk boundaries as training: the recogniser buffers samples until
a whole chunk of ``chunk_frames`` frontend frames is available, then runs one streaming step
(``HybridASR.stream_step``: frontend, encoder, CTC head) and the decoder over its frames;
``finalize`` flushes the last partial chunk, so no final word is ever dropped. Because every
block is causal at chunk granularity, the encoder output is the full model's output (tests
check it to float32 round-off).

    rec = StreamingRecognizer(model, tokenizer)
    for partial in rec.stream(wave, piece_samples=1600):   # partial results, then the final one
        print(partial.text)
    rec.reset()
    result = rec.recognize(wave)                          # the final result only

or push pieces yourself: ``rec.accept_waveform(piece)`` ... ``rec.finalize()``.

Many streams (``num_streams``): ``accept_waveforms([piece_0, piece_1, …])``. The streams that
have a whole chunk ready are stepped together through the encoder **and decoded together**
(one batched prediction-network/joint call per emitted-symbol step); a stream's final partial
chunk is run on its own. ``recognize_many(waves)`` runs a list of utterances through the
streams, starting the next utterance in a stream as soon as one ends.

Backends (``StreamingBackend``): the PyTorch model here, onnxruntime in
:mod:`asrlib.onnx_runtime`. The recogniser logic (buffering, priming, the flush, decoding)
is written once, here.

Sample bookkeeping (per stream): the frontend needs ``context = win - hop`` samples of left
context before its first frame, so the first ``context`` samples prime its cache; afterwards
each step eats ``chunk_samples``. The state of every stream has a fixed size: it does not
grow with elapsed time.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from asrlib.decoding.ctc import CTCGreedyDecoder, CTCGreedyOptions, CTCPrefixBeamDecoder, CTCPrefixBeamOptions
from asrlib.decoding.rescore import PhoneRescoring
from asrlib.decoding.result import DecodingResult
from asrlib.decoding.rnnt import RNNTBeamDecoder, RNNTBeamOptions, RNNTGreedyDecoder, RNNTGreedyOptions
from asrlib.model import state as st
from asrlib.model.hybrid import HybridASR, StreamingConstants

DECODERS = ("rnnt_greedy", "rnnt_beam", "ctc_greedy", "ctc_beam")


class StreamingBackend(Protocol):
    """What the recogniser needs from a model: a batched streaming step and the RNN-T parts.

    The state is batch first (``asrlib.model.state`` selects and scatters its rows).
    """

    constants: StreamingConstants
    device: torch.device
    phone_vocab_size: int  # phones of the model's phone head (its step's third output); 0 without one
    prediction: Any  # init_state(batch, device), step(tokens, state): see asrlib.decoding.rnnt
    joint: Any  # project_encoder, project_prediction, combine

    def init_state(self, n: int) -> Any:
        """The state of ``n`` fresh streams."""

    def prime(self, state: Any, i: int, first: np.ndarray) -> Any:
        """``state`` with stream ``i`` restarted and primed with its first ``context`` samples."""

    def step(self, state: Any, streams: list[int], samples: np.ndarray) -> tuple[Tensor, Tensor, Tensor | None, Any]:
        """samples (k, n * hop) for the k ``streams`` -> encoder frames (k, T', D), CTC
        log-probs (k, T', V + 1), the phone head's log-probs (k, T', P + 1) or None for a model
        without one, new state (the other streams' rows unchanged)."""


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    """Run in eval mode (no dropout), and give the model back in the mode it came in."""
    was_training = model.training
    if was_training:
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


class _EvalPrediction:
    """A prediction network stepped in eval mode (no dropout on its embeddings) and without
    autograd, whatever mode its model is in: the decoders call it between encoder steps."""

    def __init__(self, net: torch.nn.Module):
        self.net = net

    def init_state(self, batch: int, device: torch.device | str = "cpu") -> Any:
        return self.net.init_state(batch, device)

    @torch.inference_mode()
    def step(self, tokens: Tensor, state: Any) -> tuple[Tensor, Any]:
        with _eval_mode(self.net):
            return self.net.step(tokens, state)


# inductor leaves the frontend's rfft to its eager kernel (fine: it is one small call) and says so
_INDUCTOR_COMPLEX = "Torchinductor does not support code generation for complex operators"


def _quiet(compiled):
    """The compiled step without inductor's warning about the rfft; the eager step is left alone."""

    def step(*args):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_INDUCTOR_COMPLEX)
            return compiled(*args)

    return step


class TorchStreamingBackend:
    """The PyTorch model as a streaming backend: ``HybridASR.stream_step`` on selected rows.

    ``compile=True`` runs the step through ``torch.compile`` (inductor; on a CPU it needs a C++
    compiler). The first step then takes a while (tens of seconds: the compilation, once per
    process and model, and again for each new number of streams stepped at once); later steps
    fuse the many small element-wise operations of a chunk, which dominate a streaming step.
    The results are those of the eager step up to float round-off. A stream's last, partial
    chunk is stepped eagerly.
    """

    def __init__(self, model: HybridASR, device: str | torch.device | None = None, compile: bool = False):
        own = next(model.parameters()).device
        self.device = own if device is None else torch.device(device)
        if self.device != own:
            raise ValueError(f"the model is on {own}, not {self.device}: move it (model.to(device)) or leave "
                             "the device unset to stream where the model is")
        self.model = model
        self.constants = model.streaming
        self.phone_vocab_size = model.cfg.phone_vocab_size
        self.prediction, self.joint = _EvalPrediction(model.prediction), model.joint
        self._stream_step = _quiet(torch.compile(model.stream_step)) if compile else model.stream_step

    @torch.inference_mode()  # states made like the steps' outputs: a compiled step is not compiled twice
    def init_state(self, n: int) -> Any:
        return self.model.init_stream(n, self.device)

    @torch.inference_mode()  # no autograd bookkeeping at all: ~15 % faster steps than no_grad
    def prime(self, state: Any, i: int, first: np.ndarray) -> Any:
        row = self.model.init_stream(torch.from_numpy(np.asarray(first, np.float32)[None]).to(self.device))
        return st.scatter(state, torch.tensor([i], device=self.device), row)

    @torch.inference_mode()
    def step(self, state: Any, streams: list[int], samples: np.ndarray) -> tuple[Tensor, Tensor, Tensor | None, Any]:
        everyone = streams == list(range(st.batch_size(state)))  # no select / scatter copies needed
        idx = torch.tensor(streams, device=self.device)
        # a final partial chunk goes through the eager step: compiling its new shape would stall the flush
        step = self._stream_step if samples.shape[-1] == self.constants.chunk_samples else self.model.stream_step
        with _eval_mode(self.model):
            enc, ctc, phones, sub = step(torch.from_numpy(samples).to(self.device),
                                         state if everyone else st.select(state, idx))
        return enc, ctc, phones, sub if everyone else st.scatter(state, idx, sub)


class RNNTStreamDecoder:
    """Greedy RNN-T over a backend's prediction network and joint, chunk by chunk."""

    def __init__(self, backend: StreamingBackend, max_symbols_per_frame: int = 5):
        self.backend = backend
        self.decoder = RNNTGreedyDecoder(RNNTGreedyOptions(backend.constants.blank, max_symbols_per_frame))

    def init_state(self, n: int):
        return self.decoder.init_state(n, self.backend.prediction, self.backend.device)

    def decode_chunk(self, enc: Tensor, ctc: Tensor, state, offsets: list[int]):
        return self.decoder.decode_chunk(self.backend.prediction, self.backend.joint, enc, state, offsets)


class RNNTBeamStreamDecoder(RNNTStreamDecoder):
    """RNN-T beam search (optionally with a language model), chunk by chunk, one stream at a time."""

    def __init__(self, backend: StreamingBackend, options: RNNTBeamOptions):
        self.backend = backend
        self.decoder = RNNTBeamDecoder(options)


class CTCStreamDecoder:
    """Greedy CTC, chunk by chunk (the last frame's label carries over), or prefix beam search
    (optionally with a language model) when ``options`` are given."""

    def __init__(self, backend: StreamingBackend, options: CTCPrefixBeamOptions | None = None):
        self.decoder = (CTCGreedyDecoder(CTCGreedyOptions(backend.constants.blank)) if options is None
                        else CTCPrefixBeamDecoder(options))

    def init_state(self, n: int):
        return self.decoder.init_state(n)

    def decode_chunk(self, enc: Tensor, ctc: Tensor, state, offsets: list[int]):
        return self.decoder.decode_chunk(ctc, state, offsets)


@dataclass
class _Stream:
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # samples not yet used
    primed: bool = False
    frames: int = 0  # encoder frames produced so far
    enc: list = field(default_factory=list)  # encoder chunks, when keep_encoder_output
    phones: list = field(default_factory=list)  # the phone head's log-prob chunks, when rescoring
    finished: bool = False
    final: DecodingResult | None = None  # the rescored final result


class StreamingRecognizer:
    """Streams of audio in, text out; see the module docstring.

    ``model`` runs on its own device (``device`` may only confirm it); a model in training mode
    is stepped in eval mode and handed back in training mode. ``backend`` replaces the model
    (e.g. :class:`asrlib.onnx_runtime.OnnxStreamingBackend`). ``compile=True``: the model's
    step through ``torch.compile`` (see :class:`TorchStreamingBackend`). ``decoder="rnnt_beam"``
    or ``"ctc_beam"`` searches ``beam_size`` hypotheses per stream, with a language model for
    shallow fusion if ``lm`` is given (:class:`asrlib.decoding.rnnt.RNNTBeamDecoder`,
    :class:`asrlib.decoding.ctc.CTCPrefixBeamDecoder`); its partial result is the best
    hypothesis so far, so, unlike greedy's, it may change its earlier words. ``rescoring``
    (``"rnnt_beam"`` only, with a tokenizer and a model with a phone head): a stream's final
    result is its beam's hypotheses rescored by the phone head (:mod:`asrlib.decoding.rescore`).
    """

    def __init__(self, model: HybridASR | None = None, tokenizer=None, decoder: str = "rnnt_greedy",
                 num_streams: int = 1, max_symbols_per_frame: int = 5, device: str | torch.device | None = None,
                 keep_encoder_output: bool = False, backend: StreamingBackend | None = None,
                 compile: bool = False, beam_size: int = 4, lm: Any = None, lm_weight: float = 0.0,
                 token_bonus: float = 0.0, rescoring: PhoneRescoring | None = None):
        if decoder not in DECODERS:
            raise ValueError(f"streaming decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
        if num_streams < 1:
            raise ValueError(f"num_streams must be >= 1, got {num_streams}")
        if backend is not None and compile:
            raise ValueError("compile applies to the PyTorch model; a backend given is used as it is")
        self.backend = backend if backend is not None else TorchStreamingBackend(model, device, compile)
        self.constants: StreamingConstants = self.backend.constants
        if decoder == "rnnt_beam":
            self.decoder = RNNTBeamStreamDecoder(self.backend, RNNTBeamOptions(
                self.constants.blank, beam_size, max_symbols_per_frame, lm, lm_weight, token_bonus))
        elif decoder == "ctc_beam":
            self.decoder = CTCStreamDecoder(self.backend, CTCPrefixBeamOptions(
                self.constants.blank, beam_size, lm=lm, lm_weight=lm_weight, token_bonus=token_bonus))
        elif lm is not None or token_bonus:
            raise ValueError("a language model and a token bonus need a beam decoder ('rnnt_beam' or 'ctc_beam')")
        else:
            self.decoder = (RNNTStreamDecoder(self.backend, max_symbols_per_frame) if decoder == "rnnt_greedy"
                            else CTCStreamDecoder(self.backend))
        if rescoring is not None:
            if decoder != "rnnt_beam" or tokenizer is None:
                raise ValueError("phone rescoring needs decoder='rnnt_beam' and a tokenizer (it reads the words)")
            if self.backend.phone_vocab_size != rescoring.lexicon.size:
                raise ValueError(f"phone rescoring: the lexicon has {rescoring.lexicon.size} phones and the model's "
                                 f"phone head {self.backend.phone_vocab_size} (0: none, or an ONNX export without it)")
        self.rescoring = rescoring
        self.tokenizer, self.num_streams = tokenizer, num_streams
        self.keep_encoder_output = keep_encoder_output
        self.reset()

    def reset(self) -> None:
        """Every stream starts afresh."""
        self.state = self.backend.init_state(self.num_streams)
        self.dec_state = self.decoder.init_state(self.num_streams)
        self.streams = [_Stream() for _ in range(self.num_streams)]
        self._texts: dict[int, tuple[list[int], str]] = {}  # stream -> (tokens detokenized, text)

    def reset_stream(self, i: int) -> None:
        """Stream ``i`` starts afresh (a new utterance); the others go on."""
        self.state = st.scatter(self.state, torch.tensor([i], device=self.backend.device), self.backend.init_state(1))
        self.dec_state = self.dec_state.scatter([i], self.decoder.init_state(1))
        self.streams[i] = _Stream()
        self._texts.pop(i, None)

    # ------------------------------------------------------------------ input
    def accept_waveform(self, samples, stream: int = 0) -> str:
        """Add samples to one stream; returns its partial text."""
        pieces: list = [None] * self.num_streams
        pieces[stream] = samples
        self.accept_waveforms(pieces, texts=False)
        return self.partial(stream).text

    def accept_waveforms(self, pieces: Sequence, texts: bool = True) -> list[str] | None:
        """Add ``pieces[i]`` (array or None) to stream i; run every whole chunk that is ready.
        Returns every stream's partial text (``texts=False``: nothing, which is cheaper)."""
        c = self.constants
        for i, piece in enumerate(pieces):
            if piece is None:
                continue
            s = self.streams[i]
            if s.finished:
                raise RuntimeError(f"stream {i} was finalized; call reset() or reset_stream({i}) to start a new one")
            s.pending = np.concatenate([s.pending, np.asarray(piece, dtype=np.float32).reshape(-1)])
            if not s.primed and len(s.pending) >= c.context:
                self.state = self.backend.prime(self.state, i, s.pending[: c.context])
                s.pending, s.primed = s.pending[c.context:], True
        n = c.chunk_samples
        while True:
            ready = [i for i, s in enumerate(self.streams) if s.primed and len(s.pending) >= n]
            if not ready:
                break
            samples = np.stack([self.streams[i].pending[:n] for i in ready])  # (k, chunk_samples)
            for i in ready:
                self.streams[i].pending = self.streams[i].pending[n:]
            self._run(ready, samples)
        return [self.partial(i).text for i in range(self.num_streams)] if texts else None

    def finalize(self, stream: int = 0) -> DecodingResult:
        """Flush the last partial chunk of ``stream`` and return its final result."""
        s = self.streams[stream]
        if not s.finished:
            hop = self.constants.hop
            whole = (len(s.pending) // hop) * hop if s.primed else 0
            if whole > 0:
                self._run([stream], s.pending[None, :whole])
            s.pending, s.finished = s.pending[whole:], True
            if self.rescoring is not None:
                log_probs = torch.cat(s.phones) if s.phones else torch.zeros(0, self.rescoring.lexicon.size + 1)
                s.final = self.rescoring.rescore(self.dec_state.nbest(stream, self.tokenizer.decode), log_probs)
        return self.partial(stream)

    def finalize_all(self) -> list[DecodingResult]:
        return [self.finalize(i) for i in range(self.num_streams)]

    # ------------------------------------------------------------------ whole waveforms
    def stream(self, wave: np.ndarray, piece_samples: int = 1600, stream: int = 0) -> Iterator[DecodingResult]:
        """Feed ``wave`` to ``stream`` ``piece_samples`` at a time (<= 0: all at once), yielding
        the partial result after every piece and, last, the final one (after the flush)."""
        wave = np.asarray(wave, dtype=np.float32).reshape(-1)
        step = max(len(wave), 1) if piece_samples <= 0 else piece_samples
        for start in range(0, len(wave), step):
            pieces: list = [None] * self.num_streams
            pieces[stream] = wave[start : start + step]
            self.accept_waveforms(pieces, texts=False)
            yield self.partial(stream)
        yield self.finalize(stream)

    def recognize(self, wave: np.ndarray, piece_samples: int = 1600, stream: int = 0) -> DecodingResult:
        """The final result of ``wave`` streamed in pieces (``stream`` is left finalized)."""
        result = None
        for result in self.stream(wave, piece_samples, stream):
            pass
        return result

    def recognize_many(self, waves: Sequence[np.ndarray], piece_samples: int = 1600) -> list[DecodingResult]:
        """Final results of ``waves``, run ``num_streams`` at a time: every round gives each busy
        stream its next piece and steps the ready ones together; a stream whose utterance has
        ended is finalized and takes the next utterance. Results are in the order of ``waves``."""
        self.reset()
        results: list[DecodingResult | None] = [None] * len(waves)
        todo = iter(range(len(waves)))
        slots: list[list[int] | None] = [None] * self.num_streams  # [utterance, next sample] per stream

        def assign(i: int) -> None:
            u = next(todo, None)
            slots[i] = None if u is None else [u, 0]
            if u is not None:
                self.reset_stream(i)

        for i in range(self.num_streams):
            assign(i)
        step = piece_samples if piece_samples > 0 else max((len(w) for w in waves), default=1)
        while any(s is not None for s in slots):
            pieces: list = [None] * self.num_streams
            for i, slot in enumerate(slots):
                if slot is not None:
                    u, pos = slot
                    pieces[i] = np.asarray(waves[u], dtype=np.float32).reshape(-1)[pos : pos + step]
                    slot[1] = pos + step
            self.accept_waveforms(pieces, texts=False)
            for i, slot in enumerate(slots):
                if slot is not None and slot[1] >= len(waves[slot[0]]):
                    results[slot[0]] = self.finalize(i)
                    assign(i)
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------ one step
    def _run(self, streams: list[int], samples: np.ndarray) -> None:
        enc, ctc, phones, self.state = self.backend.step(self.state, streams, samples)  # (k, T', D), (k, T', V + 1)
        everyone = streams == list(range(self.num_streams))
        sub = self.dec_state if everyone else self.dec_state.select(streams)
        sub = self.decoder.decode_chunk(enc, ctc, sub, [self.streams[i].frames for i in streams])
        self.dec_state = sub if everyone else self.dec_state.scatter(streams, sub)
        for row, i in enumerate(streams):
            s = self.streams[i]
            if self.keep_encoder_output:
                s.enc.append(torch.as_tensor(enc[row]).detach().cpu())
            if self.rescoring is not None:
                s.phones.append(phones[row].detach().cpu())
            s.frames += enc.shape[1]

    # ------------------------------------------------------------------ output
    def partial(self, stream: int = 0) -> DecodingResult:
        if self.streams[stream].final is not None:
            return self.streams[stream].final
        d = self.dec_state
        tokens = list(d.tokens[stream])
        text = ""
        if self.tokenizer is not None:  # detokenize when the hypothesis changed
            done, text = self._texts.get(stream, (None, ""))
            if done != tokens:
                text = self.tokenizer.decode(tokens)
                self._texts[stream] = (tokens, text)
        return DecodingResult(tokens, list(d.timestamps[stream]), float(d.scores[stream]), text)

    def encoder_output(self, stream: int = 0) -> Tensor:
        """All encoder frames of a stream so far (needs ``keep_encoder_output=True``): (T', D)."""
        chunks = self.streams[stream].enc
        return torch.cat(chunks) if chunks else torch.zeros(0, 0)

    def state_numel(self) -> int:
        """Elements in the batched model state: constant however long the streams run."""
        return st.num_elements(self.state)
