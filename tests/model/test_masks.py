"""Masks against Python double loops (the definitions written out frame by frame)."""

import pytest
import torch

from asrlib.model.masks import chunk_mask, key_padding_mask, stream_key_mask


def chunk_mask_loop(T, chunk, left):
    m = torch.zeros(T, T, dtype=torch.bool)
    for t in range(T):
        for s in range(T):
            ct, cs = t // chunk, s // chunk
            m[t, s] = ct - left <= cs <= ct
    return m


@pytest.mark.parametrize(
    "T,chunk,left",
    [(1, 1, 0), (7, 1, 0), (7, 1, 2), (12, 4, 0), (12, 4, 1), (13, 4, 2), (11, 5, 1), (3, 8, 2), (20, 3, 10)],
)
def test_chunk_mask_matches_loop(T, chunk, left):
    m = chunk_mask(T, chunk, left)
    assert m.shape == (T, T) and m.dtype == torch.bool
    assert torch.equal(m, chunk_mask_loop(T, chunk, left))


def test_chunk_mask_known_values():
    # chunk 2, one chunk of left context, T = 5: chunks [0 1] [2 3] [4]
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0],
            [1, 1, 1, 1, 0],
            [0, 0, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(chunk_mask(5, 2, 1), expected)


def test_chunk_mask_rejects_bad_arguments():
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_mask(4, 0, 1)
    with pytest.raises(ValueError, match="left_chunks"):
        chunk_mask(4, 2, -1)


def test_key_padding_mask_matches_loop():
    lengths = torch.tensor([5, 0, 3, 7])
    m = key_padding_mask(lengths, 7)
    ref = torch.tensor([[t < int(n) for t in range(7)] for n in lengths])
    assert torch.equal(m, ref)


@pytest.mark.parametrize("chunk,left", [(4, 2), (3, 1), (5, 0)])
def test_stream_key_mask_is_the_chunk_mask_row(chunk, left):
    """A step at chunk c sees [cache ; chunk] = frames (c - left) * chunk .. c * chunk + Tc - 1;
    the valid part of that window must be exactly what the full chunk mask allows."""
    L = left * chunk
    T = 6 * chunk
    full = chunk_mask(T, chunk, left)
    pos = torch.arange(0, T, chunk)  # (n_chunks,) start of each chunk
    m = stream_key_mask(pos, L, chunk)  # (n_chunks, L + chunk)
    for i, p in enumerate(pos.tolist()):
        for j in range(L + chunk):
            s = p - L + j  # absolute key frame of slot j
            allowed = s >= 0 and bool(full[p, s])
            assert bool(m[i, j]) == allowed, (p, j)
