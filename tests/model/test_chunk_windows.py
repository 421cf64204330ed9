"""Chunk key windows and their mask against Python loops and against the dense chunk mask."""

import pytest
import torch

from asrlib.model.chunk_windows import chunk_windows, num_chunks, pad_time_to_chunks, window_key_mask
from asrlib.model.masks import chunk_mask, key_padding_mask

CASES = [(1, 1, 0), (7, 1, 2), (12, 4, 0), (13, 4, 2), (11, 5, 1), (3, 8, 2), (20, 3, 10)]


@pytest.mark.parametrize("T,chunk", [(1, 1), (8, 4), (9, 4), (3, 8)])
def test_num_chunks_and_padding(T, chunk):
    M = num_chunks(T, chunk)
    assert (M - 1) * chunk < T <= M * chunk
    x = torch.randn(2, 3, T, 5)  # (B, K, T, P)
    y = pad_time_to_chunks(x, chunk)
    assert y.shape == (2, 3, M * chunk, 5)
    assert torch.equal(y[:, :, :T], x) and not y[:, :, T:].any()


@pytest.mark.parametrize("T,chunk,left", CASES)
def test_chunk_windows_match_loop(T, chunk, left):
    B, K, P = 2, 3, 4
    x = torch.randn(B, K, T, P)
    w = chunk_windows(x, chunk, left)
    M, W = num_chunks(T, chunk), (left + 1) * chunk
    assert w.shape == (B, M, K, W, P)
    ref = torch.zeros(B, M, K, W, P)
    for m in range(M):
        for j in range(W):
            s = m * chunk - left * chunk + j  # absolute frame of slot j
            if 0 <= s < T:
                ref[:, m, :, j] = x[:, :, s]
    assert torch.equal(w, ref)


@pytest.mark.parametrize("T,chunk,left", CASES)
def test_window_key_mask_matches_loop(T, chunk, left):
    lengths = torch.tensor([T, T // 2, 0])
    got = window_key_mask(lengths, T, chunk, left)
    M, W, L = num_chunks(T, chunk), (left + 1) * chunk, left * chunk
    assert got.shape == (3, M, chunk, W) and got.dtype == torch.bool
    for b, n in enumerate(lengths.tolist()):
        for m in range(M):
            for i in range(chunk):
                for j in range(W):
                    s = m * chunk - L + j
                    assert bool(got[b, m, i, j]) == (0 <= s < n or j == L + i), (b, m, i, j)


@pytest.mark.parametrize("T,chunk,left", CASES)
def test_windows_cover_exactly_the_dense_mask(T, chunk, left):
    """Scattering each window's allowed slots back to (query, key) frames gives the dense
    chunk mask AND key padding mask, with the diagonal kept (the dense path's definition)."""
    lengths = torch.tensor([T, max(T - 3, 0)])
    L = left * chunk
    win = window_key_mask(lengths, T, chunk, left)  # (B, M, C, W)
    dense = (chunk_mask(T, chunk, left)[None] & key_padding_mask(lengths, T)[:, None, :]) | torch.eye(
        T, dtype=torch.bool
    )  # (B, T, T)
    scattered = torch.zeros_like(dense)
    B, M, C, W = win.shape
    for b in range(B):
        for m in range(M):
            for i in range(C):
                t = m * C + i
                for j in range(W):
                    s = m * C - L + j
                    if t < T and win[b, m, i, j]:
                        assert 0 <= s < T
                        scattered[b, t, s] = True
    assert torch.equal(scattered, dense)


def test_windows_are_differentiable():
    x = torch.randn(1, 2, 9, 3, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda x: chunk_windows(x, 4, 1), (x,))
