"""AudioDataset, collate and BucketBatchSampler."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asrlib.data.dataset import AudioDataset, BucketBatchSampler, DataError, Skipped, collate
from asrlib.data.manifest import read_manifest
from asrlib.tokenizer import Tokenizer

DIGITS_TOKENIZER = Path(__file__).resolve().parents[1] / "data_samples" / "digits" / "tokenizer"


@pytest.fixture
def tok():
    return Tokenizer(DIGITS_TOKENIZER)


def test_items_match_soundfile_and_tokenizer(tiny_manifest, tok):
    entries, _ = read_manifest(tiny_manifest, strict=True)
    ds = AudioDataset(entries, 16000, tok, strict=True)
    for i, e in enumerate(entries):
        wave, ids, index = ds[i]
        ref, sr = sf.read(e.audio_filepath, dtype="float32")
        assert sr == 16000 and index == i
        assert wave.dtype == torch.float32 and torch.equal(wave, torch.from_numpy(ref))
        assert ids.dtype == torch.long and ids.tolist() == tok.encode(e.text)
    ds8 = AudioDataset(entries, 8000)  # resampled, no tokenizer -> empty targets
    wave, ids, _ = ds8[0]
    assert abs(len(wave) - round(entries[0].duration * 8000)) <= 1 and ids.numel() == 0


def bad_corpus(tmp_path: Path) -> Path:
    rate = 16000
    sf.write(tmp_path / "ok.wav", np.full(rate // 2, 0.1, np.float32), rate)
    sf.write(tmp_path / "short.wav", np.full(rate // 100, 0.1, np.float32), rate)  # 10 ms < 25 ms
    (tmp_path / "broken.wav").write_bytes(b"RIFF....WAVEjunk" * 8)
    rows = [
        ("ok.wav", "one two"),
        ("broken.wav", "three"),
        ("short.wav", "four"),
        ("ok.wav", "☃☃"),  # only <unk> for the digits tokenizer
        ("ok.wav", "five"),
    ]
    m = tmp_path / "m.jsonl"
    m.write_text("".join(json.dumps({"audio_filepath": a, "text": t, "duration": 0.5}) + "\n" for a, t in rows), encoding="utf-8")
    return m


def test_lenient_skips_and_counts(tmp_path, tok):
    entries, _ = read_manifest(bad_corpus(tmp_path), strict=True)
    ds = AudioDataset(entries, 16000, tok)
    items = [ds[i] for i in range(len(ds))]
    assert [isinstance(it, Skipped) for it in items] == [False, True, True, True, False]
    assert dict(ds.skipped) == {"unreadable audio": 1, "too short": 1, "text not encodable": 1}
    batch = ds.collate(items)
    assert batch.indices == [0, 4] and batch.dropped == 3 and batch.texts == ["one two", "five"]
    assert [(r, w.split("/")[-1]) for r, w in batch.skips] == [
        ("unreadable audio", "m.jsonl:2"), ("too short", "m.jsonl:3"), ("text not encodable", "m.jsonl:4")]


@pytest.mark.parametrize("line,message", [(2, "cannot decode audio file .*broken.wav"), (3, "audio has 160 samples, fewer than one STFT window"), (4, "the tokenizer turns .☃☃. into only <unk>")])
def test_strict_names_manifest_and_line(tmp_path, tok, line, message):
    m = bad_corpus(tmp_path)
    entries, _ = read_manifest(m, strict=True)
    ds = AudioDataset(entries, 16000, tok, strict=True)
    with pytest.raises(DataError, match=f"{m}:{line}: {message}"):
        ds[line - 1]


def test_max_duration_is_enforced_on_the_real_length(tmp_path, tok):
    """A line claiming 0.5 s for a 3 s file passes the manifest's max_duration filter; the
    dataset measures the audio and rejects it (lenient: counted; strict: names the line)."""
    sf.write(tmp_path / "long.wav", np.full(3 * 16000, 0.1, np.float32), 16000)
    sf.write(tmp_path / "ok.wav", np.full(16000 // 2, 0.1, np.float32), 16000)
    m = tmp_path / "m.jsonl"
    m.write_text("".join(json.dumps({"audio_filepath": a, "text": "one", "duration": 0.5}) + "\n"
                         for a in ("ok.wav", "long.wav")), encoding="utf-8")
    entries, _ = read_manifest(m, max_duration=1.0, strict=True)
    assert len(entries) == 2  # the manifest's duration let both through
    ds = AudioDataset(entries, 16000, tok, max_seconds=1.0)
    assert not isinstance(ds[0], Skipped) and isinstance(ds[1], Skipped)
    assert dict(ds.skipped) == {"longer than max_duration": 1}
    assert AudioDataset(entries, 16000, tok)[1] is not None  # no limit, no rejection
    with pytest.raises(DataError, match=rf"{m}:2: the audio lasts 3.00 s \(the manifest says 0.50 s\), over max_duration 1 s"):
        AudioDataset(entries, 16000, tok, strict=True, max_seconds=1.0)[1]


def test_collate_pads_like_a_loop(seeded):
    items = [(torch.randn(n), torch.randint(1, 30, (u,)), i) for i, (n, u) in enumerate([(5, 2), (9, 4), (3, 1)])]
    batch = collate(items + [None], texts=["a", "b", "c"])
    assert batch.audio.shape == (3, 9) and batch.tokens.shape == (3, 4) and batch.dropped == 1
    for b, (w, t, i) in enumerate(items):
        for s in range(9):
            assert batch.audio[b, s].item() == (w[s].item() if s < len(w) else 0.0)
        for u in range(4):
            assert batch.tokens[b, u].item() == (t[u].item() if u < len(t) else 0)
    assert batch.audio_lengths.tolist() == [5, 9, 3] and batch.token_lengths.tolist() == [2, 4, 1]
    assert batch.texts == ["a", "b", "c"] and batch.indices == [0, 1, 2]
    empty = collate([None, None])
    assert len(empty) == 0 and empty.audio.shape == (0, 0) and empty.dropped == 2


def test_dataloader_integration(tiny_manifest, tok):
    entries, _ = read_manifest(tiny_manifest, strict=True)
    ds = AudioDataset(entries, 16000, tok)
    sampler = BucketBatchSampler([e.duration for e in entries], batch_seconds=1.6, max_batch_size=4, num_buckets=2, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=ds.collate)
    seen = []
    for batch in loader:
        assert batch.audio.shape[0] == len(batch.texts) == batch.tokens.shape[0]
        assert batch.audio.shape[1] == batch.audio_lengths.max().item()
        seen += batch.indices
    assert sorted(seen) == list(range(len(entries)))


# ------------------------------------------------------------------ BucketBatchSampler


def durations(n: int, seed: int = 0) -> list[float]:
    return np.random.default_rng(seed).uniform(0.5, 15.0, n).round(3).tolist()


def all_ranks(d, world, epoch=0, **kw):
    out = []
    for r in range(world):
        s = BucketBatchSampler(d, rank=r, world_size=world, **kw)
        s.set_epoch(epoch)
        out.append(list(s))
    return out


KW = dict(batch_seconds=40.0, max_batch_size=6, num_buckets=4, seed=3)


@pytest.mark.parametrize("n", [1, 2, 3, 17, 50, 101])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_utterance_once_and_equal_steps(n, world):
    d = durations(n, seed=n)
    for epoch in range(3):
        ranks = all_ranks(d, world, epoch, **KW)
        assert len({len(r) for r in ranks}) == 1  # same number of steps on every rank
        flat = [i for r in ranks for b in r for i in b]
        assert set(flat) == set(range(n))
        if len(flat) != n:  # repeats only when no batch could be split: all singletons
            assert all(len(b) == 1 for r in ranks for b in r) and len(flat) - n < world
        if n >= 2 * world and max(d) * 2 <= KW["batch_seconds"]:
            assert sorted(flat) == list(range(n))  # exactly once


def test_drop_last_gives_equal_steps_without_repeats():
    d = durations(37)
    ranks = all_ranks(d, 2, drop_last=True, **KW)
    flat = [i for r in ranks for b in r for i in b]
    assert len(ranks[0]) == len(ranks[1]) and len(flat) == len(set(flat))


def test_budget_and_cap():
    d = durations(300) + [60.0, 45.0]  # two utterances longer than the budget
    for batch in all_ranks(d, 1, **KW)[0]:
        padded = max(d[i] for i in batch) * len(batch)
        assert len(batch) <= 6
        assert padded <= 40.0 or len(batch) == 1
    singles = [b for b in all_ranks(d, 1, **KW)[0] if len(b) == 1]
    assert [300] in singles and [301] in singles


def test_batches_stay_inside_duration_buckets():
    d = durations(200)
    edges = np.sort(d)[:: 200 // 4]  # equal-count bucket lower edges (independent of the code)
    bucket = lambda x: int(np.searchsorted(edges, x, side="right"))  # noqa: E731
    for batch in all_ranks(d, 1, **KW)[0]:
        assert len({bucket(d[i]) for i in batch}) == 1


def test_deterministic_and_reshuffled_per_epoch():
    d = durations(80)
    a0, b0 = all_ranks(d, 2, 0, **KW), all_ranks(d, 2, 0, **KW)
    assert a0 == b0
    assert all_ranks(d, 2, 1, **KW) != a0
    assert all_ranks(d, 2, 0, **{**KW, "seed": 4}) != a0
    s = BucketBatchSampler(d, **KW)  # a full pass moves to the next epoch by itself
    first, second = list(s), list(s)
    assert first == all_ranks(d, 1, 0, **KW)[0] and second == all_ranks(d, 1, 1, **KW)[0]


def test_no_shuffle_is_sorted_by_duration():
    d = durations(50)
    batches = list(BucketBatchSampler(d, 30.0, 8, num_buckets=3, shuffle=False))
    order = [i for b in batches for i in b]
    assert [d[i] for i in order] == sorted(d)


@pytest.mark.parametrize("consumed", [0, 3, 7])
def test_resume_mid_epoch_yields_exactly_the_rest(consumed):
    d = durations(90)
    full = all_ranks(d, 2, 2, **KW)[1]
    s = BucketBatchSampler(d, rank=1, world_size=2, **KW)
    s.set_epoch(2)
    it = iter(s)
    got = [next(it) for _ in range(consumed)]
    state = json.loads(json.dumps(s.state_dict()))  # survives a checkpoint round trip
    t = BucketBatchSampler(d, rank=1, world_size=2, **KW)
    t.load_state_dict(state)
    t.set_epoch(2)  # a trainer calling set_epoch with the same epoch keeps the position
    assert got + list(t) == full
    assert list(t) == all_ranks(d, 2, 3, **KW)[1]  # and then carries on with the next epoch


@pytest.mark.parametrize("saved_world, world", [(2, 1), (1, 3), (2, 4), (4, 2), (3, 2)])
@pytest.mark.parametrize("consumed", [0, 1, 3, 6])
def test_resume_on_another_number_of_ranks_skips_nothing(saved_world, world, consumed):
    """A run saved on ``saved_world`` ranks after ``consumed`` batches each, resumed on ``world``:
    the used utterances and the new ranks' remaining batches together hold every utterance of
    the epoch, every rank has as many batches left (DDP), the rest is a suffix of the new plan,
    and the utterances seen twice are fewer than one round of it."""
    d = durations(90)
    used = [i for rank in all_ranks(d, saved_world, 2, **KW) for b in rank[:consumed] for i in b]
    state = json.loads(json.dumps(all_samplers_at(d, saved_world, 2, consumed)[0].state_dict()))
    fresh = all_ranks(d, world, 2, **KW)
    rest = []
    for r in range(world):
        s = BucketBatchSampler(d, rank=r, world_size=world, **KW)
        s.load_state_dict(state)
        s.set_epoch(2)
        rest.append(list(s))
    left = len(rest[0])
    assert all(len(x) == left for x in rest)
    assert all(rest[r] == fresh[r][len(fresh[r]) - left:] for r in range(world))
    again = sorted(set(used) & {i for x in rest for b in x for i in b})
    assert sorted(set(used) | {i for x in rest for b in x for i in b}) == list(range(len(d)))
    round_sizes = [sum(len(fresh[r][k]) for r in range(world)) for k in range(len(fresh[0]))]
    assert len(again) < max(round_sizes)
    assert s.resharded == {"saved_world_size": saved_world, "utterances_used": len(used), "seen_again": len(again),
                           "batches_per_rank": len(fresh[0])}


def all_samplers_at(d, world, epoch, consumed):
    """One sampler per rank, each having yielded ``consumed`` batches of ``epoch``."""
    out = []
    for r in range(world):
        s = BucketBatchSampler(d, rank=r, world_size=world, **KW)
        s.set_epoch(epoch)
        it = iter(s)
        for _ in range(consumed):
            next(it)
        out.append(s)
    return out


def test_resume_with_other_data_or_seed_is_refused():
    d = durations(20)
    state = BucketBatchSampler(d, world_size=2, **KW).state_dict()
    with pytest.raises(ValueError, match="seed=3, now seed=4"):
        BucketBatchSampler(d, **{**KW, "seed": 4}).load_state_dict(state)
    with pytest.raises(ValueError, match="num_utterances=20, now num_utterances=21"):
        BucketBatchSampler(durations(21), **KW).load_state_dict(state)


def test_offset_lines_read_only_their_segment(tmp_path):
    ramp = np.linspace(-0.5, 0.5, 16000, dtype=np.float32)  # position readable from value
    sf.write(tmp_path / "r.wav", ramp, 16000, subtype="FLOAT")
    rows = [{"audio_filepath": "r.wav", "text": "a", "duration": 0.5, "offset": 0.25},
            {"audio_filepath": "r.wav", "text": "b", "duration": 0.5, "offset": 0},  # segment from 0
            {"audio_filepath": "r.wav", "text": "c", "duration": 0.9}]  # no offset: the whole file
    m = tmp_path / "m.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = AudioDataset(read_manifest(m, strict=True)[0], 16000, strict=True)
    assert torch.equal(ds[0][0], torch.from_numpy(ramp[4000:12000]))
    assert torch.equal(ds[1][0], torch.from_numpy(ramp[:8000]))
    assert torch.equal(ds[2][0], torch.from_numpy(ramp))


def test_sorted_epochs_go_shortest_first_then_shuffle():
    """SortaGrad: in the first sorted_epochs epochs the batches come bucket by bucket, shortest
    quarter of the utterances first (num_buckets=4), each utterance once; later epochs are the
    ordinary shuffled plan."""
    d = durations(80)
    kw = {**KW, "sorted_epochs": 2}
    rank_of = {i: r for r, i in enumerate(sorted(range(80), key=lambda i: d[i]))}  # durations are distinct
    for epoch in (0, 1):
        plan = BucketBatchSampler(d, **kw).global_plan(epoch)
        quarters = [{rank_of[i] // 20 for i in b} for b in plan]
        assert all(len(q) == 1 for q in quarters)  # a batch never mixes buckets
        seq = [q.pop() for q in quarters]
        assert seq == sorted(seq) and seq[0] == 0 and seq[-1] == 3
        assert sorted(i for b in plan for i in b) == list(range(80))
    plain = BucketBatchSampler(d, **KW)
    sorted_first = BucketBatchSampler(d, **kw)
    assert sorted_first.global_plan(2) == plain.global_plan(2)
    assert sorted_first.global_plan(0) != plain.global_plan(0)


# ------------------------------------------------------------------ perturbation in the workers


def perturbed_batches(ds, entries, workers: int) -> list[tuple[list[int], torch.Tensor]]:
    sampler = BucketBatchSampler([e.duration for e in entries], batch_seconds=1.6, max_batch_size=4, num_buckets=2,
                                 seed=0, with_epoch=True)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=ds.collate, num_workers=workers)
    out = []
    for _ in range(2):  # two epochs: a new pass draws new perturbations
        out += [(b.indices, b.audio.clone()) for b in loader]
    return out


def test_perturbation_is_drawn_by_epoch_and_index_not_by_worker(tiny_manifest, tok):
    from asrlib.data.augment import WavePerturbation, gain_perturb, speed_perturb

    entries, _ = read_manifest(tiny_manifest, strict=True)
    pert = WavePerturbation(16000, (0.9, 1.0, 1.1), (-20.0, 6.0), seed=7)
    ds = AudioDataset(entries, 16000, tok, perturbation=pert)
    plain = AudioDataset(entries, 16000, tok)
    # an item is the plain audio, sped up by its drawn factor, then scaled by its drawn gain
    for epoch in (0, 3):
        for i in range(len(entries)):
            factor, gain = pert.draw(epoch, i)
            ref = gain_perturb(speed_perturb(plain[i][0].numpy(), factor, 16000), gain)
            assert np.array_equal(ds[(epoch, i)][0].numpy(), ref)
    assert torch.equal(ds[0][0], plain[0][0])  # a bare index (validation, statistics) is not perturbed
    # the same batches, bit for bit, whether the main process or two workers load them
    inline, workers = perturbed_batches(ds, entries, 0), perturbed_batches(ds, entries, 2)
    assert [i for i, _ in inline] == [i for i, _ in workers]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(inline, workers))


def test_perturbation_draws_cover_the_configured_choices():
    from asrlib.data.augment import WavePerturbation

    pert = WavePerturbation(16000, (0.9, 1.0, 1.1), (-20.0, 6.0), seed=1)
    draws = [pert.draw(e, i) for e in range(3) for i in range(1000)]
    factors = np.array([f for f, _ in draws])
    gains = np.array([g for _, g in draws])
    for f in (0.9, 1.0, 1.1):  # uniform over the list: 1000 of 3000 each, +- 4 sigma
        assert abs(np.sum(factors == f) - 1000) < 4 * np.sqrt(3000 * (1 / 3) * (2 / 3))
    assert gains.min() >= -20.0 and gains.max() <= 6.0
    assert abs(gains.mean() - (-7.0)) < 4 * 26 / np.sqrt(12) / np.sqrt(3000)  # uniform mean, +- 4 sigma
    assert pert.draw(2, 5) == WavePerturbation(16000, (0.9, 1.0, 1.1), (-20.0, 6.0), seed=1).draw(2, 5)
    assert pert.draw(0, 5) != pert.draw(1, 5)  # a new epoch, a new draw
    assert WavePerturbation(16000, (), ()).draw(0, 0) == (1.0, 0.0) and not WavePerturbation(16000).active


def test_audio_shorter_than_the_configured_window_is_rejected(tmp_path, tok):
    """The short-audio rule follows the frontend's window (win_ms), not a fixed 25 ms."""
    sr = 16000
    path = tmp_path / "short.wav"
    sf.write(path, np.zeros(int(0.03 * sr), np.float32), sr)  # 30 ms
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio_filepath": str(path), "text": "one", "duration": 0.03}) + "\n")
    entries, _ = read_manifest(tmp_path / "m.jsonl")
    assert AudioDataset(entries, sr, tok, min_seconds=0.025)[0] is not None
    ds = AudioDataset(entries, sr, tok, min_seconds=0.032)
    assert isinstance(ds[0], Skipped) and ds.skipped == {"too short": 1}


