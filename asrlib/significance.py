"""Is B's WER really lower than A's? A paired bootstrap over two ``asrlib evaluate --json`` reports.

    asrlib significance A.json B.json [--by speaker|utterance] [--manifest M] [--resamples 10000]
                        [--seed 0] [--json OUT [--force]]

A and B must score the same utterances with the same references (two checkpoints, or two
decoders, on one manifest). The test set is resampled with replacement ``--resamples`` times,
the same draw for both systems (paired), and each resample's WER difference B - A is computed
from its word errors and reference words. The report gives the observed difference, the 95 %
interval of the resampled differences (2.5th to 97.5th percentile) and the share of resamples
in which B is better (Bisani and Ney, "Bootstrap estimates for confidence intervals in ASR
performance evaluation", ICASSP 2004).

``--by speaker`` (the default when every utterance's manifest line has a ``speaker`` field, as
``asrlib prepare an4`` writes) resamples whole speakers: one speaker's utterances share a voice,
so their errors are not independent, and resampling utterances would make the interval too
narrow. With 10 dev speakers the interval is wide; that is the honest answer. It is also only
approximate: when B is level or worse on every speaker, no resample favours B, and the interval
says no more than a sign test over those speakers would. The speaker comes
from the manifest line each utterance id (``manifest:line``) names; ``--manifest`` gives the
manifest's path when the report was written from another folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from asrlib.errors import UsageError, refuse_existing_file, report_usage_errors
from asrlib.metrics import word_counts


def load_utterances(path: str | Path) -> list[dict]:
    """The per-utterance rows of an ``asrlib evaluate --json`` report (one manifest or several)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: not a readable JSON report ({e}); write one with `asrlib evaluate --json`")
    reports = data if isinstance(data, list) else [data]
    rows = [u for r in reports if isinstance(r, dict) for u in r.get("utterances", [])]
    if not rows or not all(isinstance(u, dict) and {"id", "ref", "hyp"} <= u.keys() for u in rows):
        raise UsageError(f"{path}: no per-utterance results (id, ref, hyp); write it with `asrlib evaluate --json`")
    return rows


def paired_counts(a: list[dict], b: list[dict], a_name: str = "A", b_name: str = "B"):
    """Utterance ids, reference words and word errors of A and B, in A's order."""
    by_id = {u["id"]: u for u in b}
    missing = [u["id"] for u in a if u["id"] not in by_id]
    extra = len(b) - (len(a) - len(missing))
    if missing or extra:
        raise UsageError(f"{a_name} and {b_name} score different utterances ({len(missing)} only in {a_name}, e.g. "
                         f"{missing[0] if missing else '-'}; {extra} only in {b_name}); evaluate both on one manifest")
    ids, words, err_a, err_b = [], [], [], []
    for u in a:
        v = by_id[u["id"]]
        if u["ref"] != v["ref"]:
            raise UsageError(f"{u['id']}: the references differ between {a_name} and {b_name}; evaluate both on "
                             "one manifest")
        ca, cb = word_counts(u["ref"], u["hyp"]), word_counts(v["ref"], v["hyp"])
        ids.append(u["id"])
        words.append(ca.ref_len)
        err_a.append(ca.errors)
        err_b.append(cb.errors)
    return ids, np.array(words, float), np.array(err_a, float), np.array(err_b, float)


def manifest_lines(ids: list[str], manifest: str | Path | None = None) -> list[dict] | None:
    """The JSON object of the manifest line each utterance id (``manifest:line``) names ({} for a
    line that is not one); None if an id does not name a line."""
    lines: dict[str, list[str]] = {}
    out = []
    for uid in ids:
        path, _, number = uid.rpartition(":")
        if not number.isdigit():
            return None
        path = str(manifest) if manifest else path
        if path not in lines:
            try:
                lines[path] = Path(path).read_text().splitlines()
            except OSError:
                raise UsageError(f"{path}: cannot read the manifest that utterance {uid} comes from; run from the "
                                 "folder you evaluated in, or give it with --manifest")
        try:
            obj = json.loads(lines[path][int(number) - 1])
        except (IndexError, ValueError):
            obj = {}
        out.append(obj if isinstance(obj, dict) else {})
    return out


def speakers_of(ids: list[str], manifest: str | Path | None = None) -> list[str] | None:
    """Each utterance's ``speaker`` from the manifest line its id names; None if any line has none."""
    lines = manifest_lines(ids, manifest)
    if lines is None or any(line.get("speaker") is None for line in lines):
        return None
    return [str(line["speaker"]) for line in lines]


