"""``asrlib transcribe``: print the text of audio files.

    asrlib transcribe --checkpoint CK FILE…                     one line per file (offline)
    asrlib transcribe --checkpoint CK --stream FILE…            partial hypotheses as they grow,
                                                                 then the final text, RTF, latency
    asrlib transcribe --onnx DIR --stream FILE…                 the same with onnxruntime only
    asrlib transcribe --checkpoint CK --decoder rnnt_beam --lm LM.arpa FILE…   beam search + n-gram LM
                                                                 (or ctc_beam; with --stream too)
    asrlib transcribe --checkpoint models/an4 --decoder rnnt_beam --lm models/an4/lm.arpa --phone-weight 0.5 FILE…
                                                                 + the phone head's rescoring of the final
                                                                 hypotheses (asrlib/decoding/rescore.py)

CK is a training checkpoint or an exported folder (e.g. ``models/digits_demo``).

Long files: offline decoding holds the whole file's features and activations, which grow with
its length (about 1.5 GB at 20 minutes with the digits model). A file longer than
``--max-offline-seconds`` (default 300) is therefore decoded through the streaming step, fed 30 s at a time: the text is the same (streaming equals the full model,
utterance by utterance: the project's central, tested property) and memory stays flat.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from asrlib.audio import load_audio


def stream_file(rec, wave: np.ndarray, sample_rate: int, piece_samples: int, out=None) -> dict:
    """Stream ``wave`` through ``rec`` (reset first) in pieces, printing each new partial text to
    ``out`` (default: the ``sys.stdout`` of the moment, not of the import); return the text and
    timing figures (the final flush counts as one more piece)."""
    out = sys.stdout if out is None else out
    rec.reset()
    latencies, last, fed, result = [], "", 0, None
    t_start = t0 = time.perf_counter()
    for result in rec.stream(wave, piece_samples):
        latencies.append(time.perf_counter() - t0)
        fed = min(fed + piece_samples, len(wave))
        if result.text != last:
            print(f"  [{fed / sample_rate:6.2f} s] {result.text}", file=out, flush=True)
            last = result.text
        t0 = time.perf_counter()
    total = time.perf_counter() - t_start
    lat = np.array(latencies) * 1000
    return {"text": result.text, "rtf": total / max(len(wave) / sample_rate, 1e-9),
            "latency_ms_median": float(np.median(lat)) if len(lat) else 0.0,
            "latency_ms_p95": float(np.percentile(lat, 95)) if len(lat) else 0.0}


def main(argv: list[str] | None = None) -> int:
    from asrlib.audio import AudioError
    from asrlib.errors import report_usage_errors
    from asrlib.tokenizer import TokenizerError

    return report_usage_errors("transcribe", TokenizerError, FileNotFoundError, AudioError)(_main)(argv)


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="asrlib transcribe", description="Print the text of audio files.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="training checkpoint (.pt) or exported model folder")
    src.add_argument("--onnx", help="folder written by `asrlib export` (implies --stream)")
    p.add_argument("files", nargs="+")
    p.add_argument("--stream", action="store_true", help="stream each file, printing partial hypotheses")
    p.add_argument("--decoder", default="rnnt_greedy", choices=("rnnt_greedy", "ctc_greedy", "ctc_beam", "rnnt_beam"),
                   help="every decoder streams; the beam searches take --lm")
    p.add_argument("--beam", type=int, default=4, help="beam searches: hypotheses kept")
    p.add_argument("--max-symbols", type=int, default=5, help="RNN-T decoders: tokens one encoder frame may emit")
    p.add_argument("--piece-ms", type=float, default=160.0, help="audio fed per call when streaming")
    p.add_argument("--max-offline-seconds", type=float, default=300.0,
                   help="longer files (greedy decoders) are decoded through the streaming step in 30 s pieces: "
                        "same text, flat memory")
    p.add_argument("--compile", action="store_true", help="with --stream: run the streaming step through "
                   "torch.compile (needs a C++ compiler; the first chunk waits tens of seconds, later ones "
                   "run 2-3x faster)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (streaming steps are small: 1 is"
                   " usually fastest)")
    from asrlib.decoding.rescore import add_rescoring_arguments, rescoring_options
    from asrlib.ngram import add_decoding_arguments, decoding_options

    add_decoding_arguments(p)
    add_rescoring_arguments(p)
    args = p.parse_args(argv)
    from asrlib.errors import UsageError
    from asrlib.tokenizer import Tokenizer

    if args.max_symbols < 1:
        raise UsageError(f"--max-symbols must be at least 1, got {args.max_symbols}")
    if args.compile and (args.onnx or not args.stream):
        raise UsageError("--compile compiles the PyTorch streaming step: use it with --stream and --checkpoint "
                         "(not --onnx)")
    if args.compile and args.device == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        raise UsageError("--compile on the CPU needs a C++ compiler (g++ or clang++) on the PATH: install one "
                         "(e.g. apt-get install g++) or drop --compile")
    torch.set_num_threads(args.threads)

    if args.onnx:
        from asrlib.onnx_runtime import load_onnx_recognizer, read_metadata

        tok_path = Path(args.onnx) / "tokenizer.model"
        pieces = Tokenizer(tok_path).pieces() if tok_path.is_file() else None  # else the loader says what is missing
        # the model's phone head, from the graph's metadata (the recogniser checks the graph has its output)
        phone_vocab = read_metadata(Path(args.onnx) / "encoder_step.onnx")[0].phone_vocab_size if args.phone_weight else 0
        rec = load_onnx_recognizer(args.onnx, decoder=args.decoder,  # one set of sessions for every file
                                   max_symbols_per_frame=args.max_symbols, beam_size=args.beam,
                                   **(decoding_options(args, pieces) if pieces else {}),
                                   **rescoring_options(args, phone_vocab, args.onnx))
        sr = rec.constants.sample_rate
        args.stream = True
    else:
        from asrlib.checkpoint import load_model_and_tokenizer
        from asrlib.evaluate import decode_offline
        from asrlib.streaming import StreamingRecognizer

        model, tokenizer = load_model_and_tokenizer(args.checkpoint, device=args.device)
        fusion = decoding_options(args, tokenizer.pieces())
        fusion.update(rescoring_options(args, model.cfg.phone_vocab_size, args.checkpoint))
        sr = model.cfg.frontend.sample_rate
        rec = StreamingRecognizer(model, tokenizer, decoder=args.decoder, compile=args.compile,
                                  max_symbols_per_frame=args.max_symbols, beam_size=args.beam, **fusion)

    for path in args.files:
        wave = load_audio(path, sr)
        if args.stream:
            print(f"{path}:", flush=True)
            r = stream_file(rec, wave, sr, max(1, int(args.piece_ms * sr / 1000)))
            print(f"{path}\t{r['text']}\t(RTF {r['rtf']:.3f}, per-piece latency median "
                  f"{r['latency_ms_median']:.1f} ms, p95 {r['latency_ms_p95']:.1f} ms)")
        elif len(wave) > args.max_offline_seconds * sr:
            rec.reset()
            res = rec.recognize(wave, 30 * sr)
            print(f"{path}\t{res.text}")
        else:
            (res,) = decode_offline(model, [wave], args.decoder, args.beam, tokenizer.decode, args.device,
                                    args.max_symbols, **fusion)
            print(f"{path}\t{res.text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
