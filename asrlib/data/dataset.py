"""Utterances -> padded batches: ``AudioDataset``, ``collate`` and ``BucketBatchSampler``.

``AudioDataset[i]`` decodes one manifest entry to (waveform, token ids, i). An utterance that
cannot be used (unreadable audio, audio shorter than one STFT window, text that the
tokenizer turns into nothing or only ``<unk>``) raises an error naming manifest:line when
``strict``; otherwise ``__getitem__`` returns a ``Skipped(reason, where)`` instead of an item,
the reason is also counted in ``dataset.skipped`` (in the process that decoded it), and
``collate`` drops it, keeping ``Batch.dropped`` and ``Batch.skips`` (reason, manifest:line):
so the reasons reach the main process even from DataLoader workers.

With ``cache=True`` each utterance is decoded once and its waveform kept in memory (in the
process that decoded it: each DataLoader worker holds its own copy), so that later epochs skip
the decoder; speed and gain are still drawn anew on top of the cached audio. The bundled AN4
Opus files decode at about 250 audio seconds per core-second; with the cache, 750 steps of
the AN4 recipe (four epochs) took 4:19 instead of 4:26 on the 2-core machine, the same run
bit for bit. The cache holds 4 bytes per sample (~230 MB per hour of 16 kHz audio).

``BucketBatchSampler`` groups utterances of similar duration into batches whose padded
length (max duration x batch size) fits a budget of seconds; see its docstring for the
order, the sharding across ranks and mid-epoch resume.

Shapes:
    dataset item: waveform (S,) float32, tokens (U,) int64, index int
    Batch: audio (B, S) float32 zero-padded, audio_lengths (B,), tokens (B, U) padded with 0,
           token_lengths (B,), texts list[str] (B), indices list[int] (B)
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch

from asrlib.audio import FRAME_SECONDS, AudioError, load_audio
from asrlib.data.augment import WavePerturbation
from asrlib.data.manifest import ManifestEntry
from asrlib.errors import UsageError


class DataError(RuntimeError):
    """An utterance is unusable in strict mode; the message names manifest:line."""


class Skipped(NamedTuple):
    """What ``AudioDataset[i]`` returns for an utterance it cannot use (lenient mode)."""

    reason: str  # e.g. "unreadable audio", "too short"
    where: str  # manifest:line


class AudioDataset(torch.utils.data.Dataset):
    def __init__(self, entries: Sequence[ManifestEntry], sample_rate: int, tokenizer=None, strict: bool = False,
                 max_seconds: float = 0.0, perturbation: WavePerturbation | None = None,
                 min_seconds: float = FRAME_SECONDS, cache: bool = False):
        """``max_seconds`` > 0 rejects audio longer than that, measured on the audio itself: the
        manifest's ``duration`` (which filtered the line) may be wrong; audio shorter than
        ``min_seconds`` (one STFT window: the frontend's ``win_ms``) gives no frame and is rejected.

        ``perturbation`` (training only) applies speed and gain to items asked for by an
        ``(epoch, index)`` key, as ``BucketBatchSampler(with_epoch=True)`` yields them; a plain
        index loads the audio as it is.

        ``cache`` keeps every decoded waveform that was usable (see the module docstring)."""
        self.entries = list(entries)
        self.cache: dict[int, np.ndarray] | None = {} if cache else None
        self.perturbation = perturbation if perturbation is not None and perturbation.active else None
        self.max_samples = int(max_seconds * sample_rate) if max_seconds > 0 else 0
        self.texts = [e.text for e in self.entries]
        self.sample_rate = sample_rate
        self.tokenizer = tokenizer
        self.strict = strict
        self.min_samples = int(round(min_seconds * sample_rate))
        self.skipped: Counter = Counter()  # reason -> count (in this process)
        self.first_skipped: dict[str, str] = {}  # reason -> manifest:line of its first case

    def __len__(self) -> int:
        return len(self.entries)

    def _reject(self, entry: ManifestEntry, reason: str, detail: str) -> Skipped:
        if self.strict:
            raise DataError(f"{entry.where}: {detail}. Fix or remove this line, or set strict = false to skip it.")
        self.skipped[reason] += 1
        self.first_skipped.setdefault(reason, entry.where)
        return Skipped(reason, entry.where)

    def __getitem__(self, key: int | tuple[int, int]):
        epoch, i = key if isinstance(key, tuple) else (None, key)
        entry = self.entries[i]
        cached = self.cache is not None and i in self.cache
        if cached:
            wave = self.cache[i]
        else:
            try:
                wave = load_audio(entry.audio_filepath, self.sample_rate, *entry.span)
            except AudioError as e:
                return self._reject(entry, "unreadable audio", str(e))
        if self.max_samples and len(wave) > self.max_samples:
            return self._reject(entry, "longer than max_duration", f"the audio lasts {len(wave) / self.sample_rate:.2f} s "
                                f"(the manifest says {entry.duration:.2f} s), over max_duration {self.max_samples / self.sample_rate:g} s")
        if len(wave) < self.min_samples:
            return self._reject(entry, "too short", f"audio has {len(wave)} samples, fewer than one STFT window ({self.min_samples})")
        ids: list[int] = []
        if self.tokenizer is not None:
            ids = self.tokenizer.encode(entry.text)
            if self._only_unknown(ids):
                return self._reject(entry, "text not encodable", f"the tokenizer turns {entry.text!r} into {'nothing' if not ids else 'only <unk>'}")
        if self.cache is not None and not cached:
            self.cache[i] = wave
        if self.perturbation is not None and epoch is not None:
            wave = self.perturbation(wave, epoch, i)
        if self.cache is not None and wave is self.cache.get(i):
            wave = wave.copy()  # the caller may change its tensor in place; the cache stays as decoded
        return torch.from_numpy(wave), torch.tensor(ids, dtype=torch.long), i

    def _only_unknown(self, ids: list[int]) -> bool:
        """True for [] and for ids that are all <unk> or the bare word-boundary piece "▁"."""
        piece = getattr(self.tokenizer, "piece", None)
        unk = self.tokenizer.unk_id
        return all(t == unk or (piece is not None and piece(t) == "\u2581") for t in ids)

    def collate(self, items: Sequence) -> "Batch":
        """``collate`` with this dataset's texts: the DataLoader's ``collate_fn``."""
        return collate(items, self.texts)


def check_audio_cache(entries: Sequence[ManifestEntry], sample_rate: int, copies: int,
                      memory_bytes: int | None = None) -> int:
    """Bytes the decoded audio of ``entries`` takes in ``copies`` caches (4 bytes per sample);
    a ``UsageError`` if that is over half of ``memory_bytes`` (default: this machine's RAM)."""
    one = int(sum(e.duration for e in entries) * sample_rate) * 4
    if memory_bytes is None:
        memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if one * copies > memory_bytes / 2:
        raise UsageError(f"train_dataset.cache_audio: the training audio decodes to {one / 2**30:.1f} GiB, held "
                         f"{copies} times (one per loader worker of each local process), over half of this machine's "
                         f"{memory_bytes / 2**30:.1f} GiB of memory; set train_dataset.cache_audio = false")
    return one * copies


@dataclass
class Batch:
    audio: torch.Tensor  # (B, S) float32, zero-padded
    audio_lengths: torch.Tensor  # (B,) int64 samples
    tokens: torch.Tensor  # (B, U) int64, padded with 0
    token_lengths: torch.Tensor  # (B,) int64
    texts: list[str]  # (B) reference texts
    indices: list[int]  # (B) dataset indices
    dropped: int = 0  # items of this batch the dataset rejected
    skips: list = field(default_factory=list)  # (reason, manifest:line) of each rejected item

    def __len__(self) -> int:
        return len(self.indices)

    def to(self, device) -> "Batch":
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.audio), move(self.audio_lengths), move(self.tokens), move(self.token_lengths), self.texts,
                     self.indices, self.dropped, self.skips)

    def pin_memory(self) -> "Batch":
        """Page-locked copies of the tensors (DataLoader(pin_memory=True) calls this), so the
        trainer's ``.to(cuda, non_blocking=True)`` copies overlap with compute."""
        return Batch(self.audio.pin_memory(), self.audio_lengths.pin_memory(), self.tokens.pin_memory(),
                     self.token_lengths.pin_memory(), self.texts, self.indices, self.dropped, self.skips)


