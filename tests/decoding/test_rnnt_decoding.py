"""RNN-T greedy and beam search: an oracle fake model, slow loops, brute force."""

import math
from dataclasses import dataclass

import pytest
import torch

from asrlib.config import JointConfig, PredictionConfig
from asrlib.decoding import RNNTBeamDecoder, RNNTBeamOptions, RNNTGreedyDecoder, RNNTGreedyOptions
from asrlib.model.heads import Joint, PredictionNet

V = 3
BLANK = V


# ---------------------------------------------------------------- an oracle with known emissions
@dataclass
class CountState:
    n: torch.Tensor  # (B, 1) tokens fed so far (the start blank does not count)


class CountingPredNet:
    """Output = number of real tokens seen so far."""

    def init_state(self, batch, device="cpu"):
        return CountState(torch.zeros(batch, 1))

    def step(self, tokens, state):
        n = state.n + (tokens != BLANK).float()[:, None]  # (B, 1)
        return n, CountState(n)


class IdentityProjections:
    """Fake joints whose encoder and prediction projections pass their input through."""

    def project_encoder(self, enc):
        return enc

    def project_prediction(self, out):
        return out


class ScriptJoint(IdentityProjections):
    """Encoder frame t carries c[t], the tokens due by the end of frame t. While u < c[t] the
    joint strongly prefers script[u], otherwise blank (logit 10 against 0 for the rest)."""

    def __init__(self, script):
        self.script = torch.tensor(script)

    def combine(self, e, p):
        due, u = torch.broadcast_tensors(e[..., 0], p[..., 0])
        u = u.long()
        target = torch.where(due > u, self.script[u.clamp(max=len(self.script) - 1)], BLANK)
        return 10.0 * torch.nn.functional.one_hot(target, V + 1).float()


LOG_P_PICK = 10.0 - math.log(math.exp(10.0) + V)  # log-prob of the favoured symbol


@pytest.mark.parametrize(
    "due, cap, stamps, n_blanks",
    [
        ([0, 1, 1, 3, 3, 5], 5, [1, 3, 3, 5, 5], 6),  # every frame closes with a blank
        ([0, 4, 4, 5, 5], 2, [1, 1, 2, 2, 3], 3),  # frames 1, 2 hit the cap: no blank there
        ([5], 1, [0], 0),  # one frame, cap 1: only the first token fits
    ],
)
def test_greedy_follows_the_oracle(due, cap, stamps, n_blanks):
    script = [2, 0, 1, 1, 2]
    enc = torch.tensor(due, dtype=torch.float)[None, :, None]  # (1, T, 1)
    dec = RNNTGreedyDecoder(RNNTGreedyOptions(blank=BLANK, max_symbols_per_frame=cap))
    (res,) = dec.decode(CountingPredNet(), ScriptJoint(script), enc, torch.tensor([len(due)]), detokenize=str)
    assert res.tokens == script[: len(stamps)] and res.timestamps == stamps
    assert res.text == str(res.tokens)
    assert res.score == pytest.approx((len(stamps) + n_blanks) * LOG_P_PICK, abs=1e-5)


# ---------------------------------------------------------------- random small real models
def small_model(seed, d_enc=10):
    torch.manual_seed(seed)
    pred = PredictionNet(V, PredictionConfig(embed_dim=8, hidden=12, layers=2, dropout=0.0)).eval()
    joint = Joint(d_enc, 12, V, JointConfig(hidden=16)).eval()
    with torch.no_grad():  # make the token history matter, so frames emit 0 .. cap tokens
        pred.embed.weight *= 4.0
        joint.pred_proj.weight *= 3.0
        joint.enc_proj.weight *= 0.3
    enc = 2.0 * torch.randn(3, 13, d_enc)  # (B, T, De)
    return pred, joint, enc


def slow_greedy(pred, joint, enc, length, cap):
    """Reference: one utterance, full joint on (1, 1, 1, V+1) at a time."""
    state = pred.init_state(1)
    out, state = pred.step(torch.tensor([BLANK]), state)
    tokens, stamps, score = [], [], 0.0
    for t in range(length):
        for _ in range(cap):
            logp = joint(enc[None, t : t + 1], out[:, None]).log_softmax(-1)[0, 0, 0]  # (V + 1,)
            k = int(logp.argmax())
            score += float(logp[k])
            if k == BLANK:
                break
            tokens.append(k)
            stamps.append(t)
            out, state = pred.step(torch.tensor([k]), state)
    return tokens, stamps, score


