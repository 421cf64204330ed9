"""The whole model on audio: causality, padding, output lengths, checkpoints, float64.

Every expectation here is derived independently of the code under test: sample/frame
arithmetic written out from the STFT and the subsampling receptive field, the same item run
on its own, a model rebuilt from a file, a float32 vs float64 run.

Sizes (tiny preset): hop 160, win 400 samples; subsampling factor 4; chunk_frames 16 frontend
frames = 4 encoder frames per attention chunk.
"""

from __future__ import annotations

import math

import pytest
import torch

from asrlib.checkpoint import atomic_save, export_weights, load_model
from asrlib.config import load_config, to_dict
from asrlib.model.hybrid import HybridASR, build_model

VOCAB = 16


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)  # (tests/conftest.py already runs torch on one thread)


def tiny_cfg(*overrides: str):
    cfg = load_config("configs/tiny.toml", list(overrides))
    cfg.model.vocab_size = VOCAB
    return cfg


def tiny_model(*overrides: str) -> HybridASR:
    return build_model(tiny_cfg(*overrides).model).eval()


def expected_encoder_frames(samples: int, win: int, hop: int, factor: int) -> int:
    """STFT center=False: (S - win) // hop + 1 frames (0 if S < win); each of the log2(factor)
    stride-2 stages keeps ceil(T / 2) frames, i.e. ceil(T / factor) overall."""
    frames = 0 if samples < win else (samples - win) // hop + 1
    for _ in range(int(math.log2(factor))):
        frames = math.ceil(frames / 2)
    return frames


# ----------------------------------------------------------------------------- causality


def test_encoder_is_causal_at_chunk_granularity_on_audio():
    """Changing audio from sample s on leaves exactly the chunks that never read it unchanged.

    Encoder frame j is in chunk j // chunk_size. Chunk c's last frontend frame is
    (c+1)*chunk_frames - 1, whose window ends (exclusive) at ((c+1)*chunk_frames - 1)*hop + win:
    if s is at or after that, chunk c must not change (the stated property). The exact
    boundary is a little earlier: encoder frame j reads frontend frames up to factor*j (left-
    padded stride-2 convs), so chunk c reads frontend frames up to (c+1)*chunk_frames - factor,
    i.e. samples < tight_end[c] = ((c+1)*chunk_frames - factor)*hop + win. Every frame of a
    chunk sees every other frame of it, so a chunk changes iff s < tight_end[c]. Tested on
    both sides of every boundary and at random s: the test fails for a leak AND for a model
    that ignores its input.
    """
    model = tiny_model()
    hop, win = model.frontend.hop_length, model.frontend.win_length
    factor, cf = model.encoder.factor, model.encoder.chunk_frames
    cs = cf // factor  # encoder frames per chunk
    n_chunks = 8
    S = (n_chunks * cf - 1) * hop + win  # exactly n_chunks * cf frontend frames
    stated_end = [((c + 1) * cf - 1) * hop + win for c in range(n_chunks)]
    tight_end = [((c + 1) * cf - factor) * hop + win for c in range(n_chunks)]
    assert all(t <= e for t, e in zip(tight_end, stated_end))

    gen = torch.Generator().manual_seed(1)
    audio = 0.1 * torch.randn(S, generator=gen)
    starts = [e + d for e in tight_end[:-1] for d in (-1, 0)]  # both sides of each boundary
    starts += [e for e in stated_end[:-1]]  # the stated (looser) boundaries
    starts += torch.randint(1, S, (6,), generator=gen).tolist()  # anywhere
    batch = [audio]
    for s in starts:
        changed = audio.clone()
        changed[s:] = 1000.0 * torch.randn(S - s, generator=gen)  # loud: even one sample shows
        batch.append(changed)
    x = torch.stack(batch)  # (1 + len(starts), S)
    with torch.no_grad():
        enc, enc_len = model(x, torch.full((x.shape[0],), S))
    assert enc.shape[1] == n_chunks * cs and int(enc_len[0]) == n_chunks * cs

    diff = (enc[1:] - enc[:1]).abs()  # (N, T', D)
    per_chunk = diff.reshape(len(starts), n_chunks, cs, -1).amax(dim=(2, 3))  # (N, chunks)
    for i, s in enumerate(starts):
        for c in range(n_chunks):
            if s >= stated_end[c]:
                assert per_chunk[i, c] <= 1e-6, f"s={s}: chunk {c} (ends {stated_end[c]}) changed"
            if s >= tight_end[c]:
                assert per_chunk[i, c] <= 1e-6, f"s={s}: chunk {c} (reads < {tight_end[c]}) changed"
            else:
                assert per_chunk[i, c] > 1e-5, f"s={s}: chunk {c} reads sample {s} but did not change"


