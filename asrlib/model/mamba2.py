"""The Mamba2 mixer: in_proj -> causal depthwise conv1d -> SSD scan -> gated RMSNorm -> out_proj.

    z, xBC, dt = split(in_proj(u))                  # gate, conv input, per-head step size
    xBC        = silu(causal_conv1d(xBC))            # kernel d_conv, left padding only
    x, B, C    = split(xBC)                          # x per head, B/C per group
    dt         = softplus(dt + dt_bias);  A = -exp(A_log)
    y          = SSD(x, dt, A, B, C) + D * x         # asrlib.model.ssd
    out        = out_proj(RMSNorm(y * silu(z)))

Every part is causal, so padding at the end of a batch item cannot reach its valid frames and
``forward`` needs no mask. Streaming keeps two things (``Mamba2Cache``): the last d_conv - 1
conv inputs, and the SSM state h (per head a P x N matrix, kept in float32). ``step`` takes a
chunk of any length: one frame is the plain recurrence, longer chunks reuse the chunked scan
started from the cached state.

Backends (``Mamba2Config.backend``): "torch" is the pure-PyTorch scan (CPU or GPU); "cuda"
uses ``mamba_ssm.mamba_chunk_scan_combined`` (needs the mamba-ssm package and CUDA tensors);
"auto" uses it when it is importable and the input is on a GPU, otherwise "torch" (on a GPU it
then warns once, naming why mamba-ssm could not be imported). The fused kernel only replaces
the scan in ``forward``; ``step`` always runs the PyTorch code. The backend is a runtime
choice, not a property of the weights: loaders rebuild saved models with "auto" (see
asrlib/checkpoint.py), so a model trained with "cuda" runs on a CPU.

Shapes: B batch, T time, D d_model, H heads, P head dim (headdim), G ngroups, N d_state,
E = expand * D = H * P (inner dim), Cv = E + 2 G N (conv channels), W = d_conv.
    forward(u (B, T, D), lengths (B,) | None)   -> (B, T, D)
    step(u (B, Tc, D), Mamba2Cache)             -> (B, Tc, D), Mamba2Cache
    Mamba2Cache: conv (B, Cv, W - 1), ssm (B, H, P, N)
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asrlib.config import Mamba2Config
from asrlib.model.conv import depthwise_step
from asrlib.model.norm import RMSNorm
from asrlib.model.ssd import ssd_chunked, ssd_one_chunk


@functools.lru_cache(maxsize=None)
def _import_mamba_ssm_scan():
    """(``mamba_chunk_scan_combined`` or None, why it is None: "" | the import error)."""
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception as e:  # ImportError, or a broken CUDA/triton install (OSError, RuntimeError, …)
        return None, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return mamba_chunk_scan_combined, ""


def _load_mamba_ssm_scan():
    """``mamba_chunk_scan_combined`` from mamba-ssm, or None when it cannot be imported."""
    return _import_mamba_ssm_scan()[0]


@functools.lru_cache(maxsize=None)
def _warn_fallback_once() -> str:
    """Warn (once per process) that "auto" on a GPU falls back to the slow scan, and why."""
    why = _import_mamba_ssm_scan()[1]
    msg = (f"mamba2 backend 'auto' on a GPU: cannot import mamba_ssm ({why}); using the pure-PyTorch SSD "
           "scan (correct, slower). Install or repair it (pip install 'asrlib[cuda]'), or set "
           "model.encoder.mamba2.backend = \"torch\" to silence this")
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
    return msg


@dataclass
class Mamba2Cache:
    """Streaming state of one Mamba2 mixer (batch first, fixed shapes).

    conv: (B, Cv, W - 1) the last W - 1 inputs of the causal conv (zeros = left padding).
    ssm:  (B, H, P, N)   the SSM state h, float32 (or float64 for a float64 module).
    """

    conv: Tensor
    ssm: Tensor


class Mamba2Mixer(nn.Module):
    def __init__(self, d_model: int, cfg: Mamba2Config):
        super().__init__()
        d_inner = cfg.expand * d_model
        if d_inner % cfg.headdim != 0:
            raise ValueError(
                f"mamba2: expand * d_model = {d_inner} is not a multiple of headdim = {cfg.headdim}; "
                "choose a headdim that divides it"
            )
        n_heads = d_inner // cfg.headdim
        if n_heads % cfg.ngroups != 0:
            raise ValueError(f"mamba2: ngroups = {cfg.ngroups} must divide the number of heads {n_heads}")
        if cfg.backend not in ("auto", "torch", "cuda"):
            raise ValueError(f"mamba2: backend must be 'auto', 'torch' or 'cuda', got {cfg.backend!r}")
        self.cfg = cfg
        # Resolved once here, not in forward: an import inside forward is a torch.compile graph break.
        self._fused_scan = None if cfg.backend == "torch" else _load_mamba_ssm_scan()
        self.d_model, self.d_inner, self.n_heads = d_model, d_inner, n_heads
        self.headdim, self.ngroups, self.d_state = cfg.headdim, cfg.ngroups, cfg.d_state
        self.conv_dim = d_inner + 2 * cfg.ngroups * cfg.d_state

        # Order of the projection: [z (E), xBC (Cv), dt (H)]
        self.in_proj = nn.Linear(d_model, d_inner + self.conv_dim + n_heads, bias=False)
        # depthwise, no built-in padding: forward pads on the left, step prepends the cache
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, cfg.d_conv, groups=self.conv_dim, bias=True)

        # dt_bias = softplus^-1(dt0) with dt0 log-uniform in [dt_min, dt_max], floored
        log_dt = torch.rand(n_heads) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min)
        dt0 = torch.exp(log_dt).clamp(min=cfg.dt_init_floor)  # (H,)
        self.dt_bias = nn.Parameter(dt0 + torch.log(-torch.expm1(-dt0)))  # inverse softplus
        a0 = torch.empty(n_heads).uniform_(cfg.a_init_min, cfg.a_init_max)  # (H,)
        self.A_log = nn.Parameter(torch.log(a0))
        self.D = nn.Parameter(torch.ones(n_heads))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True  # the trainer keeps these out of weight decay

        self.norm = RMSNorm(d_inner, eps=1e-5)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    # ------------------------------------------------------------------ shared pieces

    def _split_proj(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """u (B, T, D) -> z (B, T, E), xBC (B, T, Cv), dt_raw (B, T, H)."""
        zxbcdt = self.in_proj(u)  # (B, T, E + Cv + H)
        return torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.n_heads], dim=-1)

    def _ssm_inputs(self, xbc: Tensor, dt_raw: Tensor):
        """Post-conv xBC (B, T, Cv) and raw dt -> x (B,T,H,P), dt (B,T,H), A (H,), B, C (B,T,G,N)."""
        bsz, t, _ = xbc.shape
        gn = self.ngroups * self.d_state
        x, b, c = torch.split(xbc, [self.d_inner, gn, gn], dim=-1)
        x = x.reshape(bsz, t, self.n_heads, self.headdim)  # (B, T, H, P)
        b = b.reshape(bsz, t, self.ngroups, self.d_state)  # (B, T, G, N)
        c = c.reshape(bsz, t, self.ngroups, self.d_state)  # (B, T, G, N)
        cd = torch.promote_types(self.dt_bias.dtype, torch.float32)  # the scan runs in >= float32
        dt = F.softplus(dt_raw.to(cd) + self.dt_bias.to(cd))  # (B, T, H)
        A = -torch.exp(self.A_log.to(cd))  # (H,)
        return x, dt, A, b, c

    def _output(self, y: Tensor, x: Tensor, z: Tensor) -> Tensor:
        """SSD output y (B,T,H,P) + D skip, gate, norm, project -> (B, T, D)."""
        bsz, t = z.shape[:2]
        y = y + self.D.to(y.dtype)[:, None] * x.to(y.dtype)  # (B, T, H, P)
        y = y.reshape(bsz, t, self.d_inner).to(z.dtype)  # (B, T, E)
        return self.out_proj(self.norm(y * F.silu(z)))

    def _use_cuda_kernel(self, x: Tensor) -> bool:
        backend = self.cfg.backend
        if backend == "torch":
            return False
        available = self._fused_scan is not None
        if backend == "cuda":
            if not available:
                raise RuntimeError(
                    "mamba2 backend 'cuda' needs the mamba-ssm package (pip install 'asrlib[cuda]'); "
                    "set model.encoder.mamba2.backend = \"torch\" or \"auto\" to use the pure-PyTorch scan"
                )
            if not x.is_cuda:
                raise RuntimeError(
                    "mamba2 backend 'cuda' needs the model and input on a CUDA device; "
                    "use backend \"auto\" or \"torch\" on CPU"
                )
            return True
        if x.is_cuda and not available:  # "auto": say once why the fast path is off
            _warn_fallback_once()
        return available and x.is_cuda

    # ------------------------------------------------------------------ training path

    def forward(self, u: Tensor, lengths: Tensor | None = None) -> Tensor:
        """u (B, T, D) -> (B, T, D). ``lengths`` is accepted for the block contract; causality
        alone keeps end padding away from valid frames, so it is not needed."""
        bsz, t, _ = u.shape
        z, xbc, dt_raw = self._split_proj(u)
        xbc = F.pad(xbc.transpose(1, 2), (self.cfg.d_conv - 1, 0))  # (B, Cv, W - 1 + T)
        xbc = F.silu(self.conv1d(xbc)).transpose(1, 2)  # (B, T, Cv)
        x, dt, A, b, c = self._ssm_inputs(xbc, dt_raw)
        if self._use_cuda_kernel(u):
            y = self._fused_scan(x, dt, A, b, c, self.cfg.chunk_size).to(dt.dtype)  # (B, T, H, P)
        else:
            y, _ = ssd_chunked(x.to(dt.dtype), dt, A, b, c, self.cfg.chunk_size)  # (B, T, H, P)
        return self._output(y, x, z)

    # ------------------------------------------------------------------ streaming path

    def init_state(self, batch: int, device: torch.device | str = "cpu") -> Mamba2Cache:
        dtype = self.in_proj.weight.dtype
        ssm_dtype = torch.promote_types(dtype, torch.float32)
        return Mamba2Cache(
            conv=torch.zeros(batch, self.conv_dim, self.cfg.d_conv - 1, dtype=dtype, device=device),
            ssm=torch.zeros(batch, self.n_heads, self.headdim, self.d_state, dtype=ssm_dtype, device=device),
        )

    def step(self, u: Tensor, state: Mamba2Cache) -> tuple[Tensor, Mamba2Cache]:
        """u (B, Tc, D), any Tc >= 1 -> (B, Tc, D) and the state after the chunk."""
        tc = u.shape[1]
        z, xbc, dt_raw = self._split_proj(u)
        window = torch.cat([state.conv.to(xbc.dtype), xbc.transpose(1, 2)], dim=2)  # (B, Cv, W - 1 + Tc)
        new_conv = window[:, :, window.shape[2] - (self.cfg.d_conv - 1) :]  # (B, Cv, W - 1)
        xbc = F.silu(depthwise_step(self.conv1d, window)).transpose(1, 2)  # (B, Tc, Cv)
        x, dt, A, b, c = self._ssm_inputs(xbc, dt_raw)
        h = state.ssm.to(dt.dtype)  # (B, H, P, N)
        if tc <= self.cfg.chunk_size:  # a streaming chunk (a branch on a shape, not on tensor values)
            y, h = ssd_one_chunk(x.to(dt.dtype), dt, A, b, c, initial_state=h)  # (B, Tc, H, P)
        else:
            y, h = ssd_chunked(x.to(dt.dtype), dt, A, b, c, self.cfg.chunk_size, initial_state=h)
        new_state = Mamba2Cache(conv=new_conv.to(state.conv.dtype), ssm=h.to(state.ssm.dtype))
        return self._output(y, x, z), new_state
