"""CTC greedy and prefix beam search against hand-built tables and brute-force enumeration."""

import itertools
import math

import pytest
import torch

from asrlib.decoding import CTCGreedyDecoder, CTCGreedyOptions, CTCPrefixBeamDecoder, CTCPrefixBeamOptions

V = 3  # tokens a=0, b=1, c=2
BLANK = V


def table_from_path(path: list[int], p_best: float = 0.7) -> torch.Tensor:
    """(T, V + 1) log-probs whose per-frame argmax is ``path`` (prob p_best, the rest evenly)."""
    rest = (1.0 - p_best) / V
    probs = torch.full((len(path), V + 1), rest)
    probs[torch.arange(len(path)), torch.tensor(path)] = p_best
    return probs.log()


def collapse(path):
    """Reference CTC map: merge repeats, then drop blanks."""
    out = [k for i, k in enumerate(path) if i == 0 or k != path[i - 1]]
    return tuple(k for k in out if k != BLANK)


def greedy(lp, lengths, **kw):
    return CTCGreedyDecoder(CTCGreedyOptions(blank=BLANK)).decode(lp, lengths, **kw)


def beam(lp, lengths, beam_size, prune_top_k=0):
    opts = CTCPrefixBeamOptions(blank=BLANK, beam_size=beam_size, prune_top_k=prune_top_k)
    return CTCPrefixBeamDecoder(opts).decode(lp, lengths)


_ = BLANK
A, B_, C = 0, 1, 2


@pytest.mark.parametrize(
    "path, tokens, stamps",
    [
        ([A, _, A], [A, A], [0, 2]),  # blank separates a repeated token
        ([A, A, A], [A], [0]),  # repeats collapse; timestamp is the first frame
        ([_, A, A, _, A, B_, B_, _, _, C], [A, A, B_, C], [1, 4, 5, 9]),
        ([_, _, _], [], []),
    ],
)
def test_greedy_known_paths(path, tokens, stamps):
    lp = table_from_path(path)[None]  # (1, T, V + 1)
    (res,) = greedy(lp, torch.tensor([len(path)]), detokenize=lambda t: "".join("abc"[i] for i in t))
    assert res.tokens == tokens and res.timestamps == stamps
    assert res.text == "".join("abc"[i] for i in tokens)
    assert res.score == pytest.approx(len(path) * math.log(0.7), rel=1e-5)


def test_greedy_respects_lengths():
    path = [A, A, _, A, B_, _, C]
    lp = table_from_path(path)[None].repeat(2, 1, 1)  # (2, T, V + 1)
    full, short = greedy(lp, torch.tensor([7, 4]))
    assert full.tokens == [A, A, B_, C] and short.tokens == [A, A] and short.timestamps == [0, 3]
    assert short.text == ""


def test_prefix_beam_prefers_labelling_with_many_paths():
    # Two frames, p(a) = 0.4, p(blank) = 0.6. Greedy: "_ _" -> "" with 0.36. But "a" collects
    # "a a", "a _", "_ a" = 0.16 + 0.24 + 0.24 = 0.64.
    probs = torch.tensor([[0.4, 0.0, 0.0, 0.6]] * 2).clamp_min(1e-12)
    lp = probs.log()[None]  # (1, 2, V + 1)
    (g,) = greedy(lp, torch.tensor([2]))
    (b,) = beam(lp, torch.tensor([2]), beam_size=4)
    assert g.tokens == [] and g.score == pytest.approx(math.log(0.36), abs=1e-5)
    assert b.tokens == [A] and b.score == pytest.approx(math.log(0.64), abs=1e-5)
    assert b.timestamps[0] in (0, 1)


@pytest.mark.parametrize("seed", range(5))
def test_prefix_beam_exhaustive_equals_brute_force(seed):
    # With a beam larger than the number of prefixes the search is exact: compare with the
    # sum over all (V + 1) ** T paths, grouped by labelling.
    g = torch.Generator().manual_seed(seed)
    T = 5
    lp = torch.randn(T, V + 1, generator=g).log_softmax(-1)  # (T, V + 1)
    by_label: dict[tuple, float] = {}
    for path in itertools.product(range(V + 1), repeat=T):
        p = math.exp(sum(lp[t, k].item() for t, k in enumerate(path)))
        by_label[collapse(path)] = by_label.get(collapse(path), 0.0) + p
    best = max(by_label, key=by_label.get)
    (res,) = beam(lp[None], torch.tensor([T]), beam_size=1000)
    assert tuple(res.tokens) == best
    assert res.score == pytest.approx(math.log(by_label[best]), abs=1e-5)


