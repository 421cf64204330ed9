"""Honest skipping: every utterance a training run drops is counted by reason and reported.

``AudioDataset`` returns a ``Skipped(reason, manifest:line)`` for an utterance it cannot use,
and ``collate`` keeps them in ``Batch.skips``, which reaches the main process even from
DataLoader workers. ``attribute`` counts each batch's skips by reason (announcing the first of
each, with its line); ``summary`` makes the end-of-training line.
"""

from __future__ import annotations



class SkipTally:
    def __init__(self, reasons: dict, log=print):
        self.reasons = reasons  # reason -> count; the checkpointed dict, updated in place
        self.log = log

    def attribute(self, skips: list[tuple[str, str]]) -> None:
        """Add a batch's skipped utterances ``(reason, manifest:line)``; the first of each
        reason is announced."""
        for reason, where in skips:
            if reason not in self.reasons:
                self.log(f"warning: skipping training utterances: {reason} (first at {where}); "
                         "all skips are counted and reported at the end")
            self.reasons[reason] = self.reasons.get(reason, 0) + 1


def summary(total: int, reasons: dict) -> str:
    """``skipped training utterances: 3 (2 unreadable audio, 1 too short); …`` or ``…: none``."""
    if not total:
        return "skipped training utterances: none"
    parts = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items(), key=lambda x: -x[1]))
    return (f"skipped training utterances: {total} ({parts}); run `asrlib manifest check` on the training "
            "manifest to list them")
