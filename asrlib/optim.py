"""AdamW with the right parameters exempt from weight decay, and the learning-rate schedule.

No weight decay on: biases, norm weights (any 1-D parameter) and Mamba2's A_log, D and dt_bias
(marked ``_no_weight_decay`` by the mixer).

The frontend's trainable mel layer is a group of its own, at ``lr * frontend_lr_scale`` and
without weight decay (shrinking a filter bank towards zero means nothing). At the full rate
(the default, 1.0) Adam moves each of its weights by about lr per step, including the ~97 %
that start at exactly zero outside each triangle: after 1400 demo steps the median filter had
57 % of its mass outside its band. Slowing it to 1 % kept the bank intact but made the demo
learn more slowly (dev WER 91 % instead of 64 % at step 350), so the rate stays a knob, not a
default.

Schedules (``step`` counts optimiser updates):

    warm-up:  lr * step / warmup                          for step < warmup
    cosine:   floor + (lr - floor) * (1 + cos(pi * progress)) / 2   to max_steps
    noam:     lr * sqrt(warmup / step)                    (inverse square root after warm-up)
    constant: lr
"""

from __future__ import annotations

import math

import torch
from torch import nn

from asrlib.config import OptimConfig


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    decay, no_decay, frontend = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("frontend."):
            frontend.append(p)
        elif p.ndim <= 1 or getattr(p, "_no_weight_decay", False):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if frontend:
        groups.append({"params": frontend, "weight_decay": 0.0, "lr": cfg.lr * cfg.frontend_lr_scale})
    return groups


FUSED_DEVICES = {"cpu", "cuda"}  # where PyTorch has a fused AdamW kernel


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over ``param_groups``; build it after the model is on its device.

    Where every parameter is a float tensor on a CPU or CUDA device, the update runs fused:
    the same AdamW formula for all parameters in one kernel instead of a Python loop of ~10
    small operations per tensor. For the 2.1 M-parameter AN4 model on one CPU thread that is
    ~5 ms instead of ~22 ms per step, about 6 % of a training step (``bench/optimizer_step.py``).

    With ``model.frontend.mel_nonnegative`` the mel weights are clamped at 0 after every step
    (a hook on the optimiser, so every caller of ``step`` gets it).
    """
    params = list(model.parameters())
    fused = bool(params) and all(p.device.type in FUSED_DEVICES and p.dtype.is_floating_point for p in params)
    opt = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=tuple(cfg.betas), fused=fused or None)
    frontend = getattr(model, "frontend", None)
    if frontend is not None and frontend.cfg.mel_nonnegative and frontend.mel.weight.requires_grad:
        opt.register_step_post_hook(lambda *_: frontend.project_())
    return opt


def lr_factor(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based)."""
    s = step + 1
    if cfg.warmup_steps > 0 and s < cfg.warmup_steps:
        return s / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "noam":
        return math.sqrt(max(cfg.warmup_steps, 1) / s)
    span = max(max_steps - cfg.warmup_steps, 1)
    progress = min(max(s - cfg.warmup_steps, 0) / span, 1.0)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(opt: torch.optim.Optimizer, cfg: OptimConfig, max_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, cfg, max_steps))
