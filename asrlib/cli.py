"""The ``asrlib`` command: one subcommand per module, each module owning its own arguments.

    asrlib prepare fsdd|an4|commonvoice|librispeech|noise …  data/importers
    asrlib manifest check M [--strict]              data/manifest_check.py
    asrlib tokenizer train …                        tokenizer.py
    asrlib summary --config C                       model/summary.py
    asrlib train --config C [--set k=v …]           train.py
    asrlib evaluate --checkpoint CK --manifest M    evaluate.py
    asrlib transcribe --checkpoint CK FILE…         transcribe.py
    asrlib compare-stream --checkpoint CK --audio F compare.py
    asrlib export --checkpoint CK --out DIR         export.py
    asrlib average CK… [--last N] --out DIR         average.py
    asrlib significance A.json B.json               significance.py
    asrlib speakers REPORT.json                     speakers.py
    asrlib ngram --tokenizer T --manifest M --out F ngram.py

A user's mistake is one line, ``asrlib COMMAND: error: …``, exit status 2; ``--debug`` (anywhere
on the line) shows the traceback instead. Each target module has ``main(argv: list[str]) -> int``; it is imported only when used, so
``asrlib manifest check`` does not pay for importing the trainer.
"""

from __future__ import annotations

import importlib
import os
import sys

COMMANDS = {
    "prepare": ("asrlib.data.importers", "turn a public corpus into JSONL manifests"),
    "manifest": ("asrlib.data.manifest_check", "check a manifest and its audio files"),
    "tokenizer": ("asrlib.tokenizer", "train a SentencePiece tokenizer from manifests"),
    "summary": ("asrlib.model.summary", "print a model's layers and parameter counts"),
    "train": ("asrlib.train", "train from a TOML config"),
    "evaluate": ("asrlib.evaluate", "WER/CER of a checkpoint on a manifest"),
    "transcribe": ("asrlib.transcribe", "print the text of audio files (optionally streaming)"),
    "compare-stream": ("asrlib.compare", "compare the full model with the streaming path"),
    "export": ("asrlib.export", "export the streaming step to ONNX"),
    "average": ("asrlib.average", "average the weights of a run's checkpoints into a model folder"),
    "significance": ("asrlib.significance", "is one WER really lower than another? (paired bootstrap)"),
    "speakers": ("asrlib.speakers", "an evaluation's errors speaker by speaker, beside each one's speaking rate"),
    "ngram": ("asrlib.ngram", "a token-level n-gram language model for beam search (ARPA)"),
}


def usage() -> str:
    lines = ["usage: asrlib COMMAND [options]   (asrlib COMMAND --help for its options)", ""]
    lines += [f"  {name:<15} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:
        argv.remove("--debug")
        os.environ["ASRLIB_DEBUG"] = "1"  # report_usage_errors lets exceptions through
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"asrlib: unknown command '{name}'\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
