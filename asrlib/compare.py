"""``asrlib compare-stream``: the full model and the streaming path, side by side.

    asrlib compare-stream --checkpoint CK --audio FILE [--piece-samples N] [--json OUT]

Runs the whole utterance through the chunk-masked model (what training computes) and the same
audio through :class:`~asrlib.streaming.StreamingRecognizer` in pieces of ``N`` samples (0 =
the whole file at once), then reports the largest absolute difference of the encoder outputs
and whether the CTC and RNN-T greedy texts are identical. JSON keys: ``max_abs_diff``,
``same_text``, ``offline_text``, ``stream_text``, ``same_ctc_text``, frame counts and timings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from asrlib.decoding.ctc import CTCGreedyDecoder, CTCGreedyOptions
from asrlib.decoding.rnnt import RNNTGreedyDecoder, RNNTGreedyOptions
from asrlib.audio import AudioError
from asrlib.errors import refuse_existing_file, report_usage_errors
from asrlib.model.hybrid import HybridASR
from asrlib.streaming import StreamingRecognizer


@torch.no_grad()
def compare_stream(model: HybridASR, wave: np.ndarray, piece_samples: int = 1600, tokenizer=None) -> dict:
    """Full (chunk-masked) model vs the streaming path on one waveform at the model's rate,
    both on the model's device."""
    model = model.eval()
    device = next(model.parameters()).device
    detok = tokenizer.decode if tokenizer is not None else None
    t0 = time.perf_counter()
    audio = torch.from_numpy(np.asarray(wave, dtype=np.float32))[None].to(device)  # (1, S)
    enc, enc_len = model(audio, torch.tensor([audio.shape[1]], device=device))  # (1, T', D)
    full_ctc = CTCGreedyDecoder(CTCGreedyOptions(model.blank)).decode(model.ctc_head(enc), enc_len, detok)[0]
    full_rnnt = RNNTGreedyDecoder(RNNTGreedyOptions(model.blank)).decode(model.prediction, model.joint, enc, enc_len,
                                                                          detok)[0]
    t_full = time.perf_counter() - t0

    t0 = time.perf_counter()
    rec = StreamingRecognizer(model, tokenizer, decoder="rnnt_greedy", keep_encoder_output=True)
    stream_rnnt = rec.recognize(wave, piece_samples)
    t_stream = time.perf_counter() - t0
    stream_ctc = StreamingRecognizer(model, tokenizer, decoder="ctc_greedy").recognize(wave, piece_samples)

    full = enc[0, : int(enc_len[0])]  # (T', D)
    streamed = rec.encoder_output().to(device)
    same_frames = tuple(full.shape) == tuple(streamed.shape) or (full.shape[0] == 0 and streamed.numel() == 0)
    diff = float((full - streamed).abs().max()) if same_frames and full.numel() else (0.0 if same_frames else float("inf"))
    same_rnnt = stream_rnnt.tokens == full_rnnt.tokens
    same_ctc = stream_ctc.tokens == full_ctc.tokens
    return {
        "max_abs_diff": diff,
        "max_abs_value": float(full.abs().max()) if full.numel() else 0.0,
        "same_text": bool(same_rnnt and same_ctc),
        "same_rnnt_text": bool(same_rnnt),
        "same_ctc_text": bool(same_ctc),
        "offline_text": full_rnnt.text,
        "stream_text": stream_rnnt.text,
        "offline_ctc_text": full_ctc.text,
        "stream_ctc_text": stream_ctc.text,
        "offline_tokens": full_rnnt.tokens,
        "stream_tokens": stream_rnnt.tokens,
        "offline_frames": int(full.shape[0]),
        "stream_frames": int(streamed.shape[0]),
        "piece_samples": int(piece_samples),
        "audio_seconds": len(wave) / model.cfg.frontend.sample_rate,
        "offline_seconds": t_full,
        "stream_seconds": t_stream,
    }


@report_usage_errors("compare-stream", FileNotFoundError, AudioError)
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="asrlib compare-stream", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="training checkpoint (.pt) or exported model folder")
    p.add_argument("--audio", required=True, action="append", help="audio file (repeatable)")
    p.add_argument("--piece-samples", type=int, default=1600, help="samples per accept_waveform call; 0 = whole file")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max abs encoder difference counted as equal")
    p.add_argument("--json", default=None, help="write the report here (a new file)")
    p.add_argument("--force", action="store_true", help="let --json replace an existing file")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (streaming steps are small: 1 is"
                   " usually fastest)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    args = p.parse_args(argv)
    if args.json:
        refuse_existing_file(args.json, args.force, [*args.audio, args.checkpoint])
    torch.set_num_threads(args.threads)

    from asrlib.audio import load_audio
    from asrlib.checkpoint import load_model
    from asrlib.tokenizer import Tokenizer

    model, tok_path = load_model(args.checkpoint, args.device)
    tokenizer = Tokenizer(tok_path) if tok_path else None
    reports, ok = [], True
    for path in args.audio:
        r = compare_stream(model, load_audio(path, model.cfg.frontend.sample_rate), args.piece_samples, tokenizer)
        r["audio"] = path
        reports.append(r)
        good = r["same_text"] and r["max_abs_diff"] <= args.tolerance
        ok &= good
        print(f"{path}: max |full - stream| = {r['max_abs_diff']:.2e} over {r['offline_frames']} frames; "
              f"text {'identical' if r['same_text'] else 'DIFFERENT'}: {r['offline_text']!r} vs {r['stream_text']!r}; "
              f"full {r['offline_seconds']:.3f} s, stream {r['stream_seconds']:.3f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
