"""The weight average (asrlib/ema.py) against the formula written out in float64.

    avg_0 = w_0;   avg_n = d_n * avg_(n-1) + (1 - d_n) * w_n,   d_n = min(decay, n / (9 + n))

(d_n is the decay of update n, n = 1, 2, …: 0.1 at the first, so the initial weights fade at once.)
The trainer-level tests (what is evaluated, shipped, checkpointed and resumed) are in
tests/test_train.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from asrlib.config import ConfigError, load_config
from asrlib.ema import WeightEMA


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.register_buffer("scale", torch.ones(2))  # a float buffer: averaged too
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # not a float: copied


def test_average_follows_the_formula_with_its_warm_up():
    torch.manual_seed(0)
    model = Tiny()
    decay = 0.8  # reached at update 36 of 50, so both branches of the min() are exercised
    ema = WeightEMA(model, decay)
    ref = {k: v.double().clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    for n in range(1, 51):
        with torch.no_grad():  # what an optimiser step and a buffer update would do
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen))
            model.scale.mul_(1.1)
            model.count += 1
        ema.update(model)
        d = min(decay, n / (9 + n))
        for k, v in model.state_dict().items():
            ref[k] = d * ref[k] + (1 - d) * v.double() if v.is_floating_point() else v.clone()
    assert ema.updates == 50
    got = ema.module.state_dict()
    for k in ref:
        if ref[k].is_floating_point():
            torch.testing.assert_close(got[k].double(), ref[k], rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(got[k], ref[k]), k
    assert int(got["count"]) == 50
    assert not torch.allclose(got["lin.weight"], model.lin.weight)  # an average, not a copy


def test_the_average_is_a_frozen_copy_in_eval_mode():
    model = Tiny().train()
    ema = WeightEMA(model, 0.99)
    assert not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    with torch.no_grad():
        model.lin.weight.add_(1.0)
    assert not torch.equal(ema.module.lin.weight, model.lin.weight)  # no shared storage


def test_state_dict_round_trip():
    torch.manual_seed(0)
    a = Tiny()
    ema = WeightEMA(a, 0.9)
    for _ in range(3):
        with torch.no_grad():
            a.lin.weight.add_(1.0)
        ema.update(a)
    other = WeightEMA(Tiny(), 0.9)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 3
    for k, v in ema.module.state_dict().items():
        assert torch.equal(other.module.state_dict()[k], v), k


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_config_rejects_a_decay_outside_0_1(decay):
    with pytest.raises(ConfigError, match=r"trainer.ema_decay.*0\.999"):
        load_config(None, [f"trainer.ema_decay={decay}"])
