"""``make demo``: train on the bundled digits, evaluate both test splits, print a WER table.

    python -m asrlib.demo --config configs/demo.toml --out runs/demo
    torchrun --standalone --nproc_per_node 2 -m asrlib.demo ...     (what `make demo` runs)

Under torchrun every process trains its shard of each batch (DistributedDataParallel, gloo on
a CPU); process 0 then evaluates and the others exit. On a 2-core machine two one-thread
processes train about 1.5x faster than one process, and far more robustly than one process
with two threads.

Writes into ``--out``: checkpoints/, tensorboard/, best_model/ (exported weights),
metrics.jsonl (training curves), metrics.json (the final table) and curves.png. Running it
again resumes from the last checkpoint (a finished run only re-evaluates).

``--lm-order N`` (``make demo DATA=an4`` passes 8) also counts an N-gram model of the training
manifests' texts (:mod:`asrlib.ngram`; written to ``--out``/lm.arpa) and adds the rows of RNN-T
beam search with it fused in, offline and streaming (``--lm-weight``, ``--token-bonus``). A model
trained with the phone CTC (``configs/an4.toml``) gets two rows more: the same search with its final
hypotheses rescored by the phone head (``--phone-weight``; :mod:`asrlib.decoding.rescore`).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from asrlib.config import ConfigError, load_config
from asrlib.data.dataset import DataError
from asrlib.data.manifest import ManifestError, read_manifest
from asrlib.errors import report_usage_errors
from asrlib.logger import read_metrics
from asrlib.tokenizer import TokenizerError


def plot_curves(out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(out_dir)
    train = [r for r in rows if r["split"] == "train"]
    valid = [r for r in rows if r["split"] == "valid"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("loss", "rnnt", "ctc"):
        ax1.plot([r["step"] for r in train], [r[key] for r in train], label=f"train {key}")
    ax1.set_xlabel("step"), ax1.set_ylabel("loss"), ax1.set_yscale("log"), ax1.legend()
    for key in sorted({k for r in valid for k in r if "wer" in k}):
        ax2.plot([r["step"] for r in valid], [100 * r[key] for r in valid], marker="o", label=key)
    ax2.set_xlabel("step"), ax2.set_ylabel("WER %"), ax2.legend()
    fig.tight_layout()
    path = out_dir / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def default_tests(train_manifests: list[str], validation_manifests: list[str]) -> dict[str, str]:
    """Table name -> manifest: every ``test*.jsonl`` beside each training manifest (each folder
    once, in the training list's order), else the validation manifests. A name is the file's
    stem, with its folder's name in front where two folders have the same stem."""
    folders = list(dict.fromkeys(Path(m).parent for m in train_manifests))
    found = [p for d in folders for p in sorted(d.glob("test*.jsonl"))] or [Path(m) for m in validation_manifests]
    return named_tests(found)


def named_tests(manifests) -> dict[str, str]:
    stems = [Path(m).stem for m in manifests]
    return {(f"{Path(m).parent.name}/{s}" if stems.count(s) > 1 else s): str(m) for m, s in zip(manifests, stems)}


@report_usage_errors("demo", TokenizerError, ManifestError, DataError, ConfigError, prog="python -m asrlib.demo")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m asrlib.demo", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo.toml")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--test", action="append", default=None,
                   help="manifests to evaluate (default: every test*.jsonl beside the training manifests, "
                        "else the validation manifests)")
    p.add_argument("--lm-order", type=int, default=0, help="> 0: add beam search + an n-gram model of the "
                   "training text to the table")
    p.add_argument("--lm-weight", type=float, default=0.3)
    p.add_argument("--token-bonus", type=float, default=0.5)
    p.add_argument("--phone-weight", type=float, default=0.5, help="with --lm-order and a phone head: add the "
                   "rows of beam search + LM rescored by the phone head at this weight (0: no such rows)")
    args = p.parse_args(argv)

    from asrlib.checkpoint import load_model
    from asrlib.evaluate import evaluate_manifest
    from asrlib.resume import launcher
    from asrlib.tokenizer import Tokenizer
    from asrlib.train import Trainer

    out = Path(args.out)
    cfg = load_config(args.config, [f"trainer.output_dir={out}", "trainer.resume=auto", *args.overrides])
    t0 = time.perf_counter()
    sets = "".join(f" --set {o}" for o in args.overrides)
    again = f"{launcher('asrlib.demo', 'python -m asrlib.demo')} --config {args.config} --out {out}{sets}"
    trainer = Trainer(cfg, resume_command=f"{again} (or the same make command)")
    trainer.setup()
    trainer.fit()
    train_minutes = (time.perf_counter() - t0) / 60
    if trainer.world > 1 and not trainer.aborted:  # aborted: another rank may wait in a collective
        import torch.distributed as dist

        dist.barrier()  # leave together: a rank tearing gloo down while another still uses it can abort
        dist.destroy_process_group()
    if trainer.stopped_by:  # Ctrl-C / SIGTERM: saved; evaluating a half-trained model is not the demo
        return 128 + int(getattr(signal, trainer.stopped_by))
    if trainer.rank != 0:
        return 0

    tests = named_tests(args.test) if args.test else default_tests(
        cfg.train_dataset.train_manifest, cfg.validation_dataset.validation_manifest)
    model, tok_path = load_model(out / "best_model")
    tokenizer = Tokenizer(tok_path)
    fusion = {}
    if args.lm_order > 0:
        from asrlib.ngram import train_kneser_ney

        trained_on = trainer.train_set.entries  # the utterances the trainer kept, read once already
        lm = train_kneser_ney([tokenizer.encode(e.text) for e in trained_on], tokenizer.pieces(), args.lm_order)
        lm.save_arpa(out / "lm.arpa")
        fusion = {"lm": lm, "lm_weight": args.lm_weight, "token_bonus": args.token_bonus}
    runs = [("rnnt_greedy", False, {}), ("ctc_greedy", False, {}), ("rnnt_greedy", True, {})]
    runs += [("rnnt_beam", False, fusion), ("rnnt_beam", True, fusion)] if fusion else []
    rescored = {}
    if fusion and args.phone_weight > 0 and trainer.lexicon is not None and model.phone_head is not None:
        from asrlib.decoding.rescore import PhoneRescoring

        rescored = {**fusion, "rescoring": PhoneRescoring(trainer.lexicon, args.phone_weight)}
        runs += [("rnnt_beam", False, rescored), ("rnnt_beam", True, rescored)]
    table = {}
    for name, manifest in tests.items():
        for decoder, stream, options in runs:
            r = evaluate_manifest(model, tokenizer, manifest, decoder, stream=stream, piece_samples=1600, **options)
            row = (f"{name}/{decoder}{'_lm' if options else ''}{'_phones' if options.get('rescoring') else ''}"
                   f"{'_stream' if stream else ''}")
            table[row] = {k: r[k] for k in ("wer", "cer", "num_utterances", "rtf")}
    summary = {"steps": trainer.progress.step, "train_minutes_this_run": train_minutes,
               "best_validation_wer": trainer.progress.best_wer, "results": table}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    png = plot_curves(out)

    print(f"\n{'split/decoder':<36}{'WER %':>8}{'CER %':>8}{'utts':>6}{'RTF':>8}")
    for key, r in table.items():
        print(f"{key:<36}{100 * r['wer']:>8.2f}{100 * r['cer']:>8.2f}{r['num_utterances']:>6}{r['rtf']:>8.3f}")
    if fusion:
        print(f"rnnt_beam_lm: beam 4 + the {args.lm_order}-gram model of the training text ({out}/lm.arpa), "
              f"weight {args.lm_weight:g}, token bonus {args.token_bonus:g}")
    if rescored:
        print(f"rnnt_beam_lm_phones: its final hypotheses rescored by the phone head (block {model.cfg.phone_block}) "
              f"through {trainer.lexicon.source}, weight {args.phone_weight:g}")
    print(f"\ntrained {trainer.progress.step} steps ({train_minutes:.1f} min in this run)")
    print(f"wrote {out}/: checkpoints/, best_model/, tensorboard/, metrics.json, {png.name}"
          + (", lm.arpa" if fusion else ""))
    example = read_manifest(next(iter(tests.values())))[0][0].audio_filepath
    print(f"try:  .venv/bin/asrlib transcribe --checkpoint {out}/best_model --stream {example}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