def peaky_tables(seed, batch=3, T=30):
    """Random tables whose argmax holds ~99 % of each frame: best path ~ best labelling."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, V + 1, (batch, T), generator=g)
    labels[torch.rand(batch, T, generator=g) < 0.4] = BLANK  # blank-heavy, as in real CTC
    logits = torch.randn(batch, T, V + 1, generator=g)
    logits.scatter_(-1, labels[..., None], 9.0)
    return logits.log_softmax(-1)  # (B, T, V + 1)


@pytest.mark.parametrize("seed", range(6))
def test_prefix_beam_of_one_equals_greedy(seed):
    # On flat tables beam 1 may legitimately differ from greedy (it sums alignments: two
    # frames of p(blank)=0.3, p(a)=0.3, p(b)=0.4 after "a" keep "a" rather than "ab"), so this
    # is checked on peaky tables, as a trained CTC model produces.
    lp = peaky_tables(seed)
    lengths = torch.tensor([30, 17, 1])
    for g, b in zip(greedy(lp, lengths), beam(lp, lengths, beam_size=1, prune_top_k=2)):
        assert b.tokens == g.tokens and b.timestamps == g.timestamps
        assert b.score >= g.score - 1e-5  # labelling prob >= prob of one of its paths


def test_bad_inputs_are_explained():
    with pytest.raises(ValueError, match="shape"):
        greedy(torch.zeros(4, V + 1), torch.tensor([4]))
    with pytest.raises(ValueError, match="exceeds"):
        greedy(torch.zeros(1, 4, V + 1), torch.tensor([5]))
    with pytest.raises(ValueError, match="blank"):
        CTCGreedyDecoder(CTCGreedyOptions(blank=9)).decode(torch.zeros(1, 4, V + 1), torch.tensor([4]))


@pytest.mark.parametrize("seed", range(4))
def test_greedy_in_chunks_equals_the_collapsed_best_path(seed):
    """Random paths with long runs, cut into random chunks (a run may straddle a cut), rows at
    different frame offsets: tokens, first frames and scores equal the reference collapse."""
    g = torch.Generator().manual_seed(seed)
    B, T = 3, 23
    paths = [torch.randint(0, V + 1, (T // 2,), generator=g).repeat_interleave(2).tolist()[:T] for _ in range(B)]
    paths = [p + [BLANK] * (T - len(p)) for p in paths]
    lp = torch.stack([table_from_path(p) for p in paths])  # (B, T, V + 1)
    dec = CTCGreedyDecoder(CTCGreedyOptions(blank=BLANK))
    cuts = sorted(set(torch.randint(1, T, (4,), generator=g).tolist())) + [T]
    offsets = [0, 100, 7]  # each row's frame count before this call
    state, start = dec.init_state(B), 0
    for end in cuts:
        state = dec.decode_chunk(lp[:, start:end], state, [o + start for o in offsets])
        start = end
    for b, path in enumerate(paths):
        stamps = [t for t in range(T) if path[t] != BLANK and (t == 0 or path[t] != path[t - 1])]
        assert tuple(state.tokens[b]) == collapse(path)
        assert state.timestamps[b] == [offsets[b] + t for t in stamps]
        assert state.scores[b] == pytest.approx(T * math.log(0.7), rel=1e-5)


# ---------------------------------------------------------------- shallow fusion and streaming
from test_rnnt_decoding import V as RNNT_V  # noqa: E402
from test_rnnt_decoding import BigramLM  # noqa: E402  (a random bigram model over V tokens and </s>)

assert RNNT_V == V


def labelling_log_probs(lp: torch.Tensor) -> dict[tuple, float]:
    """log P(labelling) for every labelling of lp (T, V + 1), by summing over all (V + 1) ** T paths."""
    by_label: dict[tuple, float] = {}
    for path in itertools.product(range(V + 1), repeat=lp.shape[0]):
        p = math.exp(sum(lp[t, k].item() for t, k in enumerate(path)))
        by_label[collapse(path)] = by_label.get(collapse(path), 0.0) + p
    return {y: math.log(p) for y, p in by_label.items()}


def fused_beam(lp, lengths, beam_size, lm, weight, bonus, prune_top_k=0):
    opts = CTCPrefixBeamOptions(blank=BLANK, beam_size=beam_size, prune_top_k=prune_top_k, lm=lm,
                                lm_weight=weight, token_bonus=bonus)
    return CTCPrefixBeamDecoder(opts)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("weight, bonus", [(0.6, 0.0), (1.5, 0.8), (0.0, -0.5)])
def test_exhaustive_prefix_beam_with_a_language_model_equals_brute_force(seed, weight, bonus):
    """The best labelling by log P(labelling) + weight * LM log-prob (</s> included) + bonus per
    token, over every labelling (each summed over all its paths): the search finds it and
    reports that score."""
    g = torch.Generator().manual_seed(seed)
    T = 5
    lp = (2.0 * torch.randn(T, V + 1, generator=g)).log_softmax(-1)  # (T, V + 1)
    lm = BigramLM(seed + 10)
    fused = {y: s + lm.fused(list(y), weight, bonus) for y, s in labelling_log_probs(lp).items()}
    best = max(fused, key=fused.get)
    dec = fused_beam(lp, None, 10**6, lm if weight else None, weight, bonus)
    (res,) = dec.decode(lp[None], torch.tensor([T]))
    assert tuple(res.tokens) == best
    assert res.score == pytest.approx(fused[best], abs=1e-5)


def test_the_language_model_moves_the_best_labelling():
    """The cases above mean something: on these tables the fused best labelling is not the
    acoustic one (for most seeds)."""
    moved = 0
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        lp = (2.0 * torch.randn(5, V + 1, generator=g)).log_softmax(-1)
        lm = BigramLM(seed + 10)
        plain = labelling_log_probs(lp)
        fused = {y: s + lm.fused(list(y), 1.5, 0.8) for y, s in plain.items()}
        moved += max(fused, key=fused.get) != max(plain, key=plain.get)
    assert moved >= 2


@pytest.mark.parametrize("chunk", [1, 4, 13])
@pytest.mark.parametrize("with_lm", [False, True])
def test_prefix_beam_in_chunks_equals_whole(chunk, with_lm):
    """decode_chunk over pieces of the log-probs (each stream its own length) gives what one call
    on the whole gives: tokens, frames and score; and streams taken apart and put back (what
    the recogniser does with the streams that are ready) too."""
    g = torch.Generator().manual_seed(7)
    lp = (3.0 * torch.randn(3, 13, V + 1, generator=g)).log_softmax(-1)  # (B, T, V + 1)
    lengths = torch.tensor([13, 5, 10])
    dec = fused_beam(lp, lengths, 3, BigramLM(2) if with_lm else None, 0.8 if with_lm else 0.0,
                     0.3 if with_lm else 0.0, prune_top_k=3)
    whole = dec.decode(lp, lengths)
    assert sum(len(w.tokens) for w in whole) > 6
    state = dec.init_state(3)
    for t0 in range(0, 13, chunk):
        valid = (lengths - t0).clamp(0, min(chunk, 13 - t0))
        state = dec.decode_chunk(lp[:, t0 : t0 + chunk], state, frame_offset=t0, lengths=valid)
    for w, c in zip(whole, dec.results(state)):
        assert (c.tokens, c.timestamps) == (w.tokens, w.timestamps)
        assert c.score == pytest.approx(w.score, abs=1e-5)
    state = dec.init_state(3)
    sub = dec.decode_chunk(lp[[2, 0], :7], state.select([2, 0]), frame_offset=0, lengths=torch.tensor([7, 7]))
    state = dec.decode_chunk(lp[:, :5], state, frame_offset=0, lengths=torch.tensor([0, 5, 0]))
    state = state.scatter([2, 0], sub)
    state = dec.decode_chunk(lp[:, 7:], state, frame_offset=7, lengths=torch.tensor([6, 0, 3]))
    for w, c in zip(whole, dec.results(state)):
        assert (c.tokens, c.timestamps) == (w.tokens, w.timestamps)
        assert c.score == pytest.approx(w.score, abs=1e-5)


def test_prefix_beam_rejects_a_language_model_of_another_vocabulary():
    class Wide(BigramLM):
        vocab_size = V + 1

    with pytest.raises(ValueError, match="language model has 4 pieces and the model 3"):
        CTCPrefixBeamDecoder(CTCPrefixBeamOptions(blank=BLANK, lm=Wide(0), lm_weight=0.5))
