"""The hybrid objective: loss = (1 - w) * rnnt + w * ctc, and its parts for logging.

Both parts should use the same reduction (e.g. "mean_tokens") so that w means what it says.

Shapes: every loss here is a scalar () tensor (or matching (B,) tensors for "none").
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


def hybrid_loss(rnnt: Tensor, ctc: Tensor, ctc_weight: float) -> Tensor:
    """(1 - ctc_weight) * rnnt + ctc_weight * ctc; ctc_weight in [0, 1]."""
    if not 0.0 <= ctc_weight <= 1.0:
        raise ValueError(f"loss.ctc_weight = {ctc_weight}: expected a number in [0, 1] (0 = pure RNN-T, 1 = pure CTC)")
    return (1.0 - ctc_weight) * rnnt + ctc_weight * ctc


@dataclass
class LossParts:
    """One step's losses: ``total`` carries the gradient; the rest are for logging."""

    total: Tensor  # (1 - w) * rnnt + w * ctc
    rnnt: Tensor  # RNN-T loss (already reduced)
    ctc: Tensor  # CTC loss (already reduced)
    n_infeasible_rnnt: int = 0  # utterances whose RNN-T loss was infinite (no frames)
    n_infeasible_ctc: int = 0  # utterances with fewer frames than CTC needs

    @classmethod
    def combine(cls, rnnt: tuple[Tensor, int], ctc: tuple[Tensor, int], ctc_weight: float) -> "LossParts":
        """From the (loss, n_infeasible) pairs that rnnt_loss and ctc_loss return."""
        return cls(hybrid_loss(rnnt[0], ctc[0], ctc_weight), rnnt[0], ctc[0], rnnt[1], ctc[1])

    def log_dict(self) -> dict[str, float]:
        """Plain floats for TensorBoard / ClearML / the progress bar."""
        return {
            "loss": float(self.total.detach().sum()),
            "loss_rnnt": float(self.rnnt.detach().sum()),
            "loss_ctc": float(self.ctc.detach().sum()),
            "infeasible_rnnt": float(self.n_infeasible_rnnt),
            "infeasible_ctc": float(self.n_infeasible_ctc),
        }
