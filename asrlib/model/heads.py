"""The two heads on one encoder: CTC, and RNN-T (prediction network + joint), and the
training-only simple projections of the pruned RNN-T loss.

Token ids are ``0 .. V-1`` (the SentencePiece pieces) and the blank is ``V``, for both heads,
so every output layer has ``V + 1`` units.

Shapes: B batch, T encoder frames, U target tokens, D encoder dim, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from asrlib.config import JointConfig, PredictionConfig
from asrlib.model.dropout import Dropout


class CTCHead(nn.Module):
    """Linear over the encoder output -> log-probabilities over V tokens + blank.

    forward: (B, T, D) -> (B, T, V + 1) log-probs (float32, whatever the input dtype).
    """

    def __init__(self, d_model: int, vocab_size: int):
        super().__init__()
        self.blank = vocab_size
        self.proj = nn.Linear(d_model, vocab_size + 1)

    def forward(self, enc: Tensor) -> Tensor:
        return self.proj(enc).float().log_softmax(dim=-1)


@dataclass
class PredictionState:
    """LSTM state of the prediction network, batch first: h, c (B, layers, hidden)."""

    h: Tensor
    c: Tensor


class PredictionNet(nn.Module):
    """Embedding + LSTM over the previous tokens; the blank id doubles as start symbol.

    forward: targets (B, U) -> (B, U + 1, hidden); output u has seen tokens < u.
    step:    tokens (B,) + state -> (B, hidden), state.
    """

    def __init__(self, vocab_size: int, cfg: PredictionConfig):
        super().__init__()
        self.blank = vocab_size
        self.cfg = cfg
        self.embed = nn.Embedding(vocab_size + 1, cfg.embed_dim)
        self.dropout = Dropout(cfg.dropout)
        self.lstm = nn.LSTM(cfg.embed_dim, cfg.hidden, num_layers=cfg.layers, batch_first=True)
        self.out_dim = cfg.hidden

    def init_state(self, batch: int, device: torch.device | str = "cpu") -> PredictionState:
        z = torch.zeros(batch, self.cfg.layers, self.cfg.hidden, device=device)
        return PredictionState(h=z, c=z.clone())

    def forward(self, targets: Tensor) -> Tensor:
        sos = torch.full_like(targets[:, :1], self.blank)
        tokens = torch.cat([sos, targets], dim=1)  # (B, U + 1)
        out, _ = self._lstm(self.dropout(self.embed(tokens)), None)
        return out  # (B, U + 1, hidden)

    def step(self, tokens: Tensor, state: PredictionState) -> tuple[Tensor, PredictionState]:
        x = self.embed(tokens).unsqueeze(1)  # (B, 1, E)
        hc = (state.h.transpose(0, 1).contiguous(), state.c.transpose(0, 1).contiguous())
        out, (h, c) = self._lstm(x, hc)  # h, c: (layers, B, hidden)
        return out[:, 0], PredictionState(h=h.transpose(0, 1), c=c.transpose(0, 1))

    def _lstm(self, x: Tensor, hc: tuple[Tensor, Tensor] | None):
        """The LSTM; on a CPU in float32 whatever autocast says. oneDNN has a bf16 LSTM only on
        CPUs with AVX-512 (on an AVX2 one, such as an AMD EPYC, it fails to build the primitive),
        and this small network costs little in float32. On a GPU autocast decides as usual."""
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return self.lstm(x.float(), None if hc is None else (hc[0].float(), hc[1].float()))
        return self.lstm(x, hc)


@dataclass
class StatelessState:
    """The last ``context - 1`` tokens the stateless prediction network has seen: (B, context - 1)."""

    history: Tensor


class StatelessPredictionNet(nn.Module):
    """Embedding + a causal convolution over the last ``context`` tokens; no recurrence.

    The prediction network of icefall's "stateless" transducers (Ghodsi et al. 2020): the output
    after token u sees only tokens u - context + 1 .. u, so it cannot learn whole spellings by heart
    the way an LSTM over the full history can, and one step costs an embedding lookup and a
    (context x E) convolution. Positions before the start are blanks (the start symbol), both in
    ``forward`` and in ``step``, so the two agree exactly.

    forward: targets (B, U) -> (B, U + 1, E); output u has seen tokens < u.
    step:    tokens (B,) + state -> (B, E), state.
    """

    def __init__(self, vocab_size: int, cfg: PredictionConfig):
        super().__init__()
        if cfg.context < 1:
            raise ValueError(f"model.prediction.context must be >= 1 for the stateless network, got {cfg.context}")
        if cfg.embed_dim % 4:
            raise ValueError(f"model.prediction.embed_dim must be a multiple of 4 for the stateless network, "
                             f"got {cfg.embed_dim}")
        self.blank = vocab_size
        self.context = cfg.context
        self.embed = nn.Embedding(vocab_size + 1, cfg.embed_dim)
        self.dropout = Dropout(cfg.dropout)
        # groups of 4 channels: each output channel mixes 4 embedding channels over the context
        self.conv = nn.Conv1d(cfg.embed_dim, cfg.embed_dim, kernel_size=cfg.context, groups=cfg.embed_dim // 4)
        self.out_dim = cfg.embed_dim

    def init_state(self, batch: int, device: torch.device | str = "cpu") -> StatelessState:
        return StatelessState(history=torch.full((batch, self.context - 1), self.blank, dtype=torch.long, device=device))

    def _convolve(self, tokens: Tensor) -> Tensor:
        """(B, L + context - 1) tokens -> (B, L, E): the convolution over each window of ``context``."""
        x = self.dropout(self.embed(tokens)).transpose(1, 2)  # (B, E, L + context - 1)
        return torch.relu(self.conv(x)).transpose(1, 2)

    def forward(self, targets: Tensor) -> Tensor:
        start = torch.full_like(targets[:, :1], self.blank).expand(-1, self.context)
        return self._convolve(torch.cat([start, targets], dim=1))  # (B, U + 1, E)

    def step(self, tokens: Tensor, state: StatelessState) -> tuple[Tensor, StatelessState]:
        window = torch.cat([state.history, tokens[:, None]], dim=1)  # (B, context)
        x = self.dropout(self.embed(window)).transpose(1, 2)  # (B, E, context)
        # one window, so the grouped convolution is a batched matmul: a conv call costs ~4x more here
        b, groups = x.shape[0], self.conv.groups
        per_group = self.conv.weight.shape[1] * self.context  # input channels of a group x taps
        w = self.conv.weight.reshape(groups, -1, per_group).transpose(1, 2)  # (G, per_group, E / G)
        y = x.reshape(b, groups, 1, per_group) @ w  # (B, G, 1, E / G)
        return torch.relu(y.reshape(b, -1) + self.conv.bias), StatelessState(history=window[:, 1:])


def build_prediction(vocab_size: int, cfg: PredictionConfig) -> PredictionNet | StatelessPredictionNet:
    """The prediction network ``model.prediction.kind`` names."""
    return {"lstm": PredictionNet, "stateless": StatelessPredictionNet}[cfg.kind](vocab_size, cfg)


class Joint(nn.Module):
    """RNN-T joint: act(W_e enc + W_p pred) -> Linear -> logits over V + 1.

    The two projections are separate methods so a loss can project once and combine slice
    by slice without ever holding the (B, T, U + 1, V + 1) tensor:

        e = joint.project_encoder(enc)      # (B, T, J)
        p = joint.project_prediction(pred)  # (B, U + 1, J)
        logits = joint.combine(e[:, t0:t1, None], p[:, None])  # (B, t1 - t0, U + 1, V + 1)
    """

    def __init__(self, d_enc: int, d_pred: int, vocab_size: int, cfg: JointConfig):
        super().__init__()
        self.blank = vocab_size
        self.enc_proj = nn.Linear(d_enc, cfg.hidden)
        self.pred_proj = nn.Linear(d_pred, cfg.hidden)
        self.act = {"tanh": nn.Tanh(), "relu": nn.ReLU(), "silu": nn.SiLU()}[cfg.activation]
        self.out = nn.Linear(cfg.hidden, vocab_size + 1)

    def project_encoder(self, enc: Tensor) -> Tensor:
        return self.enc_proj(enc)

    def project_prediction(self, pred: Tensor) -> Tensor:
        return self.pred_proj(pred)

    def combine(self, enc_proj: Tensor, pred_proj: Tensor) -> Tensor:
        """Broadcasting add of projected inputs -> logits (..., V + 1)."""
        return self.out(self.act(enc_proj + pred_proj))

    def forward(self, enc: Tensor, pred: Tensor) -> Tensor:
        """Full joint, for decoding and small tests: (B, T, D), (B, U+1, Dp) -> (B, T, U+1, V+1)."""
        return self.combine(self.project_encoder(enc)[:, :, None], self.project_prediction(pred)[:, None])


class SimpleProjections(nn.Module):
    """Training-only "simple joiner" of the pruned RNN-T loss (asrlib/losses/rnnt_pruned.py).

    Two linear maps to V + 1 logits whose sum ``am[t] + lm[u]`` is a trivial joint: cheap
    enough to score the whole lattice, it finds where the real joint must be evaluated.
    Built only when ``model.joint.simple_projections`` is true, saved with the model (so a
    checkpoint reloads), never used by decoding, streaming or the ONNX export.

    forward: enc (B, T, D), pred (B, U + 1, Dp) -> am (B, T, V + 1), lm (B, U + 1, V + 1).
    """

    def __init__(self, d_enc: int, d_pred: int, vocab_size: int):
        super().__init__()
        self.am_proj = nn.Linear(d_enc, vocab_size + 1)
        self.lm_proj = nn.Linear(d_pred, vocab_size + 1)

    def forward(self, enc: Tensor, pred: Tensor) -> tuple[Tensor, Tensor]:
        return self.am_proj(enc), self.lm_proj(pred)