def paired_bootstrap(words, err_a, err_b, groups=None, resamples: int = 10000, seed: int = 0) -> dict:
    """Bootstrap the WER difference B - A, resampling ``groups`` (or single utterances) with replacement."""
    words, err_a, err_b = (np.asarray(x, float) for x in (words, err_a, err_b))
    if groups is None:
        groups = list(range(len(words)))
    names = sorted(set(groups), key=str)
    index = {g: i for i, g in enumerate(names)}
    member = np.array([index[g] for g in groups])
    k = len(names)
    per = np.zeros((3, k))  # words, errors of A, errors of B per group
    for row, x in enumerate((words, err_a, err_b)):
        np.add.at(per[row], member, x)
    if per[0].sum() == 0:
        raise UsageError("the references have no words; nothing to compare")
    draws = np.random.default_rng(seed).integers(0, k, size=(resamples, k))  # the groups of each resample
    w, ea, eb = (per[i][draws].sum(axis=1) for i in range(3))
    keep = w > 0
    diff = (eb[keep] - ea[keep]) / w[keep]
    observed_a, observed_b = per[1].sum() / per[0].sum(), per[2].sum() / per[0].sum()
    low, high = np.percentile(diff, [2.5, 97.5])
    each = [np.percentile(e[keep] / w[keep], [2.5, 97.5]).tolist() for e in (ea, eb)]
    return {"wer_a": observed_a, "wer_b": observed_b, "wer_a_interval_95": each[0], "wer_b_interval_95": each[1],
            "difference": observed_b - observed_a,
            "interval_95": [float(low), float(high)], "b_better": float(np.mean(diff < 0)),
            "b_worse": float(np.mean(diff > 0)), "units": k, "resamples": int(keep.sum()),
            "words": float(per[0].sum())}


def verdict(r: dict) -> str:
    low, high = r["interval_95"]
    if high < 0:
        return "B is better: the whole 95 % interval is below zero"
    if low > 0:
        return "B is worse: the whole 95 % interval is above zero"
    return "no significant difference at the 5 % level (the 95 % interval holds zero)"


@report_usage_errors("significance")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="asrlib significance",
                                description="Paired bootstrap of the WER difference between two evaluate reports.")
    p.add_argument("a", help="baseline: an `asrlib evaluate --json` report")
    p.add_argument("b", help="candidate: a report on the same utterances")
    p.add_argument("--by", choices=["speaker", "utterance"], default=None,
                   help="resample whole speakers (default when the manifest names them) or single utterances")
    p.add_argument("--manifest", default=None, help="the manifest the reports scored (default: the path in the ids)")
    p.add_argument("--resamples", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the result here (a new file)")
    p.add_argument("--force", action="store_true", help="let --json replace an existing file")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.resamples < 100:
        raise UsageError(f"--resamples must be at least 100, got {args.resamples}")
    if args.json:
        refuse_existing_file(args.json, args.force, [args.a, args.b])
    ids, words, err_a, err_b = paired_counts(load_utterances(args.a), load_utterances(args.b), args.a, args.b)
    groups = None
    if args.by != "utterance":
        groups = speakers_of(ids, args.manifest)
        if groups is None and args.by == "speaker":
            raise UsageError("--by speaker: a manifest line has no \"speaker\" field; use --by utterance")
    r = paired_bootstrap(words, err_a, err_b, groups, args.resamples, args.seed)
    r.update(a=args.a, b=args.b, by="speaker" if groups is not None else "utterance")
    unit = "speakers" if groups is not None else "utterances"
    low, high = r["interval_95"]
    for name, key in ((args.a, "a"), (args.b, "b")):
        lo, hi = r[f"wer_{key}_interval_95"]
        print(f"{key.upper()} {name}: WER {100 * r[f'wer_{key}']:.2f} % (95 % interval {100 * lo:.2f}-{100 * hi:.2f})")
    print(f"B - A: {100 * r['difference']:+.2f} points; 95 % interval [{100 * low:+.2f}, {100 * high:+.2f}] "
          f"(paired bootstrap over {r['units']} {unit}, {int(r['words'])} reference words, {r['resamples']} "
          "resamples); B better in "
          f"{100 * r['b_better']:.1f} %, worse in {100 * r['b_worse']:.1f} %")
    print(verdict(r))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
