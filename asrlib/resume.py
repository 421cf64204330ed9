"""Which checkpoint a run resumes from, and whether it fits the run being set up.

- ``--resume auto``: the newest readable ``step-*.pt`` in the run's checkpoints folder; an
  unreadable newest one (a crash mid-copy, a full disk) is reported and the previous one used.
  No checkpoint at all: a fresh start (``make demo`` relies on this).
- ``--resume PATH``: that file; unreadable is a one-line error.
- A checkpoint whose model config differs from the current one, or that was trained with
  another tokenizer, is a one-line error naming the first differing key (saved vs now).
- ``launcher``: how to start the run again, for the "continue with" line a stopped run prints.
- ``init_from`` (``trainer.init_from``): a new run that starts from another run's weights
  (fine-tuning). The model settings may differ wherever the weights still fit (dropout, chunk
  sizes, the prediction network's dropout…) and each difference is reported; the tokenizer
  must be the same file, since the output layers' rows are its pieces, unless only the parts
  that know no pieces are taken (``trainer.init_modules = ["frontend", "encoder"]``: a new
  tokenizer or language on a trained encoder).
"""

from __future__ import annotations

import os
from pathlib import Path

from asrlib import checkpoint as ckpt
from asrlib.config import INIT_MODULES, to_dict
from asrlib.errors import UsageError


def find_checkpoint(resume: str, folder: Path, log=print) -> tuple[Path | None, dict | None]:
    """(path, state) to resume from; (None, None) for a fresh start under 'auto'."""
    if resume != "auto":
        try:
            return Path(resume), ckpt.load_checkpoint(resume)
        except (FileNotFoundError, RuntimeError) as e:
            raise UsageError(f"{e}; pass another --resume checkpoint or --resume auto") from None
    found = ckpt.list_checkpoints(folder)
    for i, candidate in enumerate(reversed(found)):
        try:
            state = ckpt.load_checkpoint(candidate)
        except RuntimeError as e:
            log(f"warning: {str(e).splitlines()[0]}")
            continue
        if i > 0:
            log(f"warning: falling back to {candidate}: the newer checkpoint(s) cannot be read")
        return candidate, state
    if found:
        raise UsageError(f"none of the {len(found)} checkpoints in {folder} can be read; "
                         "resume from another file with --resume PATH")
    return None, None


def check_compatible(path: Path, state: dict, model_cfg: dict, tokenizer) -> None:
    """One-line UsageError when the checkpoint's model or tokenizer differs from this run's."""
    why = ckpt.model_mismatch(state["config"]["model"], model_cfg)
    if why:
        raise UsageError(f"cannot resume from {path}: {why}; resume with the checkpoint's model settings "
                         "or start a new run in another trainer.output_dir")
    stored = ckpt.tokenizer_from_state(state, path)
    if stored is not None and stored.sha256 != tokenizer.sha256:
        raise UsageError(f"cannot resume from {path}: it was trained with another tokenizer than {tokenizer.path} "
                         f"(sha256 {stored.sha256[:12]} vs {tokenizer.sha256[:12]}); set tokenizer.tokenizer_path "
                         "to the run's tokenizer")


def launcher(module: str, command: str) -> str:
    """The start of a command that runs ``module`` as this process was run: torchrun with this
    run's processes per node when torchrun started several, else ``command`` (e.g. "asrlib train")."""
    world, local = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if world <= 1:
        return command
    nodes = f" --nnodes {world // local} <your rendezvous options>" if world > local else " --standalone"
    return f"torchrun{nodes} --nproc_per_node {local} -m {module}"


VOCABULARY_PARTS = {"ctc_head", "prediction", "joint", "simple"}  # their weights are rows of the tokenizer's pieces


def init_from(model, source: str, tokenizer, modules: list[str], log=print) -> list[str]:
    """Load the inference weights of ``source`` (a checkpoint or an exported model folder; the
    weight average when it kept one) into ``model``, feature statistics included: all of them,
    or those of the parts named in ``modules`` (``trainer.init_modules``). Returns the parts loaded."""
    from asrlib.tokenizer import TokenizerError

    try:
        donor, tok = ckpt.load_model_and_tokenizer(source)
    except (FileNotFoundError, RuntimeError, TokenizerError, KeyError, ValueError) as e:
        raise UsageError(f"trainer.init_from = {source}: {str(e).strip().splitlines()[0]}") from None
    parts = list(modules or INIT_MODULES)
    if set(parts) & VOCABULARY_PARTS and tok.sha256 != tokenizer.sha256:
        raise UsageError(f"trainer.init_from = {source} was trained with another tokenizer than {tokenizer.path} "
                         f"(sha256 {tok.sha256[:12]} vs {tokenizer.sha256[:12]}); set tokenizer.tokenizer_path to "
                         "the tokenizer it was trained with, or take only its frontend and encoder "
                         "(trainer.init_modules = [\"frontend\", \"encoder\"])")
    differences = list(ckpt.model_differences(to_dict(donor.cfg), to_dict(model.cfg)))
    mine = {k: v for k, v in model.state_dict().items() if k.split(".")[0] in parts}
    theirs = {k: v for k, v in donor.state_dict().items() if k.split(".")[0] in parts}
    misfit = sorted(mine.keys() ^ theirs.keys()) or [k for k in mine if mine[k].shape != theirs[k].shape]
    if misfit:
        why = differences[0] if differences and not modules else f"{misfit[0]} differs"
        raise UsageError(f"trainer.init_from = {source}: its weights do not fit this model ({why}); start from a "
                         "checkpoint of the same architecture")
    # every key of the parts is checked above; what lies outside them (the training-only phone head,
    # whichever side has one) keeps this model's fresh values
    model.load_state_dict(theirs, strict=False)
    what = f"the {', '.join(parts)} of {source}" if modules else source
    log(f"initialised from {what}" + (" (its settings differ: " + "; ".join(differences) + ")"
                                       if differences else " (the same model settings)"))
    return parts
