"""The trainer's random streams and the RNG states a checkpoint carries (asrlib/rng.py)."""
import random

import torch

from asrlib.rng import rng_state, set_rng_state, stream_seed


def test_random_streams_differ_by_rank_and_step():
    seeds = {stream_seed(1234, r, s, n) for r in range(4) for s in range(50) for n in ("augment", "dropout")}
    assert len(seeds) == 400 and all(0 <= x < 2**63 for x in seeds)
    assert stream_seed(1234, 1, 7, "dropout") == stream_seed(1234, 1, 7, "dropout")  # a pure function


def test_rng_state_round_trip_replays_the_same_numbers():
    """After set_rng_state, torch and Python draw exactly what they drew after rng_state, even
    through a checkpoint (torch.save/load of the plain data), and not by accident: the draws in
    between differ."""
    import io

    torch.manual_seed(7)
    random.seed(7)
    buf = io.BytesIO()
    torch.save(rng_state(torch.device("cpu")), buf)
    first = (torch.rand(5), random.random(), random.getrandbits(64))
    between = (torch.rand(5), random.random(), random.getrandbits(64))
    buf.seek(0)
    set_rng_state(torch.load(buf, weights_only=True), torch.device("cpu"))
    again = (torch.rand(5), random.random(), random.getrandbits(64))
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]
    assert not torch.equal(first[0], between[0]) and first[1:] != between[1:]
