"""Hybrid loss = (1 - w) * rnnt + w * ctc."""

import pytest
import torch

from asrlib.losses.hybrid import LossParts, hybrid_loss


@pytest.mark.parametrize("w", [0.0, 1.0, 0.3])
def test_mix(w):
    r = torch.tensor(2.0, requires_grad=True)
    c = torch.tensor(5.0, requires_grad=True)
    total = hybrid_loss(r, c, w)
    assert total.item() == pytest.approx((1 - w) * 2.0 + w * 5.0)
    total.backward()
    assert r.grad.item() == pytest.approx(1 - w) and c.grad.item() == pytest.approx(w)


def test_weight_out_of_range():
    with pytest.raises(ValueError, match="ctc_weight"):
        hybrid_loss(torch.tensor(1.0), torch.tensor(1.0), 1.5)


def test_loss_parts():
    parts = LossParts.combine((torch.tensor(2.0), 1), (torch.tensor(4.0), 2), 0.25)
    assert parts.total.item() == pytest.approx(0.75 * 2 + 0.25 * 4)
    assert (parts.rnnt.item(), parts.ctc.item(), parts.n_infeasible_rnnt, parts.n_infeasible_ctc) == (2.0, 4.0, 1, 2)


def tiny_cfg(*overrides):
    from asrlib.config import load_config

    return load_config(None, ["model.vocab_size=7", "model.encoder.n_blocks=1", "model.encoder.d_model=16",
                              "model.encoder.attention.n_heads=2", "model.prediction.hidden=8",
                              "model.prediction.embed_dim=8", "model.joint.hidden=8", *overrides])


def batch():
    g = torch.Generator().manual_seed(0)
    audio = 0.1 * torch.randn(2, 8000, generator=g)
    tokens = torch.randint(0, 7, (2, 3), generator=g)
    return audio, torch.tensor([8000, 6000]), tokens, torch.tensor([3, 2])


@pytest.mark.parametrize("step", [0, 500, None])
def test_hybrid_pruned_mixes_simple_and_pruned_with_warm_up(step):
    from asrlib.losses.hybrid import HybridLoss
    from asrlib.model.hybrid import build_model

    cfg = tiny_cfg("loss.rnnt=pruned", "model.joint.simple_projections=true", "loss.prune_warmup_steps=1000",
                   "loss.simple_loss_scale=0.5", "loss.prune_range=3")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    out = HybridLoss(model, cfg)(*batch(), step=step)
    s, p = {0: (1.0, 0.1), 500: (0.75, 0.55), None: (0.5, 1.0)}[step]
    assert out["simple_scale"].item() == pytest.approx(s) and out["pruned_scale"].item() == pytest.approx(p)
    rnnt = s * out["rnnt_simple"] + p * out["rnnt_pruned"]
    assert out["rnnt"].item() == pytest.approx(rnnt.item(), rel=1e-5)
    w = cfg.loss.ctc_weight
    assert out["loss"].item() == pytest.approx(((1 - w) * rnnt + w * out["ctc"]).item(), rel=1e-5)
    out["loss"].backward()
    assert model.simple.am_proj.weight.grad is not None and model.joint.out.weight.grad is not None
    assert all(torch.isfinite(q.grad).all() for q in model.parameters() if q.grad is not None)


def test_hybrid_pruned_without_projections_is_a_clear_error():
    from asrlib.losses.hybrid import HybridLoss
    from asrlib.model.hybrid import build_model

    cfg = tiny_cfg()
    model = build_model(cfg.model)
    cfg.loss.rnnt = "pruned"  # bypassing the config check
    with pytest.raises(ValueError, match="simple_projections"):
        HybridLoss(model, cfg)(*batch())