def collate(items: Sequence, texts: Sequence[str] | None = None) -> Batch:
    """Pad dataset items into a ``Batch``; ``Skipped`` (or None) items are dropped and counted.

    A batch where every item was dropped has B = 0 (the trainer should skip it). ``texts``
    maps a dataset index to its reference text; ``AudioDataset.collate`` passes the
    manifest texts (use it as the DataLoader's ``collate_fn``). Without it texts are "".
    """
    kept = [it for it in items if it is not None and not isinstance(it, Skipped)]
    skips = [(it.reason, it.where) for it in items if isinstance(it, Skipped)]
    dropped = len(items) - len(kept)
    B = len(kept)
    S = max((len(w) for w, _, _ in kept), default=0)
    U = max((len(t) for _, t, _ in kept), default=0)
    audio = torch.zeros(B, S, dtype=torch.float32)
    tokens = torch.zeros(B, U, dtype=torch.long)
    for b, (w, t, _) in enumerate(kept):
        audio[b, : len(w)] = w
        tokens[b, : len(t)] = t
    indices = [int(i) for _, _, i in kept]
    return Batch(
        audio=audio,
        audio_lengths=torch.tensor([len(w) for w, _, _ in kept], dtype=torch.long),
        tokens=tokens,
        token_lengths=torch.tensor([len(t) for _, t, _ in kept], dtype=torch.long),
        texts=[texts[i] for i in indices] if texts is not None else [""] * B,
        indices=indices,
        dropped=dropped,
        skips=skips,
    )


