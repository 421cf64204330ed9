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
    assert parts.log_dict() == {
        "loss": pytest.approx(2.5), "loss_rnnt": 2.0, "loss_ctc": 4.0, "infeasible_rnnt": 1.0, "infeasible_ctc": 2.0,
    }