# ----------------------------------------------------------------------------- padding


def test_padding_does_not_change_valid_outputs():
    """Each item alone == the same item padded with zeros / garbage in a batch with a longer one."""
    model = tiny_model()
    gen = torch.Generator().manual_seed(2)
    lengths = [9_000, 5_123, 14_321, 2_000]
    items = [0.1 * torch.randn(n, generator=gen) for n in lengths]
    S = max(lengths) + 3_000  # even the longest item is padded
    fills = ["zeros", "garbage", "zeros", "garbage"]
    padded = torch.zeros(len(items), S)
    for b, (a, fill) in enumerate(zip(items, fills)):
        padded[b, : len(a)] = a
        if fill == "garbage":
            padded[b, len(a) :] = 5.0 * torch.randn(S - len(a), generator=gen)
    with torch.no_grad():
        enc, enc_len = model(padded, torch.tensor(lengths))
        for b, a in enumerate(items):
            alone, alone_len = model(a[None], torch.tensor([len(a)]))
            n = int(alone_len[0])
            assert n == alone.shape[1] == int(enc_len[b])
            torch.testing.assert_close(enc[b, :n], alone[0], atol=1e-5, rtol=0)
    # control: garbage inside the valid region DOES change the output
    spoiled = padded.clone()
    spoiled[1, lengths[1] - 500 : lengths[1]] = 5.0
    with torch.no_grad():
        enc2, _ = model(spoiled, torch.tensor(lengths))
    n1 = int(enc_len[1])
    assert (enc2[1, :n1] - enc[1, :n1]).abs().max() > 1e-3


# ----------------------------------------------------------------------------- lengths


@pytest.mark.parametrize("factor", [4, 8])
def test_output_lengths_match_arithmetic_and_actual_outputs(factor):
    model = tiny_model(f"model.subsampling.factor={factor}", "model.encoder.chunk_frames=16")
    hop, win = model.frontend.hop_length, model.frontend.win_length
    assert (hop, win) == (160, 400)  # 10 ms / 25 ms at 16 kHz
    lengths = [400, 401, 559, 560, 561, 720, 1040, 1041, 1999, 2000, 4800, 8000, 12345, 16000]
    lengths += [win + k * hop for k in range(0, 40, 3)]
    want = torch.tensor([expected_encoder_frames(n, win, hop, factor) for n in lengths])
    assert torch.equal(model.output_lengths(torch.tensor(lengths)), want)
    with torch.no_grad():
        for n in lengths:  # each alone: the actual number of frames produced
            enc, enc_len = model(torch.randn(1, n), torch.tensor([n]))
            assert enc.shape[1] == int(enc_len[0]) == expected_encoder_frames(n, win, hop, factor), n
        # and batched with padding: lengths come out per item
        S = max(lengths)
        _, enc_len = model(torch.randn(len(lengths), S), torch.tensor(lengths))
        assert torch.equal(enc_len, want)


