"""ONNX export of the streaming step, so that a recogniser runs with onnxruntime alone.

    asrlib export --checkpoint CK --out DIR [--verify] [--audio F] [--force]

DIR receives:

* ``encoder_step.onnx`` - one streaming step, ``HybridASR.stream_step`` exported as it is. Inputs: ``audio`` (B, N) new
  samples (N a multiple of the hop: ``chunk_samples`` for every full chunk, fewer for the final
  flush; the time axis is dynamic, so the flush runs unpadded and matches PyTorch exactly) and
  one input per state tensor, named after :func:`asrlib.model.state.flatten` of the model's
  ``StreamState`` (``HybridASR.init_stream``) with the prefix ``state.``
  (``state.encoder.blocks.0.mixer.k`` …). Outputs: ``encoder_out`` (B, T', D),
  ``ctc_log_probs`` (B, T', V + 1), for a model with a phone head ``phone_log_probs`` (B, T', P + 1)
  (what n-best rescoring reads: asrlib/decoding/rescore.py), and ``new_<input name>`` for every
  state input.
* ``predictor_step.onnx`` - tokens (B,) int64 and the prediction state (LSTM: h, c (B, layers, Hp);
  stateless: history (B, context - 1) int64) -> out (B, Dp) and new_<name> for each state input.
* ``joint.onnx`` - enc (B, De), pred (B, Dp) -> logits (B, V + 1) (both projections inside).
* ``config.json`` (``{"model": ModelConfig}``, as in exported weights) and ``tokenizer.model``; for a
  model with a phone head, ``lexicon.txt`` when the source has one (what ``--phone-weight`` reads).

DIR must be new or empty: a folder holding anything is refused unless ``--force`` (it may hold a
user's own ``config.json`` or ``tokenizer.model``).

Every .onnx file carries the ModelConfig as JSON in its metadata (key ``asrlib_model_config``)
and the streaming constants (hop, context, chunk_samples, blank, state names) under
``asrlib_streaming``; a file alone rebuilds its model's description. The batch axis is dynamic
everywhere.

Exporter notes (torch 2.13, TorchScript exporter, opset 17, ~ seconds for tiny):

* the frontend's ``Tensor.unfold`` has no ONNX translation for a dynamic length, so during
  export ``aten::unfold`` is translated by :func:`_unfold_gather` (frame indices + Gather);
* tracing keeps the chunk length symbolic only while the Mamba2 SSD chunk is longer than the
  attention chunk (otherwise ``min(ssd_chunk, Tc)`` and its padding arithmetic are frozen at
  trace time and a shorter flush breaks). SSD results do not depend on its chunk length, so
  the exported copy raises it to attention chunk + 1 where needed.

``--verify`` streams >= 20 chunks of a bundled utterance set through the PyTorch and the ONNX
recognisers (same :class:`StreamingRecognizer`, different backends) and reports the largest
encoder-output difference (tolerance 1e-4 absolute) and whether the decoded tokens agree.

Shapes: B streams, N samples, T' encoder frames, D/De encoder dim, Dp prediction dim, V vocabulary.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.onnx import symbolic_helper

from asrlib.checkpoint import write_config_and_tokenizer
from asrlib.config import to_dict
from asrlib.model import state as st
from asrlib.model.hybrid import HybridASR
from asrlib.paths import REPO

OPSET = 17
TOLERANCE = 1e-4  # max |ONNX - PyTorch| allowed on encoder outputs by verify
FILES = ("encoder_step.onnx", "predictor_step.onnx", "joint.onnx")
CONFIG_KEY, STREAMING_KEY = "asrlib_model_config", "asrlib_streaming"
BUNDLED_MANIFEST = REPO / "data_samples" / "digits" / "test_seen.jsonl"


# --------------------------------------------------------------------------- names
def state_names(model: HybridASR) -> list[str]:
    """ONNX input names of the state tensors, in graph order: ``state.<flatten name>``."""
    return list(st.flatten(model.init_stream(1), "state"))


# --------------------------------------------------------------------------- wrappers
class EncoderStep(nn.Module):
    """``HybridASR.stream_step`` with flat tensors: audio (B, N), *state tensors ->
    encoder_out (B, T', D), ctc_log_probs (B, T', V + 1), [phone_log_probs (B, T', P + 1) when the
    model has a phone head], *new state tensors."""

    def __init__(self, model: HybridASR):
        super().__init__()
        self.model = model
        self.template = model.init_stream(1)
        self.names = state_names(model)

    def forward(self, audio: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        state = st.unflatten(self.template, dict(zip(self.names, states)), "state")
        enc, ctc, phones, new_state = self.model.stream_step(audio, state)
        new = st.flatten(new_state, "state")
        return (enc, ctc, *([] if phones is None else [phones]), *[new[n] for n in self.names])


class PredictorStep(nn.Module):
    """tokens (B,), state tensors -> out (B, Dp), new state tensors.

    The state is the prediction network's own dataclass, one ONNX input per field: ``h``, ``c``
    (B, layers, Hp) for the LSTM, ``history`` (B, context - 1) token ids for the stateless network.
    """

    def __init__(self, model: HybridASR):
        super().__init__()
        self.pred = model.prediction
        self.template = type(model.prediction.init_state(1))
        self.names = [f.name for f in dataclasses.fields(self.template)]

    def forward(self, tokens: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        out, new = self.pred.step(tokens, self.template(*state))
        return (out, *[getattr(new, n) for n in self.names])


class JointStep(nn.Module):
    """enc (B, De), pred (B, Dp) -> logits (B, V + 1)."""

    def __init__(self, model: HybridASR):
        super().__init__()
        self.joint = model.joint

    def forward(self, enc: Tensor, pred: Tensor) -> Tensor:
        return self.joint.combine(self.joint.project_encoder(enc), self.joint.project_prediction(pred))


# --------------------------------------------------------------------------- exporter details
@symbolic_helper.parse_args("v", "i", "i", "i")
def _unfold_gather(g, x, dim, size, step):
    """ONNX for ``x.unfold(dim, size, step)`` on the LAST axis with a dynamic length.

    frames = (len - size) // step + 1; index[t, w] = t * step + w; Gather -> (..., frames, size).
    """
    rank = x.type().dim()
    if rank is None or dim not in (-1, rank - 1):
        raise NotImplementedError("asrlib export: unfold is only translated on the last axis")
    const = lambda v: g.op("Constant", value_t=torch.tensor(v, dtype=torch.int64))  # noqa: E731
    length = g.op("Gather", g.op("Shape", x), const(rank - 1), axis_i=0)  # scalar
    frames = g.op("Add", g.op("Div", g.op("Sub", length, const(size)), const(step)), const(1))
    starts = g.op("Mul", g.op("Range", const(0), frames, const(1)), const(step))  # (T,)
    offsets = g.op("Range", const(0), const(size), const(1))  # (win,)
    index = g.op("Add", g.op("Unsqueeze", starts, const([1])), g.op("Unsqueeze", offsets, const([0])))  # (T, win)
    return g.op("Gather", x, index, axis_i=rank - 1)


def _export_copy(model: HybridASR) -> HybridASR:
    """A CPU eval copy whose Mamba2 SSD chunk is longer than the attention chunk.

    (No ``.float()``: it would round the frontend's float64 DFT kernel.)
    """
    m = copy.deepcopy(model).cpu().eval()
    chunk = m.encoder.chunk_size
    for block in m.encoder.blocks:
        # strictly longer: min(ssd_chunk, Tc) must pick the traced Tc, not the Python int
        if block.kind == "mamba2" and block.mixer.cfg.chunk_size <= chunk:
            block.mixer.cfg = dataclasses.replace(block.mixer.cfg, chunk_size=chunk + 1)
    return m


def streaming_info(model: HybridASR) -> dict:
    return {
        **dataclasses.asdict(model.streaming),
        "state_names": state_names(model),
        "opset": OPSET,
        "torch": torch.__version__,
    }


def _export_one(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
                dynamic: dict[str, dict[int, str]], metadata: dict[str, str]) -> None:
    import onnx

    with torch.no_grad(), warnings.catch_warnings():
        # Tracer warnings about shape-dependent Python branches are expected: every such
        # branch is taken the same way for all chunk lengths the recogniser feeds.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
    proto = onnx.load(str(path))
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def export_onnx(model: HybridASR, out_dir: str | Path, tokenizer=None, lexicon: str | Path | None = None) -> Path:
    """Write the three ONNX graphs, config.json and tokenizer.model (and a phone head's lexicon.txt)
    to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m = _export_copy(model)
    cfg_json = json.dumps(to_dict(model.cfg))
    meta = {CONFIG_KEY: cfg_json, STREAMING_KEY: json.dumps(streaming_info(m))}
    B = 2  # traced with two streams; the batch axis is dynamic anyway
    batch = {0: "batch"}

    step = EncoderStep(m)
    names = step.names
    init = st.flatten(m.init_stream(B), "state")
    audio = torch.zeros(B, m.chunk_samples)
    heads = ["encoder_out", "ctc_log_probs"] + (["phone_log_probs"] if m.phone_head is not None else [])
    outputs = heads + [f"new_{n}" for n in names]
    dyn = {n: batch for n in names + outputs}
    dyn.update({h: {0: "batch", 1: "frames"} for h in heads}, audio={0: "batch", 1: "samples"})
    torch.onnx.register_custom_op_symbolic("aten::unfold", _unfold_gather, OPSET)
    try:
        _export_one(step, (audio, *[init[n] for n in names]), out / FILES[0], ["audio", *names], outputs, dyn, meta)
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::unfold", OPSET)

    pstep = PredictorStep(m)
    ps = m.prediction.init_state(B)
    tokens = torch.full((B,), m.blank, dtype=torch.long)
    pins, pouts = ["tokens", *pstep.names], ["out", *[f"new_{n}" for n in pstep.names]]
    _export_one(pstep, (tokens, *[getattr(ps, n) for n in pstep.names]), out / FILES[1], pins, pouts,
                {n: batch for n in pins + pouts}, meta)
    enc, pred = torch.zeros(B, m.encoder.d_model), torch.zeros(B, m.prediction.out_dim)
    _export_one(JointStep(m), (enc, pred), out / FILES[2], ["enc", "pred"], ["logits"],
                {n: batch for n in ("enc", "pred", "logits")}, meta)

    write_config_and_tokenizer(model, out, tokenizer, lexicon)
    return out


# --------------------------------------------------------------------------- verify
def verification_audio(sample_rate: int, min_samples: int, audio: str | Path | None = None) -> np.ndarray:
    """``audio`` (or the bundled test_seen utterances, in order), concatenated and repeated
    until at least ``min_samples`` long: (S,) float32."""
    from asrlib.audio import load_audio

    if audio is not None:
        clips = [load_audio(audio, sample_rate)]
    else:
        from asrlib.data.manifest import read_manifest

        entries, _ = read_manifest(BUNDLED_MANIFEST, strict=True)
        clips, total = [], 0
        for e in entries:
            clips.append(load_audio(e.audio_filepath, sample_rate, *e.span))
            total += len(clips[-1])
            if total >= min_samples:
                break
    if sum(len(c) for c in clips) == 0:
        raise ValueError(f"verify: no audio samples in {audio or BUNDLED_MANIFEST}")
    x = np.concatenate(clips)
    reps = -(-min_samples // len(x))  # ceil
    return np.tile(x, reps).astype(np.float32)


def verify(model: HybridASR, onnx_dir: str | Path, tokenizer=None, audio: str | Path | None = None,
           min_chunks: int = 20, piece_samples: int = 1000) -> dict:
    """Stream the same audio through the PyTorch and the ONNX recognisers and compare.

    The audio is fed in pieces of ``piece_samples`` (not a multiple of a chunk, so buffering
    and the final unpadded flush are exercised). Returns a JSON-able report; ``ok`` is True
    when the encoder outputs agree within :data:`TOLERANCE` and the tokens are identical.
    """
    from asrlib.onnx_runtime import OnnxStreamingBackend
    from asrlib.streaming import StreamingRecognizer

    if next(model.parameters()).device.type != "cpu" or model.training:
        model = copy.deepcopy(model).cpu().eval()  # leave the caller's model where it is
    backend = OnnxStreamingBackend(onnx_dir)
    c = backend.constants
    # min_chunks full chunks plus a partial one, so the flush is not empty
    need = c.context + min_chunks * c.chunk_samples + c.chunk_samples // 2 + 7
    x = verification_audio(c.sample_rate, need, audio)
    recs = {"torch": StreamingRecognizer(model, tokenizer, keep_encoder_output=True),
            "onnx": StreamingRecognizer(tokenizer=tokenizer, keep_encoder_output=True, backend=backend)}
    results, seconds = {}, {}
    for name, rec in recs.items():
        t0 = time.perf_counter()
        results[name] = rec.recognize(x, piece_samples)
        seconds[name] = time.perf_counter() - t0
    e_t, e_o = recs["torch"].encoder_output(), recs["onnx"].encoder_output()  # (T', D) each
    same_shape = tuple(e_t.shape) == tuple(e_o.shape)
    diff = float((e_t - e_o).abs().max()) if same_shape else float("inf")
    tokens_equal = results["torch"].tokens == results["onnx"].tokens
    seconds_audio = len(x) / c.sample_rate
    return {
        "ok": bool(same_shape and diff <= TOLERANCE and tokens_equal),
        "audio_seconds": round(seconds_audio, 3),
        "full_chunks": (len(x) - c.context) // c.chunk_samples,
        "encoder_frames": int(e_t.shape[0]),
        "max_abs_diff": diff,
        "tolerance": TOLERANCE,
        "tokens_equal": tokens_equal,
        "num_tokens": len(results["torch"].tokens),
        "text_equal": results["torch"].text == results["onnx"].text,
        "text": results["onnx"].text[:200],  # the start of it
        "rtf_torch": round(seconds["torch"] / seconds_audio, 4),
        "rtf_onnx": round(seconds["onnx"] / seconds_audio, 4),
    }


# --------------------------------------------------------------------------- CLI
def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="asrlib export", description="export the streaming step to ONNX")
    p.add_argument("--checkpoint", required=True, help="training checkpoint (.pt) or exported model folder")
    p.add_argument("--out", required=True, help="output folder for the .onnx files")
    p.add_argument("--verify", action="store_true", help="compare onnxruntime with PyTorch on >= 20 chunks")
    p.add_argument("--audio", help="audio file for --verify (default: the bundled digits test set)")
    p.add_argument("--force", action="store_true", help="write into a folder that already holds files")
    args = p.parse_args(argv)

    from asrlib.checkpoint import load_model, load_model_and_tokenizer
    from asrlib.errors import refuse_nonempty_folder
    from asrlib.tokenizer import TokenizerError

    out = Path(args.out)
    refuse_nonempty_folder(out, args.force)
    model, _ = load_model(args.checkpoint)
    try:
        _, tokenizer = load_model_and_tokenizer(args.checkpoint)
    except TokenizerError as e:
        print(f"asrlib export: warning: {e}; exporting without tokenizer.model", file=sys.stderr)
        tokenizer = None
    t0 = time.perf_counter()
    from asrlib.checkpoint import lexicon_of

    export_onnx(model, out, tokenizer, lexicon_of(args.checkpoint))
    print(f"exported {', '.join(FILES)} to {out} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    if not args.verify:
        return 0
    tokenizer = None
    if (out / "tokenizer.model").is_file():
        from asrlib.tokenizer import Tokenizer

        tokenizer = Tokenizer(out / "tokenizer.model")
    report = verify(model, out, tokenizer, args.audio)
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    from asrlib.errors import report_usage_errors

    return report_usage_errors("export", FileNotFoundError, RuntimeError)(_main)(argv)


if __name__ == "__main__":
    sys.exit(main())
