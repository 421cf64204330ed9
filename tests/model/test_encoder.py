"""The encoder stack: which mixer each block gets, GQA defaults, lengths, chunked streaming.

References: block layouts written out by hand, the stride-2 length arithmetic, and the
whole-sequence forward for the streaming step (fed the same features chunk by chunk).
"""

from __future__ import annotations

import math

import pytest
import torch

from asrlib.config import AttentionConfig, EncoderConfig, FrontendConfig, SubsamplingConfig, load_config
from asrlib.model.attention import GroupedQueryAttention
from asrlib.model.encoder import Encoder, mixer_kinds
from asrlib.model.mamba2 import Mamba2Mixer


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)  # (tests/conftest.py already runs torch on one thread)


def tiny_encoder(*overrides: str) -> Encoder:
    m = load_config("configs/tiny.toml", list(overrides)).model
    return Encoder(m.frontend, m.subsampling, m.encoder).eval()


# ----------------------------------------------------------------------------- layout


@pytest.mark.parametrize(
    "n_blocks, period, mamba_at",  # mamba_at: 1-based block numbers that must be Mamba2
    [(12, 3, {3, 6, 9, 12}), (6, 3, {3, 6}), (7, 3, {3, 6}), (2, 3, set()), (5, 2, {2, 4}), (4, 1, {1, 2, 3, 4}),
     (6, 0, set())],
)
def test_mixer_kinds(n_blocks, period, mamba_at):
    cfg = EncoderConfig(n_blocks=n_blocks, mamba_period=period)
    want = ["mamba2" if i in mamba_at else "gqa" for i in range(1, n_blocks + 1)]
    assert mixer_kinds(cfg) == want


@pytest.mark.parametrize("period", [3, 0])
def test_block_modules_follow_mixer_kinds(period):
    enc = tiny_encoder("model.encoder.n_blocks=6", f"model.encoder.mamba_period={period}")
    types = [type(b.mixer) for b in enc.blocks]
    if period == 3:
        assert types == [GroupedQueryAttention, GroupedQueryAttention, Mamba2Mixer] * 2
    else:  # mamba_period = 0: attention everywhere
        assert types == [GroupedQueryAttention] * 6
    assert [b.kind for b in enc.blocks] == ["mamba2" if t is Mamba2Mixer else "gqa" for t in types]


@pytest.mark.parametrize("n_heads, n_kv, want_kv", [(4, 0, 2), (8, 0, 4), (12, 0, 6), (2, 0, 1), (1, 0, 1), (8, 2, 2)])
def test_kv_heads_default_to_half_the_heads(n_heads, n_kv, want_kv):
    d = 48
    assert AttentionConfig(n_heads=n_heads, n_kv_heads=n_kv).kv_heads() == want_kv
    attn = GroupedQueryAttention(d, AttentionConfig(n_heads=n_heads, n_kv_heads=n_kv), chunk_size=4, left_chunks=1)
    P = d // n_heads
    assert attn.n_kv == want_kv
    assert attn.q_proj.weight.shape == (n_heads * P, d)
    assert attn.kv_proj.weight.shape == (2 * want_kv * P, d)  # fused k and v: K heads each


def test_tiny_preset_gqa_has_two_kv_heads():
    enc = tiny_encoder()
    gqa = [b.mixer for b in enc.blocks if isinstance(b.mixer, GroupedQueryAttention)]
    assert len(gqa) == 2 and all(m.n_heads == 4 and m.n_kv == 2 for m in gqa)


def test_chunk_frames_must_be_a_multiple_of_the_factor():
    with pytest.raises(ValueError, match="chunk_frames"):
        Encoder(FrontendConfig(), SubsamplingConfig(factor=4), EncoderConfig(chunk_frames=18))
    assert Encoder(FrontendConfig(n_mels=16), SubsamplingConfig(factor=8, channels=4),
                   EncoderConfig(d_model=32, n_blocks=1, chunk_frames=24)).chunk_size == 3


# ----------------------------------------------------------------------------- lengths


@pytest.mark.parametrize("factor", [4, 8])
def test_output_lengths_are_ceil_of_frames_over_factor(factor):
    enc = tiny_encoder(f"model.subsampling.factor={factor}")
    frames = list(range(0, 70))
    want = [math.ceil(t / factor) for t in frames]  # ceil(ceil(t/2)/2) == ceil(t/4), etc.
    assert enc.output_lengths(torch.tensor(frames)).tolist() == want
    with torch.no_grad():
        for t in range(1, 40):
            y, lens = enc(torch.randn(1, t, 40), torch.tensor([t]))
            assert y.shape[1] == int(lens[0]) == math.ceil(t / factor)


# ----------------------------------------------------------------------------- streaming


def _stream(enc: Encoder, feats: torch.Tensor, piece: int) -> torch.Tensor:
    """Feed ``feats`` in pieces of ``piece`` frontend frames (the last may be shorter)."""
    state = enc.init_state(feats.shape[0])
    outs = []
    for start in range(0, feats.shape[1], piece):
        y, state = enc.step(feats[:, start : start + piece], state)
        outs.append(y)
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("extra", [0, 1, 5, 15])  # frames past the last whole chunk: the flush
def test_step_by_chunks_equals_forward(extra):
    """Whole-sequence forward == concatenated steps of chunk_frames features (+ a final flush)."""
    enc = tiny_encoder()
    cf = enc.chunk_frames
    T = 5 * cf + extra  # 5 chunks: more than left_chunks + 1, so the attention cache rolls over
    feats = torch.randn(2, T, 40)
    with torch.no_grad():
        full, lens = enc(feats, torch.tensor([T, T]))
        streamed = _stream(enc, feats, cf)
    assert streamed.shape == full.shape and int(lens[0]) == full.shape[1] == math.ceil(T / enc.factor)
    torch.testing.assert_close(streamed, full, atol=2e-5, rtol=1e-5)


def test_step_with_misaligned_chunks_differs():
    """Control for the test above: steps that straddle chunk boundaries do NOT reproduce the
    chunk-masked forward (so the comparison can fail)."""
    enc = tiny_encoder()
    cf = enc.chunk_frames
    T = 4 * cf
    feats = torch.randn(1, T, 40)
    with torch.no_grad():
        full, _ = enc(feats, torch.tensor([T]))
        state = enc.init_state(1)
        first, state = enc.step(feats[:, : cf // 2], state)  # half a chunk, then whole chunks
    assert (first - full[:, : first.shape[1]]).abs().max() > 1e-4


# ----------------------------------------------------------------------------- input scale


@pytest.mark.parametrize("scale, want", [(0.0, None), (1.0, 1.0), (3.5, 3.5)])
def test_blocks_receive_the_subsampling_output_times_input_scale(scale, want):
    """Default (0) is sqrt(d_model); the first block sees exactly scale x subsampling output."""
    enc = tiny_encoder(f"model.encoder.input_scale={scale}")
    want = math.sqrt(enc.d_model) if want is None else want
    feats, lengths = torch.randn(2, 40, enc.subsampling.stage_inputs[0][1]), torch.tensor([40, 27])
    seen = {}
    enc.blocks[0].register_forward_pre_hook(lambda mod, args: seen.update(x=args[0]))
    with torch.no_grad():
        enc(feats, lengths)
        sub, _ = enc.subsampling(feats, lengths)
    torch.testing.assert_close(seen["x"], want * sub)
