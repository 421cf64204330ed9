"""Streaming with onnxruntime only: the graphs written by ``asrlib export`` behind the same
:class:`~asrlib.streaming.StreamingRecognizer` the PyTorch model uses.

:class:`OnnxStreamingBackend` implements :class:`asrlib.streaming.StreamingBackend`
(``constants``, ``device``, ``init_state``, ``prime``, ``step``), and its ``prediction`` /
``joint`` attributes are duck-typed stand-ins for
``PredictionNet`` / ``Joint`` with exactly the methods the RNN-T decoders call. The
recogniser logic (buffering, priming, the flush, decoding) is therefore not written twice.

    rec = load_onnx_recognizer("exported/")          # tokenizer from exported/tokenizer.model
    for piece in pieces:
        print(rec.accept_waveform(piece))
    print(rec.finalize().text)

The state is a dict ``{onnx input name: tensor}`` (e.g. ``state.encoder.blocks.0.mixer.k``),
batch first, so :mod:`asrlib.model.state` selects/scatters streams as for the PyTorch state.
Joint: ``joint.onnx`` holds both projections, so ``project_encoder``/``project_prediction``
here are the identity and ``combine`` runs the whole joint on raw (enc, pred) vectors.

Shapes: B streams, N samples, T' encoder frames, D encoder dim, Dp prediction dim, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from asrlib.config import ModelConfig, model_config_from_dict
from asrlib.model import state as st
from asrlib.model.heads import PredictionState, StatelessState
from asrlib.model.hybrid import StreamingConstants

_DTYPES = {"tensor(float)": torch.float32, "tensor(double)": torch.float64, "tensor(int64)": torch.int64}
_FRONTEND_SAMPLES = "state.frontend.samples"


def _session(path: Path, threads: int | None):
    import onnxruntime as ort

    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {path.parent} a folder written by `asrlib export`?")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def read_metadata(onnx_file: str | Path) -> tuple[ModelConfig, dict]:
    """(ModelConfig, streaming constants) stored in an exported .onnx file's metadata."""
    import onnx

    proto = onnx.load(str(onnx_file), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    if "asrlib_model_config" not in props:
        raise ValueError(f"{onnx_file}: no 'asrlib_model_config' metadata; was it written by `asrlib export`?")
    return model_config_from_dict(json.loads(props["asrlib_model_config"])), json.loads(props["asrlib_streaming"])


def _np(x: Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


class OnnxPrediction:
    """``predictor_step.onnx`` with the prediction network's streaming interface (init_state, step).

    The state is the PyTorch network's dataclass (``PredictionState`` h, c for the LSTM,
    ``StatelessState`` history for the stateless network), one ONNX input per field; an integer
    state is a token history and starts as blanks, a float state starts as zeros.
    """

    def __init__(self, session, kind: str, blank: int):
        self.session = session
        self.blank = blank
        self.state_type = {"lstm": PredictionState, "stateless": StatelessState}[kind]
        self.inputs = session.get_inputs()[1:]  # the state, after "tokens"
        names = [i.name for i in self.inputs]
        if names != [f.name for f in dataclasses.fields(self.state_type)]:
            raise ValueError(f"predictor_step.onnx has state inputs {names}, not those of a {kind} prediction "
                             "network; re-export the model")

    def init_state(self, batch: int, device: torch.device | str = "cpu"):
        fill = [self.blank if _DTYPES[i.type] == torch.int64 else 0 for i in self.inputs]
        return self.state_type(*[torch.full((batch, *[int(d) for d in i.shape[1:]]), f, dtype=_DTYPES[i.type])
                                 for i, f in zip(self.inputs, fill)])

    def step(self, tokens: Tensor, state):
        """tokens (B,) + state -> out (B, Dp), new state."""
        feed = {"tokens": _np(tokens).astype(np.int64)}
        feed.update({i.name: _np(getattr(state, i.name)) for i in self.inputs})
        out, *new = self.session.run(None, feed)
        return torch.from_numpy(out), self.state_type(*[torch.from_numpy(x) for x in new])


class OnnxJoint:
    """``joint.onnx`` with the ``Joint`` methods the decoders call; projections are inside combine."""

    def __init__(self, session):
        self.session = session

    def project_encoder(self, enc: Tensor) -> Tensor:
        return enc

    def project_prediction(self, pred: Tensor) -> Tensor:
        return pred

    def combine(self, enc: Tensor, pred: Tensor) -> Tensor:
        """enc (..., D), pred (..., Dp) -> logits (..., V + 1); the leading dims broadcast."""
        lead = torch.broadcast_shapes(enc.shape[:-1], pred.shape[:-1])
        e = _np(enc.expand(*lead, -1).reshape(-1, enc.shape[-1])).astype(np.float32)  # (N, D)
        p = _np(pred.expand(*lead, -1).reshape(-1, pred.shape[-1])).astype(np.float32)  # (N, Dp)
        (logits,) = self.session.run(None, {"enc": np.ascontiguousarray(e), "pred": np.ascontiguousarray(p)})
        return torch.from_numpy(logits).reshape(*lead, -1)


class OnnxStreamingBackend:
    """onnxruntime sessions of an export folder, as a ``StreamingRecognizer`` backend."""

    def __init__(self, onnx_dir: str | Path, threads: int | None = None):
        self.dir = Path(onnx_dir)
        if not self.dir.is_dir():
            raise FileNotFoundError(f"ONNX folder not found: {self.dir} (write one with `asrlib export`)")
        self.encoder = _session(self.dir / "encoder_step.onnx", threads)
        self.cfg, info = read_metadata(self.dir / "encoder_step.onnx")
        self.constants = StreamingConstants(hop=int(info["hop"]), context=int(info["context"]),
                                            chunk_samples=int(info["chunk_samples"]), blank=int(info["blank"]),
                                            sample_rate=int(info["sample_rate"]))
        self.device = torch.device("cpu")
        self.state_inputs = [i for i in self.encoder.get_inputs() if i.name != "audio"]
        self.state_names = [i.name for i in self.state_inputs]
        if self.state_names != info["state_names"]:
            raise ValueError(f"{self.dir}: encoder_step.onnx inputs do not match its metadata; re-export the model")
        # a model with a phone head has its log-probs as a third output (exports before it: none)
        self.has_phones = "phone_log_probs" in {o.name for o in self.encoder.get_outputs()}
        self.phone_vocab_size = self.cfg.phone_vocab_size if self.has_phones else 0
        heads = ["encoder_out", "ctc_log_probs"] + (["phone_log_probs"] if self.has_phones else [])
        self.output_names = heads + [f"new_{n}" for n in self.state_names]
        self.prediction = OnnxPrediction(_session(self.dir / "predictor_step.onnx", threads),
                                         self.cfg.prediction.kind, self.constants.blank)
        self.joint = OnnxJoint(_session(self.dir / "joint.onnx", threads))

    def init_state(self, n: int) -> dict[str, Tensor]:
        """Zeros for ``n`` streams: {state input name: (n, …) tensor}."""
        return {i.name: torch.zeros(n, *[int(d) for d in i.shape[1:]], dtype=_DTYPES[i.type]) for i in self.state_inputs}

    def prime(self, state: dict[str, Tensor], i: int, first: np.ndarray) -> dict[str, Tensor]:
        """Stream ``i`` restarts with its own first ``context`` samples in the frontend cache."""
        row = self.init_state(1)
        row[_FRONTEND_SAMPLES] = torch.from_numpy(np.asarray(first, np.float32))[None]
        return st.scatter(state, torch.tensor([i]), row)

    def step(self, state: dict[str, Tensor], streams: list[int], samples: np.ndarray
             ) -> tuple[Tensor, Tensor, Tensor | None, Any]:
        """samples (k, n * hop) for the k ``streams`` -> encoder frames (k, T', D), CTC
        log-probs (k, T', V + 1), phone log-probs (k, T', P + 1) or None, new state."""
        everyone = streams == list(range(st.batch_size(state)))  # no select / scatter copies needed
        idx = torch.tensor(streams)
        sub = state if everyone else st.select(state, idx)
        feed = {"audio": np.ascontiguousarray(samples, dtype=np.float32)}
        feed.update({n: _np(sub[n]) for n in self.state_names})
        enc, ctc, *rest = self.encoder.run(self.output_names, feed)
        phones = torch.from_numpy(rest.pop(0)) if self.has_phones else None
        new_sub = {n: torch.from_numpy(v) for n, v in zip(self.state_names, rest)}
        return (torch.from_numpy(enc), torch.from_numpy(ctc), phones,
                new_sub if everyone else st.scatter(state, idx, new_sub))


def load_onnx_recognizer(onnx_dir: str | Path, decoder: str = "rnnt_greedy", **kwargs):
    """A StreamingRecognizer on onnxruntime, tokenizer from ``onnx_dir/tokenizer.model``.

    ``kwargs`` go to :class:`StreamingRecognizer` (num_streams, max_symbols_per_frame, …);
    ``threads`` sets onnxruntime's intra-op threads.
    """
    from asrlib.streaming import StreamingRecognizer
    from asrlib.tokenizer import Tokenizer

    threads = kwargs.pop("threads", None)
    tok = Path(onnx_dir) / "tokenizer.model"
    if not tok.is_file():
        raise FileNotFoundError(f"{tok} not found: export with a checkpoint that knows its tokenizer, "
                                "or copy the tokenizer.model the model was trained with into that folder")
    backend = OnnxStreamingBackend(onnx_dir, threads)
    return StreamingRecognizer(tokenizer=Tokenizer(tok), decoder=decoder, backend=backend, **kwargs)
