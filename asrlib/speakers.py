"""``asrlib speakers``: an evaluation's word errors speaker by speaker, beside how fast each talks.

    asrlib speakers REPORT.json [--manifest M] [--top 20] [--json OUT [--force]]

REPORT is an ``asrlib evaluate --json`` report; each utterance's speaker and duration come from
the manifest line its id (``manifest:line``) names (``speaker`` and ``duration``, as ``asrlib
prepare`` writes them for an4, fsdd, librispeech and commonvoice; ``--manifest`` gives the
manifest's path when the report was written from another folder). One row per speaker, worst
first: utterances, reference words, substitutions / deletions / insertions, WER, and the
speaking rate in reference characters (spaces left out) per second of audio. The worst
``--top`` speakers are printed (0: all; a Common Voice test set has hundreds) and ``--json``
holds all. Below the table, the Spearman rank correlation between rate and WER over all the
speakers (ties share their mean rank).

A corpus WER hides where the errors are. On AN4 dev they follow the speakers' rate (rank
correlation 0.82-0.94 over the 10 speakers on four models, docs/experiments.md), and the
fastest speaker holds a third of the shipped model's errors; 6x more training steps, a blank
penalty and faster speed perturbation did not reach him.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from asrlib.errors import UsageError, refuse_existing_file, report_usage_errors
from asrlib.metrics import normalize, word_counts
from asrlib.significance import load_utterances, manifest_lines


def per_speaker(utterances: list[dict], lines: list[dict]) -> list[dict]:
    """One row per speaker (worst WER first) from the report's utterances and their manifest lines."""
    rows: dict[str, dict] = {}
    for u, line in zip(utterances, lines):
        spk = str(line["speaker"])
        c = word_counts(u["ref"], u["hyp"])
        r = rows.setdefault(spk, {"speaker": spk, "utterances": 0, "words": 0, "substitutions": 0, "deletions": 0,
                                  "insertions": 0, "seconds": 0.0, "characters": 0})
        r["utterances"] += 1
        r["words"] += c.ref_len
        r["substitutions"] += c.substitutions
        r["deletions"] += c.deletions
        r["insertions"] += c.insertions
        r["seconds"] += float(line["duration"])
        r["characters"] += len(normalize(u["ref"]).replace(" ", ""))
    for r in rows.values():
        r["errors"] = r["substitutions"] + r["deletions"] + r["insertions"]
        r["wer"] = r["errors"] / r["words"] if r["words"] else float(r["errors"] > 0)
        r["chars_per_second"] = r["characters"] / r["seconds"] if r["seconds"] > 0 else float("nan")
    return sorted(rows.values(), key=lambda r: (-r["wer"], r["speaker"]))


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of the ranks they span."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and x[order[j + 1]] == x[order[i]]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def rank_correlation(x, y) -> float:
    """Spearman's rho: the Pearson correlation of the ranks; nan when either side is constant."""
    rx, ry = _ranks(np.asarray(x, float)), _ranks(np.asarray(y, float))
    if len(rx) < 2 or rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


@report_usage_errors("speakers")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="asrlib speakers",
                                description="Word errors speaker by speaker, beside each speaker's speaking rate.")
    p.add_argument("report", help="an `asrlib evaluate --json` report")
    p.add_argument("--manifest", default=None, help="the manifest the report scored (default: the path in the ids)")
    p.add_argument("--top", type=int, default=20, help="print the worst N speakers (0: all); --json holds all")
    p.add_argument("--json", default=None, help="write the rows here (a new file)")
    p.add_argument("--force", action="store_true", help="let --json replace an existing file")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.top < 0:
        raise UsageError(f"--top must be 0 (all) or more, got {args.top}")
    if args.json:
        refuse_existing_file(args.json, args.force, [args.report])
    utterances = load_utterances(args.report)
    lines = manifest_lines([u["id"] for u in utterances], args.manifest)
    if lines is None:
        raise UsageError(f"{args.report}: its utterance ids do not name manifest lines (manifest:line); write it "
                         "with `asrlib evaluate --json`")
    for u, line in zip(utterances, lines):
        missing = [k for k in ("speaker", "duration") if line.get(k) is None]
        if missing:
            raise UsageError(f"{u['id']}: the manifest line has no {' or '.join(missing)}; add it (asrlib prepare "
                             "writes both) or give the right manifest with --manifest")
    rows = per_speaker(utterances, lines)
    width = max(7, *(len(r["speaker"]) for r in rows))
    print(f"{'speaker':<{width}}  utts  words   S   D   I    WER %  chars/s")
    for r in rows[: args.top or None]:
        print(f"{r['speaker']:<{width}}  {r['utterances']:>4}  {r['words']:>5}  {r['substitutions']:>2}  "
              f"{r['deletions']:>2}  {r['insertions']:>2}  {100 * r['wer']:>7.2f}  {r['chars_per_second']:>7.2f}")
    errors, words = sum(r["errors"] for r in rows), sum(r["words"] for r in rows)
    rho = rank_correlation([r["chars_per_second"] for r in rows], [r["wer"] for r in rows])
    if args.top and len(rows) > args.top:
        print(f"... {len(rows) - args.top} more (--top 0 prints all)")
    print(f"all {len(rows)} speakers: WER {100 * errors / max(words, 1):.2f} % ({errors} errors in {words} words); "
          f"rank correlation of speaking rate and WER: {rho:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"speakers": rows, "rank_correlation_rate_wer": rho}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