class BucketBatchSampler(torch.utils.data.Sampler):
    """Batches of dataset indices, bucketed by duration, shuffled per epoch, sharded by rank.

    One epoch's plan (identical on every rank, a function of ``seed`` and the epoch only):
      1. sort utterances by duration (ties in random order) and cut them into ``num_buckets``
         buckets of equal count;
      2. in each bucket, shuffle and pack greedily: a batch grows while
         max duration x size <= ``batch_seconds`` and size <= ``max_batch_size`` (an utterance
         longer than the budget alone forms a batch of one);
      3. shuffle the order of all batches, except in the first ``sorted_epochs`` epochs, whose
         batches go from the shortest bucket to the longest (SortaGrad, Amodei et al. 2016:
         short utterances have few alignments, so the first steps learn from easy ones).
    ``shuffle=False`` skips the random steps (sorted by duration; for validation).

    Sharding: rank r takes batches r, r + W, r + 2W, … (W = ``world_size``). DDP needs every
    rank to run the same number of steps, so when the batch count is not a multiple of W the
    largest batches are split in two until it is: every utterance still appears exactly once
    per epoch. Only when nothing is left to split (every batch holds one utterance, e.g. fewer
    utterances than ranks) are batches repeated from the start of the plan to fill the last
    round, so a few utterances are seen twice. ``drop_last=True`` instead
    drops the last incomplete round (those utterances are not seen that epoch).

    ``with_epoch=True`` yields ``(epoch, index)`` pairs instead of indices, the keys by which
    ``AudioDataset`` draws its speed and gain perturbation.

    Resume: ``state_dict(consumed)`` records the epoch and how many batches this rank has
    consumed; after ``load_state_dict`` the next iteration yields exactly the remaining
    batches of that epoch. A full pass over the sampler moves it to the next epoch, so
    iterating again gives a new order (``set_epoch`` may also be called explicitly).

    Resume on another number of ranks (a preempted job restarted on other GPUs): the splitting
    above keeps the order of the utterances, so every world size walks the epoch's utterances in
    the same order; only the cuts between batches differ. The sampler then starts at the last
    round of the new plan that holds no utterance not yet used, so nothing of the epoch is
    skipped and fewer than one round's utterances are seen twice (``resharded`` says how many).
    """

    def __init__(
        self,
        durations: Sequence[float],
        batch_seconds: float,
        max_batch_size: int,
        num_buckets: int = 10,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = False,
        sorted_epochs: int = 0,
        with_epoch: bool = False,
    ):
        if batch_seconds <= 0 or max_batch_size < 1 or num_buckets < 1:
            raise ValueError(f"need batch_seconds > 0, max_batch_size >= 1, num_buckets >= 1; got {batch_seconds}, {max_batch_size}, {num_buckets}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
        if len(durations) == 0:
            raise ValueError("no utterances to batch (the manifest is empty after filtering)")
        self.durations = np.asarray(durations, dtype=np.float64)
        self.batch_seconds, self.max_batch_size, self.num_buckets = batch_seconds, max_batch_size, num_buckets
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shuffle, self.drop_last, self.sorted_epochs = shuffle, drop_last, sorted_epochs
        self.with_epoch = with_epoch  # yield (epoch, index) keys: what AudioDataset perturbs by
        self.epoch = 0
        self.consumed = 0  # batches of the current epoch already yielded on this rank
        self.resharded: dict | None = None  # set by load_state_dict from another world size
        self._plan_cache: tuple[int, list[list[int]]] | None = None

    # ---------------------------------------------------------------- planning
    def _pack(self, order: np.ndarray) -> list[list[int]]:
        batches, current, longest = [], [], 0.0
        for i in order:
            d = float(self.durations[i])
            grown = max(longest, d) * (len(current) + 1)
            if current and (grown > self.batch_seconds or len(current) >= self.max_batch_size):
                batches.append(current)
                current, longest = [], 0.0
            current.append(int(i))
            longest = max(longest, d)
        if current:
            batches.append(current)
        return batches

    def global_plan(self, epoch: int, world_size: int | None = None) -> list[list[int]]:
        """All ranks' batches of ``epoch``, before sharding (a multiple of world_size long; of
        this sampler's world size unless another is given)."""
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.durations)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        order = order[np.argsort(self.durations[order], kind="stable")]  # by duration, ties random
        batches: list[list[int]] = []
        for bucket in np.array_split(order, min(self.num_buckets, n)):
            batches += self._pack(rng.permutation(bucket) if self.shuffle else bucket)
        if self.shuffle and epoch >= self.sorted_epochs:
            batches = [batches[j] for j in rng.permutation(len(batches))]
        W = world_size or self.world_size
        if self.drop_last:
            return batches[: len(batches) - len(batches) % W]
        while len(batches) % W and any(len(b) > 1 for b in batches):
            j = max(range(len(batches)), key=lambda k: len(batches[k]))  # split the largest
            b = batches[j]
            batches[j : j + 1] = [b[: len(b) // 2], b[len(b) // 2 :]]
        n = len(batches)
        if n % W:  # fewer utterances than ranks: repeat batches from the start of the plan
            batches += [batches[k % n] for k in range(W - n % W)]
        return batches

    def plan(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's batches of ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        if self._plan_cache is None or self._plan_cache[0] != epoch:
            self._plan_cache = (epoch, self.global_plan(epoch)[self.rank :: self.world_size])
        return self._plan_cache[1]

    # ---------------------------------------------------------------- iteration
    def __len__(self) -> int:
        return len(self.plan())

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.consumed = epoch, 0

    def __iter__(self) -> Iterator[list[int]] | Iterator[list[tuple[int, int]]]:
        batches = self.plan()
        while self.consumed < len(batches):
            self.consumed += 1
            batch = batches[self.consumed - 1]
            yield [(self.epoch, i) for i in batch] if self.with_epoch else batch
        self.epoch, self.consumed = self.epoch + 1, 0  # a finished pass starts the next epoch

    def state_dict(self, epoch: int | None = None, consumed: int | None = None) -> dict:
        """The position to resume from. With DataLoader workers the sampler runs ahead of the
        training loop (prefetching), so the loop should pass its own ``epoch`` and
        ``consumed`` (batches of that epoch it actually used)."""
        return {
            "epoch": self.epoch if epoch is None else int(epoch),
            "consumed": self.consumed if consumed is None else int(consumed),
            "seed": self.seed,
            "world_size": self.world_size,
            "num_utterances": len(self.durations),
        }

    def load_state_dict(self, state: dict) -> None:
        for key, mine in (("seed", self.seed), ("num_utterances", len(self.durations))):
            if state.get(key, mine) != mine:
                raise ValueError(f"cannot resume the batch sampler: it was saved with {key}={state[key]}, now {key}={mine}; resume with the same data and seed")
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
        saved_world = int(state.get("world_size", self.world_size))
        self.resharded = None
        if saved_world != self.world_size:
            self._reshard(saved_world)

    def _reshard(self, saved_world: int) -> None:
        """Map ``consumed`` batches per rank of ``saved_world`` ranks onto this world size (see
        the class docstring): the last round of the new plan whose utterances were all used."""
        used = sum(len(b) for b in self.global_plan(self.epoch, saved_world)[: self.consumed * saved_world])
        plan, W = self.global_plan(self.epoch), self.world_size
        rounds, covered = 0, 0
        while (rounds + 1) * W <= len(plan):
            more = sum(len(b) for b in plan[rounds * W : (rounds + 1) * W])
            if covered + more > used:
                break
            rounds, covered = rounds + 1, covered + more
        self.resharded = {"saved_world_size": saved_world, "utterances_used": used, "seen_again": used - covered,
                          "batches_per_rank": len(plan) // W}
        self.consumed = rounds
