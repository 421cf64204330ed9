"""A second pass at the end of an utterance: the beam's final hypotheses rescored by the phone head.

A model trained with the auxiliary phone CTC (``loss.phone_ctc_weight``, asrlib/lexicon.py) has a
CTC head over phones on one of its blocks (``model.phone_block``). RNN-T beam search (with or
without a language model) ends an utterance with up to ``beam_size`` hypotheses; each is spelled in
phones through the pronunciation lexicon and scored by that head over the utterance's frames:

    total(h) = beam score(h) + weight x log P_CTC(phones(h) | the phone head's log-probs)

and the hypothesis with the best total is the result. log P_CTC sums over every alignment of the
phones to the frames (the CTC forward algorithm; ``torch.nn.functional.ctc_loss``). A hypothesis
with a word the lexicon lacks, or with more phones than its frames can carry, has no phone score
(-inf): it wins only when no hypothesis has one, and then the beam's own order stands.

Why: the RNN-T head spells letters, and the letters AN4 confuses most (the E-set: B C D E G P T V
Z, and the nasals M N) differ in one onset each. The phone head learned those onsets as classes
shared by many words, and it judges a whole hypothesis at once where the beam scored it letter by
letter. Measured (docs/experiments.md, "Decoding with a language model of the training text", from
session 51's scratch study to "Built (session 52)"): at weight 0.5 it lowers the 15-minute recipe's
dev WER on every run scored, and not the longer run's model (models/an4).

Streaming: the phone head reads a causal block like every other output, so the recogniser keeps
its log-probs per stream (P + 1 numbers per encoder frame) and rescores when the stream is
finalized. Partial results are the beam's; the final result equals offline rescoring.

Shapes: log_probs (T, P + 1) one utterance's phone log-probs, blank = P (the lexicon's size).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from asrlib.decoding.result import DecodingResult
from asrlib.errors import UsageError
from asrlib.lexicon import Lexicon, LexiconError


def ctc_log_likelihood(log_probs: Tensor, targets: list[int], blank: int) -> float:
    """log P_CTC(targets | log_probs): the log of the summed probability of every frame-level path
    (targets with blanks between and repeats) that collapses to ``targets``; -inf if none fits."""
    n_frames = log_probs.shape[0]
    if n_frames == 0:
        return 0.0 if not targets else -math.inf
    loss = F.ctc_loss(log_probs.double()[:, None], torch.tensor([targets], dtype=torch.long),
                      torch.tensor([n_frames]), torch.tensor([len(targets)]), blank=blank, reduction="sum",
                      zero_infinity=False)
    return -float(loss)


@dataclass(frozen=True)
class PhoneRescoring:
    """The second pass's settings: a lexicon whose phones are the model's phone head's, and the
    weight of the phone score beside the beam's."""

    lexicon: Lexicon
    weight: float = 0.5

    def phones(self, text: str) -> list[int] | None:
        """The phone ids of ``text``'s words, or None if the lexicon lacks one of them."""
        if any(w not in self.lexicon.pronunciations for w in text.split()):
            return None
        return self.lexicon.encode(text)

    def rescore(self, nbest: list[DecodingResult], log_probs: Tensor) -> DecodingResult:
        """The hypothesis of ``nbest`` (best first, each with its ``text``) with the best total; its
        ``score`` becomes that total. Without any phone score the first one comes back unchanged."""
        if not nbest:
            return DecodingResult()
        lp = log_probs.detach().float().cpu()
        best, best_total = None, -math.inf
        for hyp in nbest:
            phones = self.phones(hyp.text)
            if phones is None:
                continue
            total = hyp.score + self.weight * ctc_log_likelihood(lp, phones, self.lexicon.blank)
            if total > best_total:
                best, best_total = hyp, total
        return nbest[0] if best is None else replace(best, score=best_total)