def test_output_lengths_shorter_than_one_window():
    """Audio shorter than one 25 ms window has 0 frames: in a batch and on its own."""
    model = tiny_model()
    short = [0, 1, 160, 399]
    assert model.output_lengths(torch.tensor(short)).tolist() == [0, 0, 0, 0]
    with torch.no_grad():
        enc, enc_len = model(torch.randn(len(short) + 1, 4000), torch.tensor(short + [4000]))
        assert enc_len.tolist() == [0, 0, 0, 0, expected_encoder_frames(4000, 400, 160, 4)]
        for n in short:  # a batch of only short items: empty output, not a crash
            enc, enc_len = model(torch.randn(1, n), torch.tensor([n]))
            assert enc.shape == (1, 0, model.encoder.d_model) and enc_len.tolist() == [0]


# ----------------------------------------------------------------------------- architecture


def test_every_third_block_is_mamba2_in_the_built_model():
    from asrlib.model.attention import GroupedQueryAttention
    from asrlib.model.mamba2 import Mamba2Mixer

    model = tiny_model("model.encoder.n_blocks=7")
    types = [type(b.mixer) for b in model.encoder.blocks]
    want = [Mamba2Mixer if i in (3, 6) else GroupedQueryAttention for i in range(1, 8)]  # 1-based
    assert types == want


# ----------------------------------------------------------------------------- checkpoints


def _outputs(model, audio, lengths):
    with torch.no_grad():
        enc, enc_len = model(audio, lengths)
        return enc, enc_len, model.ctc_head(enc)


def test_exported_folder_rebuilds_the_same_model(tmp_path):
    """config.json + model.safetensors alone rebuild the model: same config, same outputs."""
    cfg = tiny_cfg("model.encoder.n_blocks=4", "model.encoder.attention.n_kv_heads=1")
    model = build_model(cfg.model).eval()
    with torch.no_grad():  # move the norms/D off their init so the weights really travel
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    audio, lengths = torch.randn(2, 6000), torch.tensor([6000, 4100])
    ref = _outputs(model, audio, lengths)

    out = export_weights(model, tmp_path / "export", None)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    loaded, tok = load_model(out)
    assert tok is None and not loaded.training
    assert to_dict(loaded.cfg) == to_dict(model.cfg)
    assert len(loaded.encoder.blocks) == 4 and loaded.encoder.blocks[0].mixer.n_kv == 1
    for a, b in zip(ref, _outputs(loaded, audio, lengths)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    # control: a fresh model of the same config differs
    torch.manual_seed(123)
    other = build_model(tiny_cfg("model.encoder.n_blocks=4", "model.encoder.attention.n_kv_heads=1").model).eval()
    assert (_outputs(other, audio, lengths)[0] - ref[0]).abs().max() > 1e-3


def test_training_checkpoint_file_rebuilds_the_same_model(tmp_path):
    """A .pt with {config, model} (the trainer's layout) loads with weights_only and matches."""
    cfg = tiny_cfg()
    model = build_model(cfg.model).eval()
    path = atomic_save({"config": to_dict(cfg), "model": model.state_dict(), "step": 7}, tmp_path / "step-7.pt")
    loaded, tok = load_model(path)
    audio, lengths = torch.randn(1, 5000), torch.tensor([5000])
    for a, b in zip(_outputs(model, audio, lengths), _outputs(loaded, audio, lengths)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


# ----------------------------------------------------------------------------- float64


def test_float64_model_runs_and_agrees_with_float32():
    model = tiny_model()
    audio, lengths = 0.1 * torch.randn(2, 7000), torch.tensor([7000, 5000])
    with torch.no_grad():
        enc32, len32 = model(audio, lengths)
        model64 = model.double()
        enc64, len64 = model64(audio.double(), lengths)
    assert enc64.dtype == torch.float64 and torch.equal(len32, len64)
    n = int(len32[1])
    torch.testing.assert_close(enc64[:, :n].float(), enc32[:, :n], atol=2e-4, rtol=1e-4)
