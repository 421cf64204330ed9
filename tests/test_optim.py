"""AdamW parameter groups (what is exempt from weight decay) and the learning-rate schedules,
checked against a rule written from module types and names, and against the formulas."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from asrlib.config import OptimConfig, load_config
from asrlib.model.hybrid import build_model
from asrlib.model.norm import RMSNorm
from asrlib.optim import build_optimizer, build_scheduler, param_groups

NO_DECAY_NAMES = {"A_log", "D", "dt_bias"}  # Mamba2's SSM parameters


def tiny_model(mel_nonnegative: bool = False) -> nn.Module:
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.toml")
    cfg.model.vocab_size = 32
    cfg.model.frontend.mel_nonnegative = mel_nonnegative
    torch.manual_seed(0)
    return build_model(cfg.model)


def expected_no_decay(model: nn.Module) -> set[str]:
    """Biases, norm weights (LayerNorm / RMSNorm) and Mamba2's A_log, D, dt_bias."""
    out = set()
    for mname, module in model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if (pname.startswith("bias") or isinstance(module, (nn.LayerNorm, RMSNorm))
                    or pname in NO_DECAY_NAMES):
                out.add(full)
    return out


def test_no_weight_decay_on_biases_norms_and_mamba_params():
    model = tiny_model()
    groups = param_groups(model, OptimConfig(weight_decay=0.1))
    by_id = {id(p): n for n, p in model.named_parameters()}
    decay = {by_id[id(p)] for p in groups[0]["params"]}
    no_decay = {by_id[id(p)] for p in groups[1]["params"]}
    frontend = {by_id[id(p)] for p in groups[2]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0 and groups[2]["weight_decay"] == 0.0
    assert decay | no_decay | frontend == set(by_id.values())
    assert not decay & no_decay and not (decay | no_decay) & frontend
    assert frontend == {"frontend.mel.weight"}
    assert no_decay == expected_no_decay(model) - frontend
    assert any(n.endswith("mixer.A_log") for n in no_decay)  # the tiny preset has a Mamba2 block
    assert any(n.endswith("mixer.q_proj.weight") for n in decay)


def test_marked_parameter_is_exempt_even_when_2d():
    lin = nn.Linear(3, 4)
    lin.weight._no_weight_decay = True
    groups = param_groups(lin, OptimConfig(weight_decay=0.5))
    assert groups[0]["params"] == [] and len(groups[1]["params"]) == 2


def test_adamw_decays_only_the_decay_group():
    """With all gradients zero, one AdamW step only shrinks decayed weights: p *= 1 - lr * wd."""
    model = tiny_model()
    cfg = OptimConfig(lr=0.1, weight_decay=0.5)
    opt = build_optimizer(model, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    no_decay = expected_no_decay(model) | {"frontend.mel.weight"}
    for n, p in model.named_parameters():
        want = before[n] if n in no_decay else before[n] * (1 - 0.1 * 0.5)
        torch.testing.assert_close(p.detach(), want, rtol=1e-6, atol=1e-7, msg=n)


def test_mel_layer_learns_at_the_scaled_rate():
    """Adam's first step moves every weight with a nonzero gradient by exactly its group's lr."""
    model = tiny_model()
    cfg = OptimConfig(lr=0.01, weight_decay=0.0, frontend_lr_scale=0.05)
    opt = build_optimizer(model, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    for n, p in model.named_parameters():
        step = 0.01 * 0.05 if n.startswith("frontend.") else 0.01
        torch.testing.assert_close((before[n] - p.detach()), torch.full_like(p, step), rtol=1e-4, atol=0, msg=n)


def reference_lr(n: int, cfg: OptimConfig, max_steps: int) -> float:
    """Learning rate of the n-th optimiser update (1-based), straight from the docstring formulas."""
    if n < cfg.warmup_steps:
        return cfg.lr * n / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "noam":
        return cfg.lr * math.sqrt(cfg.warmup_steps / n)
    floor = cfg.lr * cfg.min_lr_ratio
    progress = min((n - cfg.warmup_steps) / (max_steps - cfg.warmup_steps), 1.0)
    return floor + (cfg.lr - floor) * (1 + math.cos(math.pi * progress)) / 2


def lrs(cfg: OptimConfig, max_steps: int, n_updates: int) -> list[float]:
    """The lr each of ``n_updates`` updates actually uses (read before opt.step)."""
    p = nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([p], lr=cfg.lr)
    sched = build_scheduler(opt, cfg, max_steps)
    out = []
    for _ in range(n_updates):
        out.append(opt.param_groups[0]["lr"])
        p.grad = torch.ones(2)
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("schedule", ["cosine", "noam", "constant"])
def test_schedule_matches_formula(schedule):
    cfg = OptimConfig(lr=1e-3, warmup_steps=10, schedule=schedule, min_lr_ratio=0.1)
    got = lrs(cfg, max_steps=50, n_updates=60)
    for n in range(1, 61):
        assert got[n - 1] == pytest.approx(reference_lr(n, cfg, 50), rel=1e-9, abs=1e-15), n


def test_schedule_known_values():
    cfg = OptimConfig(lr=1e-3, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    got = lrs(cfg, max_steps=50, n_updates=60)
    assert got[0] == pytest.approx(1e-4)  # first update: lr / warmup
    assert got[4] == pytest.approx(5e-4)  # half-way through warm-up
    assert got[9] == pytest.approx(1e-3)  # peak at the end of warm-up
    assert got[29] == pytest.approx((1e-3 + 1e-4) / 2)  # cosine midpoint: halfway to the floor
    assert got[49] == pytest.approx(1e-4) and got[59] == pytest.approx(1e-4)  # floor, held after max_steps
    noam = lrs(OptimConfig(lr=1e-3, warmup_steps=10, schedule="noam"), 100, 40)
    assert noam[9] == pytest.approx(1e-3) and noam[39] == pytest.approx(5e-4)  # sqrt(10 / 40) = 1/2


@pytest.mark.parametrize("mel_nonnegative", [False, True])
def test_adamw_steps_follow_the_formula(mel_nonnegative):
    """Five updates with random gradients equal AdamW written out by hand (decoupled weight decay,
    bias-corrected moments, eps outside the square root), group by group: whichever kernel
    ``build_optimizer`` picks (fused where the device has one) computes the same update.
    With ``mel_nonnegative`` the mel weights are then clamped at 0, and only they."""
    torch.manual_seed(0)
    model = tiny_model(mel_nonnegative)
    cfg = OptimConfig(lr=0.01, weight_decay=0.1, betas=[0.9, 0.98], frontend_lr_scale=0.5)
    opt = build_optimizer(model, cfg)
    b1, b2, eps = 0.9, 0.98, 1e-8
    ref = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    m = {n: torch.zeros_like(v) for n, v in ref.items()}
    v2 = {n: torch.zeros_like(v) for n, v in ref.items()}
    no_decay = expected_no_decay(model) | {"frontend.mel.weight"}
    for t in range(1, 6):
        grads = {n: torch.randn_like(p) for n, p in model.named_parameters()}
        for n, p in model.named_parameters():
            p.grad = grads[n].clone()
        opt.step()
        for n in ref:
            lr = cfg.lr * (0.5 if n.startswith("frontend.") else 1.0)
            wd = 0.0 if n in no_decay else cfg.weight_decay
            g = grads[n].double()
            ref[n] = ref[n] * (1 - lr * wd)
            m[n] = b1 * m[n] + (1 - b1) * g
            v2[n] = b2 * v2[n] + (1 - b2) * g * g
            m_hat, v_hat = m[n] / (1 - b1 ** t), v2[n] / (1 - b2 ** t)
            ref[n] = ref[n] - lr * m_hat / (v_hat.sqrt() + eps)
        negative = int((ref["frontend.mel.weight"] < 0).sum())
        assert negative > 0  # the unconstrained update pushes weights below 0: the clamp has work to do
        if mel_nonnegative:
            ref["frontend.mel.weight"] = ref["frontend.mel.weight"].clamp(min=0.0)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach().double(), ref[n], rtol=1e-5, atol=1e-6, msg=n)


def test_optimizer_is_fused_on_cpu():
    """On a CPU model the update runs PyTorch's fused kernel (one call for all tensors)."""
    opt = build_optimizer(tiny_model(), OptimConfig())
    assert opt.defaults["fused"] is True
