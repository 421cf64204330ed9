"""Honest skipping: every utterance a training run drops is counted by reason and reported.

``AudioDataset`` counts its rejections by reason (``dataset.skipped``) in the process that
decoded them, and ``collate`` counts the dropped items per batch (``Batch.dropped``), which
reaches the main process even from DataLoader workers. ``attribute`` turns each batch's count
into reasons (those decoded in a worker are counted under a generic reason), ``summary`` makes
the end-of-training line.
"""

from __future__ import annotations

from collections import Counter

WORKER_REASON = "unreadable or unusable (in a DataLoader worker)"


class SkipTally:
    def __init__(self, dataset, reasons: dict, log=print):
        self.dataset = dataset
        self.reasons = reasons  # reason -> count; the checkpointed dict, updated in place
        self.log = log
        self.seen: Counter = Counter()  # the dataset's counter at the last batch

    def attribute(self, dropped: int) -> None:
        """Add a batch's ``dropped`` utterances, by reason; the first of each reason is announced."""
        now = Counter(self.dataset.skipped)
        new, self.seen = now - self.seen, now
        if sum(new.values()) < dropped:
            new[WORKER_REASON] += dropped - sum(new.values())
        for reason, n in new.items():
            if reason not in self.reasons:
                where = self.dataset.first_skipped.get(reason, "a DataLoader worker")
                self.log(f"warning: skipping training utterances: {reason} (first at {where}); "
                         "all skips are counted and reported at the end")
            self.reasons[reason] = self.reasons.get(reason, 0) + n


def summary(total: int, reasons: dict) -> str:
    """``skipped training utterances: 3 (2 unreadable audio, 1 too short); …`` or ``…: none``."""
    if not total:
        return "skipped training utterances: none"
    parts = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items(), key=lambda x: -x[1]))
    return (f"skipped training utterances: {total} ({parts}); run `asrlib manifest check` on the training "
            "manifest to list them")
