"""What decoding costs on this CPU, one thread: greedy, beam search, beam search + an n-gram
language model, for the RNN-T and the CTC head; offline and streaming; prints JSON.

    .venv/bin/python bench/decoding.py [--checkpoint models/an4] [--manifest data_samples/an4/dev.jsonl]
                                       [--lm-order 8] [--beam 4] [--repeats 3] [--limit N]

1. ``lm``: the n-gram model of the manifest beside ``--manifest`` named ``train.jsonl`` (the
   training text; else ``--lm-text``): seconds to count it (``asrlib.ngram.train_kneser_ney``),
   to write and to read its ARPA file, its n-gram count and file size.
2. ``decoders``: for each decoder, seconds per audio second (RTF) of the decoder alone on
   encoder output computed once (offline), and of the streaming recogniser end to end (encoder
   steps included, 100 ms pieces); the median of ``--repeats`` passes, with the WER as a check
   that the passes decode what ``asrlib evaluate`` does. ``rtf_over_greedy`` is each decoder's
   offline decoder-only RTF over RNN-T greedy's, from the same run.

``--scale-pieces N`` measures only what counting costs at a larger scale: a synthetic text of N
pieces (``--scale-vocab`` pieces, a Zipf-skewed Markov chain, sentences of 5-40 pieces) counted
into an order ``--lm-order`` model: seconds, pieces per second, n-grams, ARPA size, seconds to
read it back, and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asrlib.audio import load_audio  # noqa: E402
from asrlib.checkpoint import load_model_and_tokenizer  # noqa: E402
from asrlib.data.manifest import read_manifest  # noqa: E402
from asrlib.decoding.ctc import (CTCGreedyDecoder, CTCGreedyOptions, CTCPrefixBeamDecoder,  # noqa: E402
                                CTCPrefixBeamOptions)
from asrlib.decoding.rnnt import (RNNTBeamDecoder, RNNTBeamOptions, RNNTGreedyDecoder,  # noqa: E402
                                  RNNTGreedyOptions)
from asrlib.metrics import word_counts  # noqa: E402
from asrlib.ngram import NgramLM, train_kneser_ney  # noqa: E402
from asrlib.streaming import StreamingRecognizer  # noqa: E402


def count_at_scale(n_pieces: int, vocab: int, order: int) -> dict:
    import resource

    import numpy as np

    rng = np.random.default_rng(0)
    ranks = 1.0 / np.arange(1, vocab + 1)
    zipf = ranks / ranks.sum()
    sentences, made = [], 0
    while made < n_pieces:  # each piece repeats, follows its predecessor's neighbour, or is drawn by Zipf
        n = int(rng.integers(5, 41))
        draws, choice = rng.choice(vocab, size=n, p=zipf), rng.random(n)
        s = [int(draws[0])]
        for k in range(1, n):
            s.append(s[-1] if choice[k] < 0.1 else (s[-1] + 1) % vocab if choice[k] < 0.4 else int(draws[k]))
        sentences.append(s)
        made += n
    pieces = [f"p{i}" for i in range(vocab)]
    t0 = time.perf_counter()
    lm = train_kneser_ney(sentences, pieces, order)
    count_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lm.arpa"
        lm.save_arpa(path)
        size = path.stat().st_size
        del lm
        t0 = time.perf_counter()
        lm = NgramLM.load_arpa(path, pieces)
        read_s = time.perf_counter() - t0
    ngrams = vocab + 2 + sum(len(ids) for k in range(2, lm.order + 1) for ids, _ in lm.probs[k].values())
    return {"pieces": made, "sentences": len(sentences), "vocab": vocab, "order": order, "ngrams": ngrams,
            "count_seconds": round(count_s, 1), "pieces_per_second": round(made / count_s),
            "arpa_bytes": size, "read_seconds": round(read_s, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(ROOT / "models" / "an4"))
    p.add_argument("--manifest", default=str(ROOT / "data_samples" / "an4" / "dev.jsonl"))
    p.add_argument("--lm-text", default=None, help="training manifest for the n-gram model (default: train.jsonl "
                   "beside --manifest)")
    p.add_argument("--lm-order", type=int, default=8)
    p.add_argument("--lm-weight", type=float, default=0.3)
    p.add_argument("--token-bonus", type=float, default=0.5)
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--limit", type=int, default=0, help="first N utterances only (0: all)")
    p.add_argument("--scale-pieces", type=int, default=0, help="only measure counting a synthetic text this long")
    p.add_argument("--scale-vocab", type=int, default=1024)
    args = p.parse_args()
    if args.scale_pieces:
        print(json.dumps(count_at_scale(args.scale_pieces, args.scale_vocab, args.lm_order), indent=2))
        return 0
    torch.set_num_threads(1)
    model, tok = load_model_and_tokenizer(args.checkpoint, None, "cpu")
    sr = model.cfg.frontend.sample_rate
    entries, _ = read_manifest(args.manifest)
    entries = entries[: args.limit] if args.limit else entries
    waves = [load_audio(e.audio_filepath, sr, *e.span) for e in entries]
    audio_seconds = sum(len(w) for w in waves) / sr
    refs = [e.text for e in entries]

    text = args.lm_text or str(Path(args.manifest).with_name("train.jsonl"))
    texts, _ = read_manifest(text, check_audio=False)
    t0 = time.perf_counter()
    lm = train_kneser_ney([tok.encode(e.text) for e in texts], tok.pieces(), args.lm_order)
    count_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lm.arpa"
        t0 = time.perf_counter()
        lm.save_arpa(path)
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        lm = NgramLM.load_arpa(path, tok.pieces())
        read_s = time.perf_counter() - t0
        size = path.stat().st_size
    ngrams = tok.vocab_size + 2 + sum(len(ids) for k in range(2, lm.order + 1) for ids, _ in lm.probs[k].values())

    with torch.inference_mode():
        encoded = [model(torch.from_numpy(w)[None], torch.tensor([len(w)])) for w in waves]  # (1, T, D), (1,)
    fusion = {"lm": lm, "lm_weight": args.lm_weight, "token_bonus": args.token_bonus}
    def rnnt(dec):
        return lambda enc, n: dec.decode(model.prediction, model.joint, enc, n, tok.decode)[0].text

    def ctc(dec):  # the CTC head's projection is counted with the decoder (a small share of it)
        return lambda enc, n: dec.decode(model.ctc_head(enc), n, tok.decode)[0].text

    decoders = {
        "rnnt_greedy": (rnnt(RNNTGreedyDecoder(RNNTGreedyOptions(model.blank))), {"decoder": "rnnt_greedy"}),
        "rnnt_beam": (rnnt(RNNTBeamDecoder(RNNTBeamOptions(model.blank, args.beam))),
                      {"decoder": "rnnt_beam", "beam_size": args.beam}),
        "rnnt_beam_lm": (rnnt(RNNTBeamDecoder(RNNTBeamOptions(model.blank, args.beam, 5, **fusion))),
                         {"decoder": "rnnt_beam", "beam_size": args.beam, **fusion}),
        "ctc_greedy": (ctc(CTCGreedyDecoder(CTCGreedyOptions(model.blank))), {"decoder": "ctc_greedy"}),
        "ctc_beam": (ctc(CTCPrefixBeamDecoder(CTCPrefixBeamOptions(model.blank, args.beam))),
                     {"decoder": "ctc_beam", "beam_size": args.beam}),
        "ctc_beam_lm": (ctc(CTCPrefixBeamDecoder(CTCPrefixBeamOptions(model.blank, args.beam, **fusion))),
                        {"decoder": "ctc_beam", "beam_size": args.beam, **fusion}),
    }
    results = {}
    for name, (decode, stream_kwargs) in decoders.items():
        offline, streaming = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            with torch.inference_mode():
                hyps = [decode(enc, n) for enc, n in encoded]
            offline.append((time.perf_counter() - t0) / audio_seconds)
            rec = StreamingRecognizer(model, tok, **stream_kwargs)
            streamed = []
            t0 = time.perf_counter()
            for w in waves:
                rec.reset()
                streamed.append(rec.recognize(w, 1600).text)
            streaming.append((time.perf_counter() - t0) / audio_seconds)
        results[name] = {"decoder_only_rtf": round(statistics.median(offline), 5),
                         "streaming_rtf": round(statistics.median(streaming), 5),
                         "wer": round(word_counts(refs, hyps).rate, 4),
                         "streaming_equals_offline": streamed == hyps}
    for r in results.values():
        r["rtf_over_greedy"] = round(r["decoder_only_rtf"] / results["rnnt_greedy"]["decoder_only_rtf"], 2)
    print(json.dumps({"checkpoint": args.checkpoint, "manifest": args.manifest, "utterances": len(waves),
                      "audio_seconds": round(audio_seconds, 1), "repeats": args.repeats,
                      "lm": {"order": lm.order, "ngrams": ngrams, "arpa_bytes": size, "count_seconds": round(count_s, 3),
                             "write_seconds": round(write_s, 3), "read_seconds": round(read_s, 3),
                             "weight": args.lm_weight, "token_bonus": args.token_bonus},
                      "decoders": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
