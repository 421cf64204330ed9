"""The trainer's random numbers: one seed per (run seed, rank, step, stream), and the RNG states a
checkpoint carries.

Every rank draws its own numbers. Augmentation draws from a generator and dropout from the
global torch RNG (CPU and CUDA), both seeded at every step by :func:`stream_seed`, so a resumed
run continues bit-exactly on CPU whatever happened before the checkpoint. The global states are
checkpointed as well (:func:`rng_state`, :func:`set_rng_state`), CUDA's included.
"""
from __future__ import annotations

import hashlib
import random

import torch


def stream_seed(seed: int, rank: int, step: int, stream: str) -> int:
    """A 63-bit seed for one random stream ("augment", "dropout") of one rank at one step.

    A hash, so that streams of neighbouring ranks, steps and names are unrelated (seed + rank
    would make rank 1 at step s replay rank 0 at step s + 1 under a linear formula).
    """
    digest = hashlib.blake2b(f"{seed}/{rank}/{step}/{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def rng_state(device: torch.device) -> dict:
    """The global RNG states (torch CPU, Python, and the CUDA device's) as checkpoint-safe data;
    Python's tuple state becomes nested lists."""
    python = [list(x) if isinstance(x, tuple) else x for x in random.getstate()]
    return {"torch": torch.get_rng_state(), "python": python,
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore what :func:`rng_state` saved (CUDA's only on a CUDA device, and only if saved)."""
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
