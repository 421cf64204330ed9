"""Causal subsampling: lengths arithmetic, streaming == full, exact receptive field, padding."""

import pytest
import torch

from asrlib.config import SubsamplingConfig
from asrlib.model.subsampling import CausalSubsampling

M, D = 23, 16


def make(factor):
    torch.manual_seed(factor)
    return CausalSubsampling(M, D, SubsamplingConfig(factor=factor, channels=8)).double().eval()


@pytest.mark.parametrize("factor", [4, 8])
def test_output_lengths_arithmetic(factor):
    sub = make(factor)
    stages = {4: 2, 8: 3}[factor]
    ref = []
    for t in range(401):
        for _ in range(stages):
            t = -(-t // 2)  # ceil(t / 2)
        ref.append(t)
    assert sub.output_lengths(torch.arange(401)).tolist() == ref
    for t in (0, 1, 2, 5, factor, 37):  # forward produces that many frames
        y, yl = sub(torch.randn(2, t, M, dtype=torch.float64), torch.tensor([t, t]))
        assert y.shape == (2, ref[t], D) and yl.tolist() == [ref[t]] * 2


@pytest.mark.parametrize("factor", [4, 8])
@pytest.mark.parametrize("chunk", ["factor", "2factor", 16])
def test_step_equals_forward(factor, chunk):
    sub = make(factor)
    chunk = {"factor": factor, "2factor": 2 * factor}.get(chunk, chunk)
    t_total = 5 * 16 + 5  # ends with a partial chunk (the flush)
    x = torch.randn(2, t_total, M, dtype=torch.float64)
    full, _ = sub(x, torch.tensor([t_total] * 2))
    state, outs = sub.init_state(2), []
    shapes = [s.shape for s in state.stages]
    for s in range(0, t_total, chunk):
        y, state = sub.step(x[:, s : s + chunk], state)
        assert [c.shape for c in state.stages] == shapes
        outs.append(y)
    stream = torch.cat(outs, 1)
    assert stream.shape == full.shape
    assert (stream - full).abs().max() <= 1e-10 * full.abs().max()


def test_step_float32_and_empty_chunk():
    sub = CausalSubsampling(M, D, SubsamplingConfig(factor=4, channels=8))
    x = torch.randn(1, 24, M)
    full, _ = sub(x, torch.tensor([24]))
    state = sub.init_state(1)
    y0, state = sub.step(x[:, :0], state)
    assert y0.shape == (1, 0, D)
    y1, state = sub.step(x[:, :12], state)
    y2, _ = sub.step(x[:, 12:], state)
    assert (torch.cat([y0, y1, y2], 1) - full).abs().max() <= 1e-5 * full.abs().max()


@pytest.mark.parametrize("factor", [4, 8])
def test_exact_receptive_field(factor):
    """Output j depends on input t iff factor*j - 2*(factor-1) <= t <= factor*j.

    One stage: j reads 2j-2..2j. Two stages: 2(2j-2)-2..4j = 4j-6..4j; three: 8j-14..8j.
    """
    sub = make(factor)
    t_total = 6 * factor
    x = torch.randn(1, t_total, M, dtype=torch.float64)
    base, _ = sub(x, torch.tensor([t_total]))
    for t in range(t_total):
        x2 = x.clone()
        x2[0, t] += 1.0
        y, _ = sub(x2, torch.tensor([t_total]))
        changed = ((y - base).abs().amax(-1)[0] > 1e-12).tolist()
        expected = [factor * j - 2 * (factor - 1) <= t <= factor * j for j in range(base.shape[1])]
        assert changed == expected, f"input frame {t}"


def test_padded_batch_keeps_valid_outputs():
    sub = make(4)
    a, b = torch.randn(1, 50, M, dtype=torch.float64), torch.randn(1, 33, M, dtype=torch.float64)
    batch = torch.full((2, 50, M), 7.0, dtype=torch.float64)  # garbage padding
    batch[0], batch[1, :33] = a[0], b[0]
    y, yl = sub(batch, torch.tensor([50, 33]))
    yb, ybl = sub(b, torch.tensor([33]))
    assert yl[1] == ybl[0] == yb.shape[1]
    torch.testing.assert_close(y[1, : yl[1]], yb[0])


def test_bad_factor():
    with pytest.raises(ValueError, match="factor must be 4 or 8"):
        CausalSubsampling(M, D, SubsamplingConfig(factor=6))
