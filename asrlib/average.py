"""Checkpoint averaging: the mean of the weights of several checkpoints of one run, as a model folder.

    asrlib average runs/an4/checkpoints --last 5 --out models/an4-avg
    asrlib average runs/an4/checkpoints/step-00005000.pt runs/an4/checkpoints/step-00006000.pt --out DIR

Late in a run the weights wander around a minimum from one checkpoint to the next; their mean
usually sits nearer its centre than any one of them, and often decodes better (ESPnet and
icefall recipes average the last or best few checkpoints before they report a WER). Measure it
on a validation set (``asrlib evaluate``) before you ship it: it is not guaranteed to help.

Every floating-point tensor of the model is averaged (in float64, stored in its own dtype);
any other tensor must be equal in all checkpoints. The checkpoints must share one model
configuration and one tokenizer. The result is an inference folder like ``best_model/``
(``model.safetensors``, ``config.json``, ``tokenizer.model``) that ``evaluate``,
``transcribe`` and ``export`` read. Folders given as inputs contribute their ``step-*.pt``
files (not ``best.pt``); ``--last N`` keeps the N of highest step (a file not named
``step-*.pt``, such as ``best.pt`` given by name, counts as the newest).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from asrlib import checkpoint as ckpt
from asrlib.config import model_config_from_dict
from asrlib.errors import UsageError, refuse_nonempty_folder
from asrlib.model.hybrid import build_model


def checkpoint_files(inputs: list[str | Path], last: int | None = None) -> list[Path]:
    """The checkpoint files ``inputs`` name (folders give their ``step-*.pt``), ordered by step."""
    found: list[Path] = []
    for given in map(Path, inputs):
        if given.is_dir():
            steps = ckpt.list_checkpoints(given)
            if not steps:
                raise UsageError(f"{given} holds no step-*.pt checkpoints; give a run's checkpoints/ folder or .pt files")
            found += steps
        elif given.is_file():
            found.append(given)
        else:
            raise UsageError(f"{given}: no such checkpoint file or folder")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    unique.sort(key=lambda p: (ckpt.step_of(p) is None, ckpt.step_of(p) or 0))
    if last is not None:
        if last < 1:
            raise UsageError(f"--last must be at least 1, got {last}")
        unique = unique[-last:]
    return unique


def average_state_dicts(states) -> dict[str, torch.Tensor]:
    """Key by key: the mean of floating-point tensors; other tensors must be equal.

    ``states`` is an iterable of state dicts with the same keys and shapes (read one at a time,
    so only the running sum and one checkpoint are in memory).
    """
    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    count = 0
    for i, state in enumerate(states):
        if count and set(state) != set(total):
            diff = sorted(set(state) ^ set(total))
            raise UsageError(f"checkpoint {i + 1} has different tensors ({', '.join(diff[:3])}); "
                             "average checkpoints of one model")
        for key, value in state.items():
            if count and value.shape != total[key].shape:
                raise UsageError(f"checkpoint {i + 1}: {key} has shape {tuple(value.shape)}, the first has "
                                 f"{tuple(total[key].shape)}; average checkpoints of one model")
            if value.is_floating_point():
                if count:
                    total[key] += value.double()
                else:
                    total[key], dtypes[key] = value.double().clone(), value.dtype
            elif not count:
                total[key] = value.clone()
            elif not torch.equal(total[key], value):
                raise UsageError(f"checkpoint {i + 1}: {key} (not floating point, so not averaged) differs from "
                                 "the first checkpoint's; average checkpoints of one run")
        count += 1
    if not count:
        raise UsageError("no checkpoints to average")
    return {k: (v / count).to(dtypes[k]) if k in dtypes else v for k, v in total.items()}


def average_checkpoints(paths: list[Path]):
    """(model in eval mode with the averaged weights, its tokenizer or None) from checkpoint files."""
    first = ckpt.load_checkpoint(paths[0])
    model_cfg, sha = first["config"]["model"], first.get("tokenizer_sha256")

    def states():
        for path in paths:
            ck = first if path == paths[0] else ckpt.load_checkpoint(path)
            found = ckpt.model_mismatch(model_cfg, ck["config"]["model"])
            if found:
                raise UsageError(f"{path}: its model differs from {paths[0]}'s ({found}); average checkpoints of one run")
            if ck.get("tokenizer_sha256") != sha:
                raise UsageError(f"{path}: trained with another tokenizer than {paths[0]}; average checkpoints of one run")
            yield ckpt.inference_state(ck)  # a run that kept a weight average: that average

    averaged = average_state_dicts(states())
    model = build_model(model_config_from_dict(model_cfg))
    model.load_state_dict(averaged)
    return model.eval(), ckpt.tokenizer_from_state(first, paths[0])


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="asrlib average", description="average the weights of checkpoints of one run")
    p.add_argument("inputs", nargs="+", help="checkpoint files (.pt) and/or checkpoints/ folders")
    p.add_argument("--last", type=int, help="use only the N checkpoints of highest step")
    p.add_argument("--out", required=True, help="new (or empty) folder for the averaged model")
    p.add_argument("--force", action="store_true", help="write into a folder that already holds files")
    args = p.parse_args(argv)

    out = Path(args.out)
    refuse_nonempty_folder(out, args.force)
    paths = checkpoint_files(args.inputs, args.last)
    model, tokenizer = average_checkpoints(paths)
    ckpt.export_weights(model, out, tokenizer, ckpt.lexicon_of(paths[0]))
    steps = [ckpt.step_of(p) for p in paths]
    named = ", ".join(str(s) if s is not None else p.name for s, p in zip(steps, paths))
    print(f"averaged {len(paths)} checkpoints (steps {named}) into {out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    from asrlib.errors import report_usage_errors

    return report_usage_errors("average", FileNotFoundError, RuntimeError)(_main)(argv)


if __name__ == "__main__":
    sys.exit(main())
