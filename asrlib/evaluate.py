"""``asrlib evaluate``: WER/CER of a checkpoint on a manifest, offline or streaming.

    asrlib evaluate --checkpoint CK --manifest M [--decoder ctc_greedy|ctc_beam|rnnt_greedy|rnnt_beam]
                    [--beam 4] [--lm LM.arpa [--lm-weight 0.3] [--token-bonus 0.5]]
                    [--phone-weight 0.5 [--lexicon L]]
                    [--stream [--streams 16] [--piece-samples N]] [--json OUT [--force]]

CK is a training checkpoint (``.pt``) or an exported model folder. ``--stream`` decodes every
utterance through :class:`asrlib.streaming.StreamingRecognizer`, fed ``--piece-samples`` at a
time, ``--streams`` utterances at once (stepped and decoded as one batch); it must give the
same WER as offline decoding, utterance by utterance (the central property of asrlib), beam
search, its language model (``--lm``, shallow fusion: :mod:`asrlib.ngram`) and the phone head's
rescoring of its final hypotheses (``--phone-weight``: :mod:`asrlib.decoding.rescore`) included.
The JSON report has ``wer`` and ``cer`` (fractions), ``num_utterances``, ``rtf`` (processing
seconds per audio second), per-utterance results and ``skipped``: every manifest line left out
of the WER (bad line, missing or unreadable audio), counted by reason with its first
``manifest:line``; a corrupt file is skipped, not fatal. A manifest with no usable line is an
error, never "WER 0 %". ``--json`` never replaces an existing file unless ``--force``, and never
an input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from asrlib.audio import AudioError, load_audio
from asrlib.checkpoint import load_model_and_tokenizer
from asrlib.config import Config
from asrlib.data.dataset import AudioDataset, BucketBatchSampler
from asrlib.data.manifest import ManifestError, read_manifest
from asrlib.decoding.ctc import CTCGreedyDecoder, CTCGreedyOptions, CTCPrefixBeamDecoder, CTCPrefixBeamOptions
from asrlib.decoding.rescore import PhoneRescoring, add_rescoring_arguments, rescoring_options
from asrlib.decoding.result import DecodingResult
from asrlib.decoding.rnnt import RNNTBeamDecoder, RNNTBeamOptions, RNNTGreedyDecoder, RNNTGreedyOptions
from asrlib.metrics import EditCounts, char_counts, error_report, word_counts
from asrlib.model.hybrid import HybridASR
from asrlib.ngram import add_decoding_arguments, decoding_options
from asrlib.streaming import DECODERS
from asrlib.streaming import StreamingRecognizer
from asrlib.errors import UsageError, refuse_existing_file, report_usage_errors
from asrlib.tokenizer import Tokenizer, TokenizerError



@torch.no_grad()
def decode_offline(model: HybridASR, waves: list[np.ndarray], decoder: str = "rnnt_greedy", beam: int = 4,
                   detokenize=None, device: str = "cpu", max_symbols: int = 5, lm=None, lm_weight: float = 0.0,
                   token_bonus: float = 0.0, rescoring: PhoneRescoring | None = None) -> list[DecodingResult]:
    """Decode a list of waveforms (at the model's rate) as one padded batch. ``max_symbols`` caps
    the tokens an RNN-T decoder emits per encoder frame (greedy and beam alike); ``lm``,
    ``lm_weight`` and ``token_bonus`` are the beam decoders' shallow fusion (:class:`RNNTBeamOptions`,
    :class:`CTCPrefixBeamOptions`); ``rescoring`` (rnnt_beam only) rescores each utterance's final
    hypotheses with the model's phone head (:mod:`asrlib.decoding.rescore`)."""
    lengths = torch.tensor([len(w) for w in waves])
    audio = torch.zeros(len(waves), int(lengths.max()) if len(waves) else 0)
    for b, w in enumerate(waves):
        audio[b, : len(w)] = torch.from_numpy(np.asarray(w, dtype=np.float32))
    if rescoring is not None and decoder != "rnnt_beam":
        raise ValueError(f"phone rescoring applies to the rnnt_beam decoder, not {decoder}")
    if rescoring is None:
        enc, enc_lengths = model(audio.to(device), lengths.to(device))
    else:
        enc, enc_lengths, phones = model.forward_with_phones(audio.to(device), lengths.to(device))
    if decoder == "ctc_greedy":
        return CTCGreedyDecoder(CTCGreedyOptions(model.blank)).decode(model.ctc_head(enc), enc_lengths, detokenize)
    if decoder == "ctc_beam":
        dec = CTCPrefixBeamDecoder(CTCPrefixBeamOptions(model.blank, beam_size=beam, lm=lm, lm_weight=lm_weight,
                                                        token_bonus=token_bonus))
        return dec.decode(model.ctc_head(enc), enc_lengths, detokenize)
    if decoder == "rnnt_greedy":
        return RNNTGreedyDecoder(RNNTGreedyOptions(model.blank, max_symbols)).decode(
            model.prediction, model.joint, enc, enc_lengths, detokenize)
    if decoder == "rnnt_beam":
        dec = RNNTBeamDecoder(RNNTBeamOptions(model.blank, beam, max_symbols, lm, lm_weight, token_bonus))
        if rescoring is None:
            return dec.decode(model.prediction, model.joint, enc, enc_lengths, detokenize)
        if detokenize is None or phones is None:
            raise ValueError("phone rescoring needs a detokenizer (it reads the words) and a model with a phone head")
        state = dec.init_state(len(waves), model.prediction, enc.device)
        state = dec.decode_chunk(model.prediction, model.joint, enc, state, 0, enc_lengths)
        return [rescoring.rescore(state.nbest(b, detokenize), phones[b, : int(enc_lengths[b])])
                for b in range(len(waves))]
    raise ValueError(f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")


def evaluate_manifest(model: HybridASR, tokenizer: Tokenizer, manifest: str | Path, decoder: str = "rnnt_greedy",
                      beam: int = 4, stream: bool = False, piece_samples: int = 1600, batch_size: int = 16,
                      device: str = "cpu", streams: int = 16, max_symbols: int = 5, lm=None, lm_weight: float = 0.0,
                      token_bonus: float = 0.0, rescoring: PhoneRescoring | None = None) -> dict:
    fusion = {"lm": lm, "lm_weight": lm_weight, "token_bonus": token_bonus, "rescoring": rescoring}
    rec = (StreamingRecognizer(model, tokenizer, decoder=decoder, num_streams=streams, max_symbols_per_frame=max_symbols,
                               beam_size=beam, **fusion) if stream else None)
    batch_size = max(batch_size, 4 * streams) if stream else batch_size  # utterances loaded at a time
    entries, report = read_manifest(manifest, strict=False)
    if not entries:
        raise UsageError(f"{manifest} has no usable utterance ({report.summary()}); check it with "
                         "`asrlib manifest check`")
    sr = model.cfg.frontend.sample_rate
    refs, hyps, ids = [], [], []
    audio_seconds, compute_seconds = 0.0, 0.0
    for start in range(0, len(entries), batch_size):
        batch, waves = [], []
        for e in entries[start : start + batch_size]:
            try:
                waves.append(load_audio(e.audio_filepath, sr, *e.span))
                batch.append(e)
            except AudioError:
                report.drop("unreadable audio", e.where)
        if not batch:
            continue
        t0 = time.perf_counter()
        if rec is not None:
            results = rec.recognize_many(waves, piece_samples)
        else:
            results = decode_offline(model, waves, decoder, beam, tokenizer.decode, device, max_symbols, **fusion)
        compute_seconds += time.perf_counter() - t0
        audio_seconds += sum(len(w) for w in waves) / sr
        refs += [e.text for e in batch]
        hyps += [r.text for r in results]
        ids += [e.where for e in batch]
    if not refs:
        raise UsageError(f"{manifest}: no utterance could be read ({report.summary()})")
    out = error_report(refs, hyps, ids)
    out.update(rtf=compute_seconds / max(audio_seconds, 1e-9), decoder=decoder, stream=stream,
               lm_weight=lm_weight if lm is not None else None, token_bonus=token_bonus,
               phone_weight=rescoring.weight if rescoring is not None else None,
               manifest=str(manifest), audio_seconds=audio_seconds, skipped_lines=report.total_dropped,
               skipped={"total": report.total_dropped, "reasons": dict(report.dropped), "first": dict(report.first)})
    return out


def skipped_line(r: dict) -> str:
    """``skipped 2 lines: 1 audio file not found (first at m:3), …`` (or ``skipped none``)."""
    s = r["skipped"]
    if not s["total"]:
        return "skipped none"
    parts = ", ".join(f"{n} {reason} (first at {s['first'][reason]})" for reason, n in s["reasons"].items())
    return f"skipped {s['total']} lines, left out of the WER: {parts}"


@torch.no_grad()
def evaluate_dataset(model: HybridASR, dataset: AudioDataset, tokenizer: Tokenizer, device, cfg: Config,
                     rank: int = 0, world: int = 1) -> dict:
    """Losses and greedy WER and CER (CTC and RNN-T) of ``model`` on ``dataset``.

    Under DDP (``world`` > 1, a process group initialised) each rank decodes every ``world``-th
    batch of the duration-sorted plan (no batch twice: nothing is padded) and the ranks sum
    their counts (loss sums, utterances, word and character errors, reference lengths) with one
    all_reduce, so every rank returns the WER, CER and losses of the whole set, ``world`` times
    faster. The ``examples`` are this rank's.
    """
    vd = cfg.validation_dataset
    sampler = BucketBatchSampler([e.duration for e in dataset.entries], vd.batch_seconds, vd.max_batch_size,
                                 1, 0, shuffle=False)
    shard = sampler.plan()[rank::world]  # (rank's batches of dataset indices)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=shard, collate_fn=dataset.collate,
                                         generator=torch.Generator())  # leaves the global RNG alone
    from asrlib.losses.hybrid import HybridLoss

    loss_module = HybridLoss(model, cfg)
    ctc_dec = CTCGreedyDecoder(CTCGreedyOptions(blank=model.blank))
    rnnt_dec = RNNTGreedyDecoder(RNNTGreedyOptions(blank=model.blank))
    refs, ctc_hyps, rnnt_hyps = [], [], []
    sums = {"loss": 0.0, "rnnt": 0.0, "ctc": 0.0}
    n = 0
    for batch in loader:
        if len(batch) == 0:
            continue
        args = [t.to(device) for t in (batch.audio, batch.audio_lengths, batch.tokens, batch.token_lengths)]
        out = loss_module(*args)
        for k in sums:
            sums[k] += float(out[k]) * len(batch.texts)
        n += len(batch.texts)
        enc, enc_lengths = model(args[0], args[1])
        ctc_hyps += [r.text for r in ctc_dec.decode(model.ctc_head(enc), enc_lengths, tokenizer.decode)]
        rnnt_hyps += [r.text for r in rnnt_dec.decode(model.prediction, model.joint, enc, enc_lengths,
                                                       tokenizer.decode)]
        refs += batch.texts
    c, r = word_counts(refs, ctc_hyps), word_counts(refs, rnnt_hyps)
    cc, rc = char_counts(refs, ctc_hyps), char_counts(refs, rnnt_hyps)
    counts = [sums["loss"], sums["rnnt"], sums["ctc"], n, c.ref_len, c.errors, r.errors,
              cc.ref_len, cc.errors, rc.errors]
    if world > 1:
        t = torch.tensor(counts, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        counts = t.tolist()
    loss, rnnt, ctc, n, words, ctc_errors, rnnt_errors, chars, ctc_char_errors, rnnt_char_errors = counts
    result = {"loss": loss / max(n, 1), "rnnt": rnnt / max(n, 1), "ctc": ctc / max(n, 1)}
    result.update(wer_ctc=_rate(ctc_errors, words), wer_rnnt=_rate(rnnt_errors, words),
                  cer_ctc=_rate(ctc_char_errors, chars), cer_rnnt=_rate(rnnt_char_errors, chars),
                  num_utterances=float(n))
    result["examples"] = list(zip(refs, rnnt_hyps))
    return result


def _rate(errors: float, units: float) -> float:
    """WER or CER from summed counts, as EditCounts.rate defines it (an empty reference: 0 or 1)."""
    return EditCounts(ref_len=int(round(units)), insertions=int(round(errors))).rate


@report_usage_errors("evaluate", TokenizerError, ManifestError, FileNotFoundError)
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="asrlib evaluate", description="WER/CER of a checkpoint on a manifest.")
    p.add_argument("--checkpoint", required=True, help="training checkpoint (.pt) or exported model folder")
    p.add_argument("--manifest", required=True, action="append", help="JSONL manifest (repeatable)")
    p.add_argument("--decoder", default="rnnt_greedy", choices=DECODERS)
    p.add_argument("--beam", type=int, default=4, help="beam searches: hypotheses kept")
    add_decoding_arguments(p)
    add_rescoring_arguments(p)
    p.add_argument("--max-symbols", type=int, default=5, help="RNN-T decoders: tokens one encoder frame may emit")
    p.add_argument("--stream", action="store_true", help="decode through the streaming recogniser")
    p.add_argument("--piece-samples", type=int, default=1600, help="samples fed per call when streaming")
    p.add_argument("--streams", type=int, default=16, help="utterances streamed at once (batched) with --stream")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder/model (default: the checkpoint's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="write the full report here (a new file)")
    p.add_argument("--force", action="store_true", help="let --json replace an existing file")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (streaming steps are small: 1 is"
                   " usually fastest)")
    args = p.parse_args(argv)
    if args.streams < 1:
        raise UsageError(f"--streams must be at least 1, got {args.streams}")
    if args.max_symbols < 1:
        raise UsageError(f"--max-symbols must be at least 1, got {args.max_symbols}")
    torch.set_num_threads(args.threads)
    if args.json:  # before any work: a refusal should not cost a whole evaluation
        refuse_existing_file(args.json, args.force, [*args.manifest, args.checkpoint])
    model, tokenizer = load_model_and_tokenizer(args.checkpoint, args.tokenizer, args.device)
    fusion = decoding_options(args, tokenizer.pieces())
    fusion.update(rescoring_options(args, model.cfg.phone_vocab_size, args.checkpoint))
    reports = []
    for manifest in args.manifest:
        r = evaluate_manifest(model, tokenizer, manifest, args.decoder, args.beam, args.stream, args.piece_samples,
                              device=args.device, streams=args.streams, max_symbols=args.max_symbols, **fusion)
        r["lm"] = args.lm
        reports.append(r)
        how = (args.decoder + (f" + {Path(args.lm).name} x {args.lm_weight:g}" if args.lm else "")
               + (f", phones x {args.phone_weight:g}" if args.phone_weight else ""))
        print(f"{Path(manifest).name}: WER {100 * r['wer']:.2f} %  CER {100 * r['cer']:.2f} %  "
              f"utterances {r['num_utterances']}  RTF {r['rtf']:.4f}  ({how}{', streaming' if args.stream else ''})")
        if r["skipped"]["total"]:
            print(f"{Path(manifest).name}: warning: {skipped_line(r)}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
