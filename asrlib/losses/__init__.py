"""Training losses: CTC, native memory-efficient RNN-T, and their hybrid.

    from asrlib.losses import ctc_loss, rnnt_loss, hybrid_loss, LossParts
"""

from asrlib.losses.ctc import ctc_loss, reduce_losses
from asrlib.losses.hybrid import LossParts, hybrid_loss
from asrlib.losses.rnnt import rnnt_loss, rnnt_loss_any, rnnt_loss_torchaudio

__all__ = ["ctc_loss", "reduce_losses", "rnnt_loss", "rnnt_loss_any", "rnnt_loss_torchaudio", "hybrid_loss", "LossParts"]