def test_skip_reasons_reach_the_main_process_from_workers(tmp_path, tok):
    """With two DataLoader workers the trainer's tally still knows each reason and its line."""
    from asrlib.data.skips import SkipTally

    entries, _ = read_manifest(bad_corpus(tmp_path), strict=True)
    ds = AudioDataset(entries, 16000, tok)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=ds.collate, num_workers=2)
    reasons, said = {}, []
    tally = SkipTally(reasons, said.append)
    for batch in loader:
        tally.attribute(batch.skips)
    assert reasons == {"unreadable audio": 1, "too short": 1, "text not encodable": 1}
    assert not ds.skipped  # the main process decoded nothing itself
    assert len(said) == 3 and any("m.jsonl:3" in s for s in said)


def test_cache_decodes_each_utterance_once_and_returns_the_same_items(tiny_manifest, tok, monkeypatch):
    """With ``cache=True`` a second epoch reads no file, and every item (after speed and gain,
    drawn per epoch) equals what the uncached dataset returns; changing a returned tensor in
    place does not change the cache."""
    from asrlib.data import dataset as dataset_module
    from asrlib.data.augment import WavePerturbation

    entries, _ = read_manifest(tiny_manifest, strict=True)
    pert = WavePerturbation(16000, (0.9, 1.0, 1.1), (-6.0, 6.0), seed=7)
    plain = AudioDataset(entries, 16000, tok, perturbation=pert)
    cached = AudioDataset(entries, 16000, tok, perturbation=pert, cache=True)
    calls = []
    real_load = dataset_module.load_audio
    monkeypatch.setattr(dataset_module, "load_audio", lambda *a: calls.append(a[0]) or real_load(*a))
    for epoch in range(3):
        for i in range(len(entries)):
            got, want = cached[(epoch, i)], plain[(epoch, i)]
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]) and got[2] == want[2]
            got[0].mul_(0)  # the caller owns its tensor
    # the plain dataset decoded 3 x per utterance, the cached one once
    assert len(calls) == 4 * len(entries)
    assert torch.equal(cached[0][0], torch.from_numpy(sf.read(entries[0].audio_filepath, dtype="float32")[0]))


def test_cache_keeps_rejecting_unusable_utterances(tmp_path, tok):
    entries, _ = read_manifest(bad_corpus(tmp_path), strict=True)
    ds = AudioDataset(entries, 16000, tok, cache=True)
    for _ in range(2):
        assert [isinstance(ds[i], Skipped) for i in range(len(ds))] == [False, True, True, True, False]
    assert sorted(ds.cache) == [0, 4]


def test_cache_that_would_not_fit_is_a_usage_error(tiny_manifest):
    from asrlib.data.dataset import check_audio_cache
    from asrlib.errors import UsageError

    entries, _ = read_manifest(tiny_manifest, strict=True)
    need = round(sum(e.duration for e in entries) * 16000) * 4  # 4 bytes per sample
    assert abs(check_audio_cache(entries, 16000, copies=3, memory_bytes=10 * need) - 3 * need) <= 12
    with pytest.raises(UsageError, match="cache_audio = false"):
        check_audio_cache(entries, 16000, copies=3, memory_bytes=5 * need)
