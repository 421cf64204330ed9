"""Training losses: CTC, native memory-efficient RNN-T, pruned RNN-T, and their hybrid.

    from asrlib.losses import ctc_loss, rnnt_loss, pruned_rnnt_loss, hybrid_loss, LossParts
"""

from asrlib.losses.ctc import ctc_loss, reduce_losses
from asrlib.losses.hybrid import LossParts, hybrid_loss
from asrlib.losses.lattice import lattice_loss
from asrlib.losses.rnnt import rnnt_loss, rnnt_loss_any, rnnt_loss_torchaudio
from asrlib.losses.rnnt_pruned import pruned_rnnt_loss

__all__ = ["ctc_loss", "reduce_losses", "rnnt_loss", "rnnt_loss_any", "rnnt_loss_torchaudio", "pruned_rnnt_loss",
           "lattice_loss", "hybrid_loss", "LossParts"]