@pytest.mark.parametrize("seed, cap, lookahead", [(0, 5, 8), (1, 2, 3), (2, 1, 1), (0, 3, 13), (1, 1, 20)])
def test_batched_greedy_equals_slow_loop_on_ragged_batch(seed, cap, lookahead):
    """Any look-ahead window (one frame, windows that split the utterances, one window for all)."""
    pred, joint, enc = small_model(seed)
    lengths = torch.tensor([13, 6, 9])
    dec = RNNTGreedyDecoder(RNNTGreedyOptions(blank=BLANK, max_symbols_per_frame=cap, lookahead_frames=lookahead))
    results = dec.decode(pred, joint, enc, lengths)
    for b, res in enumerate(results):
        with torch.no_grad():
            tokens, stamps, score = slow_greedy(pred, joint, enc[b], int(lengths[b]), cap)
        assert res.tokens == tokens and res.timestamps == stamps
        assert res.score == pytest.approx(score, abs=1e-4)
        assert max([stamps.count(t) for t in set(stamps)], default=0) <= cap
    per_frame = [r.timestamps.count(t) for r in results for t in range(13)]
    assert 0 in per_frame and max(per_frame) > 0  # the test exercises blanks and emissions


def decode_in_chunks(dec, pred, joint, enc, lengths, chunk):
    """dec's results after feeding enc (B, T, De) ``chunk`` frames at a time, as streaming does."""
    state = dec.init_state(enc.shape[0], pred)
    for t0 in range(0, enc.shape[1], chunk):
        piece = enc[:, t0 : t0 + chunk]  # (B, chunk, De)
        valid = (lengths - t0).clamp(0, piece.shape[1])  # (B,)
        state = dec.decode_chunk(pred, joint, piece, state, frame_offset=t0, lengths=valid)
    return dec.results(state)


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_greedy_in_chunks_equals_whole(chunk):
    pred, joint, enc = small_model(3)
    lengths = torch.tensor([13, 5, 10])
    dec = RNNTGreedyDecoder(RNNTGreedyOptions(blank=BLANK, max_symbols_per_frame=3))
    whole = dec.decode(pred, joint, enc, lengths)
    for w, c in zip(whole, decode_in_chunks(dec, pred, joint, enc, lengths, chunk)):
        assert (c.tokens, c.timestamps) == (w.tokens, w.timestamps)
        assert c.score == pytest.approx(w.score, abs=1e-5)


# ---------------------------------------------------------------- beam search (one symbol per frame, then several)
def path_score(pred, joint, enc, tokens, stamps, cap=1):
    """Log-prob of the path given by tokens and their frames: a frame's tokens in order, then
    its blank, unless it emitted ``cap`` tokens (the cap closes it with nothing added)."""
    out, state = pred.step(torch.tensor([BLANK]), pred.init_state(1))
    assert list(stamps) == sorted(stamps)
    score, i = 0.0, 0
    for t in range(enc.shape[0]):
        on_frame = 0
        while True:
            logp = joint(enc[None, t : t + 1], out[:, None]).log_softmax(-1)[0, 0, 0]  # (V + 1,)
            if i < len(tokens) and stamps[i] == t:
                score += float(logp[tokens[i]])
                out, state = pred.step(torch.tensor([tokens[i]]), state)
                i, on_frame = i + 1, on_frame + 1
                if on_frame == cap:
                    break
            else:
                score += float(logp[BLANK])
                break
    assert i == len(tokens), "every token on a frame of the utterance, at most cap per frame"
    return score


def beam_decode(pred, joint, enc, lengths, beam_size, cap=1):
    opts = RNNTBeamOptions(blank=BLANK, beam_size=beam_size, max_symbols_per_frame=cap)
    return RNNTBeamDecoder(opts).decode(pred, joint, enc, lengths)


@pytest.mark.parametrize("seed", range(4))
def test_beam_of_one_equals_greedy_with_one_symbol_per_frame(seed):
    pred, joint, enc = small_model(seed)
    lengths = torch.tensor([13, 7, 1])
    greedy = RNNTGreedyDecoder(RNNTGreedyOptions(blank=BLANK, max_symbols_per_frame=1))
    for g, b in zip(greedy.decode(pred, joint, enc, lengths), beam_decode(pred, joint, enc, lengths, 1)):
        assert (b.tokens, b.timestamps) == (g.tokens, g.timestamps)
        assert b.score == pytest.approx(g.score, abs=1e-5)