# --------------------------------------------------------------------------- command-line options
def add_rescoring_arguments(p: argparse.ArgumentParser) -> None:
    """``--phone-weight`` and ``--lexicon``, shared by ``asrlib evaluate`` and ``asrlib transcribe``."""
    p.add_argument("--phone-weight", type=float, default=0.0,
                   help="--decoder rnnt_beam: rescore its final hypotheses with the model's phone head, the phone "
                   "score weighted so (0: off; 0.5 on AN4, docs/experiments.md)")
    p.add_argument("--lexicon", default=None,
                   help="with --phone-weight: the pronunciation lexicon the model was trained with (default: "
                   "lexicon.txt in a model folder; the file a training checkpoint's loss.phone_lexicon names)")


def rescoring_options(args: argparse.Namespace, phone_vocab_size: int, model_path: str | Path) -> dict:
    """``{"rescoring": PhoneRescoring or None}`` from the flags above, checked against the model
    (``phone_vocab_size``: its phone head's phones, 0 without one; ``model_path``: the checkpoint
    or model folder, whose own lexicon is the default: ``checkpoint.lexicon_of``)."""
    if args.phone_weight == 0:
        if args.lexicon is not None:
            raise UsageError("--lexicon is read only with --phone-weight > 0 (the phone rescoring); add one, or drop "
                             "--lexicon")
        return {"rescoring": None}
    if args.phone_weight < 0 or not math.isfinite(args.phone_weight):
        raise UsageError(f"--phone-weight must be a number >= 0, got {args.phone_weight}")
    if args.decoder != "rnnt_beam":
        raise UsageError(f"--phone-weight rescores the RNN-T beam's final hypotheses: use --decoder rnnt_beam, "
                         f"not {args.decoder}")
    if phone_vocab_size == 0:
        raise UsageError(f"{model_path} has no phone head to rescore with (train one with loss.phone_ctc_weight > 0 "
                         "and a loss.phone_lexicon); drop --phone-weight")
    from asrlib.checkpoint import lexicon_of  # the checkpoint module loads models: only when asked

    own_path = lexicon_of(model_path)  # the lexicon the model was trained with, where it is known
    if args.lexicon is None and own_path is None:
        where = (f"no lexicon.txt in {model_path}" if Path(model_path).is_dir() else
                 f"the lexicon {model_path} was trained with (its loss.phone_lexicon) is not on this machine")
        raise UsageError(f"{where}: pass --lexicon with the lexicon the model was trained with")
    path = Path(args.lexicon) if args.lexicon is not None else own_path
    try:
        lexicon = Lexicon.read(path)
    except LexiconError as e:  # its hint names the training key; here the flag is the place to fix
        raise UsageError(f"{str(e).split('; ')[0]}; pass --lexicon with the lexicon the model was trained with") from None
    if lexicon.size != phone_vocab_size:
        raise UsageError(f"the lexicon {path} has {lexicon.size} phones but the model's phone head "
                         f"{phone_vocab_size}: pass the lexicon it was trained with (its loss.phone_lexicon)")
    if own_path is not None and own_path.resolve() != Path(path).resolve():
        _check_same_phones(lexicon, own_path)
    return {"rescoring": PhoneRescoring(lexicon, args.phone_weight)}


def _check_same_phones(lexicon: Lexicon, own_path: Path) -> None:
    """A lexicon given with ``--lexicon`` must spell with the phones of the model's own lexicon
    (``own_path``: a model folder's ``lexicon.txt``, or the training checkpoint's ``loss.phone_lexicon``):
    phone i is the i-th of the sorted inventory, so another inventory of the same size would read the
    head's outputs as other phones. Pronunciations may differ; the inventory may not."""
    try:
        own = Lexicon.read(own_path)
    except LexiconError:
        return  # the model's own file is unreadable: the count check above is all there is to go on
    if own.phones != lexicon.phones:
        differ = sorted(set(own.phones) ^ set(lexicon.phones))
        raise UsageError(f"the lexicon {lexicon.source} spells with other phones than the model's own {own_path} "
                         f"({', '.join(differ[:6])}{' ...' if len(differ) > 6 else ''} in one and not the other): "
                         "pass the lexicon the model was trained with")