def all_paths(pred, joint, enc, t=0, out=None, state=None):
    """Brute force: every one-symbol-per-frame path from frame t, as (score, tokens)."""
    if out is None:
        out, state = pred.step(torch.tensor([BLANK]), pred.init_state(1))
    if t == enc.shape[0]:
        return [(0.0, ())]
    logp = joint(enc[None, t : t + 1], out[:, None]).log_softmax(-1)[0, 0, 0]  # (V + 1,)
    paths = [(float(logp[BLANK]) + s, toks) for s, toks in all_paths(pred, joint, enc, t + 1, out, state)]
    for k in range(V):
        out_k, state_k = pred.step(torch.tensor([k]), state)
        rest = all_paths(pred, joint, enc, t + 1, out_k, state_k)
        paths += [(float(logp[k]) + s, (k,) + toks) for s, toks in rest]
    return paths


@pytest.mark.parametrize("seed", range(3))
def test_exhaustive_beam_equals_brute_force(seed):
    pred, joint, enc = small_model(seed)
    T = 4
    enc = enc[:1, :T]  # (1, T, De)
    with torch.no_grad():
        paths = all_paths(pred, joint, enc[0])
    assert len(paths) == (V + 1) ** T
    best_score, best_tokens = max(paths)
    (res,) = beam_decode(pred, joint, enc, torch.tensor([T]), beam_size=(V + 1) ** T)
    assert tuple(res.tokens) == best_tokens
    assert res.score == pytest.approx(best_score, abs=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_beam_scores_its_path_and_beats_greedy(seed):
    pred, joint, enc = small_model(seed)
    lengths = torch.tensor([13, 11, 4])
    greedy = RNNTGreedyDecoder(RNNTGreedyOptions(blank=BLANK, max_symbols_per_frame=1))
    beams = beam_decode(pred, joint, enc, lengths, 4)
    for b, (g, r) in enumerate(zip(greedy.decode(pred, joint, enc, lengths), beams)):
        with torch.no_grad():
            recomputed = path_score(pred, joint, enc[b, : int(lengths[b])], r.tokens, r.timestamps)
        assert r.score == pytest.approx(recomputed, abs=1e-4)
        assert r.score >= g.score - 1e-5


def all_paths_capped(pred, joint, enc, cap, t=0, on_frame=0, out=None, state=None):
    """Brute force: every path with at most ``cap`` tokens per frame, as (score, tokens)."""
    if out is None:
        out, state = pred.step(torch.tensor([BLANK]), pred.init_state(1))
    if t == enc.shape[0]:
        return [(0.0, ())]
    logp = joint(enc[None, t : t + 1], out[:, None]).log_softmax(-1)[0, 0, 0]  # (V + 1,)
    after_blank = all_paths_capped(pred, joint, enc, cap, t + 1, 0, out, state)
    paths = [(float(logp[BLANK]) + s, toks) for s, toks in after_blank]
    for k in range(V):
        out_k, state_k = pred.step(torch.tensor([k]), state)
        nxt = (t + 1, 0) if on_frame + 1 == cap else (t, on_frame + 1)  # the cap closes the frame
        rest = all_paths_capped(pred, joint, enc, cap, *nxt, out_k, state_k)
        paths += [(float(logp[k]) + s, (k,) + toks) for s, toks in rest]
    return paths


class TableJoint(IdentityProjections):
    """Logits from a random table indexed by frame t (carried in enc[..., 0]) and the number of
    tokens so far u (CountingPredNet's output): blank and tokens compete differently at every
    (t, u), so the best path mixes frames of 0, 1, 2 ... cap tokens."""

    def __init__(self, seed, T, cap):
        g = torch.Generator().manual_seed(seed)
        self.table = 3.0 * torch.randn(T, T * cap + 1, V + 1, generator=g)  # (T, U, V + 1)

    def combine(self, e, p):
        t, u = torch.broadcast_tensors(e[..., 0], p[..., 0])
        return self.table[t.long(), u.long()]

    def __call__(self, enc, out):  # (B, T, 1), (B, U, 1) -> (B, T, U, V + 1), as Joint.forward
        return self.combine(enc[:, :, None], out[:, None])


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("cap", [2, 3])
@pytest.mark.parametrize("model", ["nets", "table"])
def test_exhaustive_beam_with_several_symbols_per_frame_equals_brute_force(seed, cap, model):
    T = {2: 3, 3: 2}[cap]  # 13**3 and 40**2 paths
    if model == "nets":
        pred, joint, enc = small_model(seed)
        enc = enc[:1, :T]  # (1, T, De)
    else:
        pred, joint = CountingPredNet(), TableJoint(seed, T, cap)
        enc = torch.arange(T, dtype=torch.float)[None, :, None]  # (1, T, 1): the frame index
    with torch.no_grad():
        paths = all_paths_capped(pred, joint, enc[0], cap)
    per_frame = sum(V**j for j in range(cap + 1))  # blank after 0 .. cap - 1 tokens, or cap tokens
    assert len(paths) == per_frame**T
    best_score, best_tokens = max(paths)
    (res,) = beam_decode(pred, joint, enc, torch.tensor([T]), beam_size=10**6, cap=cap)
    assert tuple(res.tokens) == best_tokens
    assert res.score == pytest.approx(best_score, abs=1e-5)
    with torch.no_grad():
        assert res.score == pytest.approx(path_score(pred, joint, enc[0], res.tokens, res.timestamps, cap), abs=1e-5)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("model", ["nets", "table"])
def test_beam_with_several_symbols_per_frame_scores_its_path(seed, model):
    cap = 3
    if model == "nets":
        pred, joint, enc = small_model(seed)
    else:
        pred, joint = CountingPredNet(), TableJoint(seed, 13, cap)
        enc = torch.arange(13, dtype=torch.float)[None, :, None].expand(3, 13, 1)  # (B, T, 1)
    lengths = torch.tensor([13, 11, 4])
    for b, r in enumerate(beam_decode(pred, joint, enc, lengths, 4, cap=cap)):
        assert all(r.timestamps.count(t) <= cap for t in r.timestamps)
        with torch.no_grad():
            recomputed = path_score(pred, joint, enc[b, : int(lengths[b])], r.tokens, r.timestamps, cap)
        assert r.score == pytest.approx(recomputed, abs=1e-4)


def test_beam_emits_several_tokens_on_one_frame_where_the_script_needs_them():
    # the oracle: 3 tokens due by frame 1 and 2 more by frame 3, on 4 frames; with one symbol
    # per frame the search cannot emit them all, with 3 it emits them where they are due
    joint, pred = ScriptJoint([0, 1, 2, 1, 0]), CountingPredNet()
    enc = torch.tensor([[[1.0], [3.0], [3.0], [5.0]]])  # (1, T, 1): c[t] per frame
    opts = RNNTBeamOptions(blank=BLANK, beam_size=3, max_symbols_per_frame=3)
    (res,) = RNNTBeamDecoder(opts).decode(pred, joint, enc, torch.tensor([4]))
    assert res.tokens == [0, 1, 2, 1, 0]
    assert res.timestamps == [0, 1, 1, 3, 3]
    (one,) = RNNTBeamDecoder(RNNTBeamOptions(blank=BLANK, beam_size=3, max_symbols_per_frame=1)).decode(
        pred, joint, enc, torch.tensor([4]))
    assert len(one.tokens) == 4  # one per frame at most: a token is lost


def test_beam_rejects_a_cap_below_one():
    with pytest.raises(ValueError, match="max_symbols_per_frame"):
        RNNTBeamDecoder(RNNTBeamOptions(blank=BLANK, max_symbols_per_frame=0))


# ---------------------------------------------------------------- shallow fusion with a language model
class BigramLM:
    """A random bigram model over the V tokens and </s> (= V), the interface RNNTBeamDecoder
    uses: the context is the last token (or V + 1 = <s> at the start)."""

    vocab_size, eos = V, V

    def __init__(self, seed):
        g = torch.Generator().manual_seed(seed)
        self.table = (2.0 * torch.randn(V + 2, V + 1, generator=g)).log_softmax(-1).double().numpy()

    def context(self, tokens):
        return (tokens[-1],) if len(tokens) else (V + 1,)

    def logprobs(self, ctx):
        return self.table[ctx[0]]

    def fused(self, tokens, weight, bonus):
        """weight * log p_LM(tokens, </s>) + bonus * len(tokens): what fusion adds to a path."""
        lp = sum(self.logprobs(self.context(tokens[:i]))[w] for i, w in enumerate([*tokens, self.eos]))
        return weight * lp + bonus * len(tokens)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("cap", [1, 2])
@pytest.mark.parametrize("weight, bonus", [(0.6, 0.0), (1.5, 0.8), (0.0, -0.5)])
def test_exhaustive_beam_with_a_language_model_equals_brute_force(seed, cap, weight, bonus):
    """The best path by acoustic log-prob + weight * LM log-prob (</s> included) + bonus per
    token, over every path: the search finds it and reports that score."""
    T = {1: 4, 2: 3}[cap]
    pred, joint, enc = small_model(seed)
    enc = enc[:1, :T]  # (1, T, De)
    lm = BigramLM(seed + 10)
    with torch.no_grad():
        paths = all_paths_capped(pred, joint, enc[0], cap)
    fused = [(s + lm.fused(list(toks), weight, bonus), toks) for s, toks in paths]
    best_score, best_tokens = max(fused)
    opts = RNNTBeamOptions(blank=BLANK, beam_size=10**6, max_symbols_per_frame=cap, lm=lm if weight else None,
                           lm_weight=weight, token_bonus=bonus)
    (res,) = RNNTBeamDecoder(opts).decode(pred, joint, enc, torch.tensor([T]))
    assert tuple(res.tokens) == best_tokens
    assert res.score == pytest.approx(best_score, abs=1e-5)


def test_the_language_model_moves_the_best_path():
    """The cases above mean something: on these models the fused best path is not the
    acoustic one (for most seeds)."""
    moved = 0
    for seed in range(3):
        pred, joint, enc = small_model(seed)
        lm = BigramLM(seed + 10)
        with torch.no_grad():
            paths = all_paths_capped(pred, joint, enc[0, :4], 1)
        plain = max(paths)[1]
        fused = max((s + lm.fused(list(t), 1.5, 0.8), t) for s, t in paths)[1]
        moved += fused != plain
    assert moved >= 2


@pytest.mark.parametrize("chunk", [1, 4, 13])
@pytest.mark.parametrize("with_lm", [False, True])
def test_beam_in_chunks_equals_whole(chunk, with_lm):
    """decode_chunk over pieces of the encoder output (each stream its own length) gives what
    one call on the whole gives: streaming beam search, language model included."""
    pred, joint, enc = small_model(4)
    lengths = torch.tensor([13, 5, 10])
    lm = BigramLM(2) if with_lm else None
    dec = RNNTBeamDecoder(RNNTBeamOptions(blank=BLANK, beam_size=3, max_symbols_per_frame=2, lm=lm,
                                          lm_weight=0.8 if with_lm else 0.0, token_bonus=0.3 if with_lm else 0.0))
    whole = dec.decode(pred, joint, enc, lengths)
    for w, c in zip(whole, decode_in_chunks(dec, pred, joint, enc, lengths, chunk)):
        assert (c.tokens, c.timestamps) == (w.tokens, w.timestamps)
        assert c.score == pytest.approx(w.score, abs=1e-5)
    # streams taken apart and put back (what the recogniser does with the streams that are ready)
    state = dec.init_state(3, pred)
    sub = dec.decode_chunk(pred, joint, enc[[2, 0], :7], state.select([2, 0]), frame_offset=0,
                           lengths=torch.tensor([7, 7]))
    state = dec.decode_chunk(pred, joint, enc[:, :5], state, frame_offset=0, lengths=torch.tensor([0, 5, 0]))
    state = state.scatter([2, 0], sub)
    state = dec.decode_chunk(pred, joint, enc[:, 7:], state, frame_offset=7, lengths=torch.tensor([6, 0, 3]))
    for w, c in zip(whole, dec.results(state)):
        assert (c.tokens, c.timestamps) == (w.tokens, w.timestamps)


def test_beam_rejects_a_language_model_of_another_vocabulary():
    class Wide(BigramLM):
        vocab_size = V + 1

    with pytest.raises(ValueError, match="language model has 4 pieces and the model 3"):
        RNNTBeamDecoder(RNNTBeamOptions(blank=BLANK, lm=Wide(0), lm_weight=0.5))
