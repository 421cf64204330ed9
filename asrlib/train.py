"""The trainer: one recipe with named phases, read top to bottom.

    asrlib train --config configs/demo.toml [--set optim.lr=3e-4 …] [--resume auto|PATH] [--force]
    torchrun --nproc_per_node N -m asrlib.train --config …        (DDP; gloo on CPU, NCCL on GPU)

Phases: ``setup`` (devices, data, model, optimiser, logger, resume) -> ``train_step`` (one
optimiser update, possibly over several accumulated micro-batches) -> ``evaluate`` (losses and
WER of CTC and RNN-T greedy on the validation manifests, sharded across ranks) -> ``save_checkpoint`` (atomic; last K
kept, plus ``best.pt`` by validation WER; also every ``trainer.save_every_minutes`` and on
SIGINT/SIGTERM, after finishing the step). A new run never reuses a folder holding an earlier
run (see asrlib/run_folder.py); ``--resume auto`` falls back to the previous checkpoint when the
newest is unreadable.

Determinism: every rank draws its own random numbers, seeded at every step (asrlib/rng.py);
with the sampler position saved, a resumed run continues bit-exactly on CPU.

Devices: under torchrun each rank uses ``cuda:LOCAL_RANK`` (asrlib/device.py). The GPU is
made current before the NCCL group starts. ``trainer.compile`` compiles each encoder block
(``compile_scope = "blocks"``, the default) or the whole module that trains, the DDP wrapper under
DDP (``"model"``). Mixed precision: bf16 autocast on CPU or GPU, fp16 (with a
GradScaler) on GPU only; the losses are computed in float32 either way.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from asrlib import checkpoint as ckpt
from asrlib import shared_memory_average
from asrlib.config import Config, ConfigError, load_config, to_dict
from asrlib.data.augment import WavePerturbation, spec_augment_noise
from asrlib.data.dataset import AudioDataset, Batch, BucketBatchSampler, DataError, Skipped, check_audio_cache
from asrlib.data.manifest import ManifestError, read_manifest
from asrlib.data.noise import noise_from_manifest
from asrlib.data.skips import SkipTally, summary as skip_summary
from asrlib.device import pick_device
from asrlib.ema import WeightEMA
from asrlib.errors import UsageError, report_usage_errors
from asrlib.evaluate import evaluate_dataset
from asrlib.lexicon import phone_lexicon
from asrlib.logger import RunLogger
from asrlib.losses.hybrid import HybridLoss
from asrlib.model.frontend import feature_stats
from asrlib.model.hybrid import build_model, count_parameters
from asrlib.optim import build_optimizer, build_scheduler
from asrlib.resume import check_compatible, find_checkpoint, init_from, launcher
from asrlib.rng import rng_state, set_rng_state, stream_seed
from asrlib.run_folder import check_free_space, check_writable, checkpoint_bytes, claim_output_dir
from asrlib.stopping import Aborted, GracefulStop, ignore_stop_signals
from asrlib.tokenizer import Tokenizer, TokenizerError


# The DistributedDataParallel keyword that stops it broadcasting the buffers before every forward:
# torch 2.13 renamed broadcast_buffers (deprecated there, with a FutureWarning from every rank of
# every run) to forward_sync_buffers; the releases before it know only the old name.
NO_FORWARD_BUFFER_SYNC = ({"forward_sync_buffers": False}
                          if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                          else {"broadcast_buffers": False})


@dataclass
class Progress:
    """Counters saved in every checkpoint."""

    step: int = 0  # optimiser updates done
    epoch: int = 0
    batches_in_epoch: int = 0  # batches of this epoch already consumed (all micro-batches)
    skipped_nonfinite: int = 0  # optimiser steps skipped for a non-finite loss or gradient
    skipped_scaler: int = 0  # fp16: steps the GradScaler skipped while calibrating its scale (finite loss)
    skipped_utterances: int = 0  # unreadable / too short / unencodable utterances dropped
    skipped_reasons: dict = field(default_factory=dict)  # reason -> count of those utterances
    infeasible: int = 0
    audio_seconds: float = 0.0
    best_wer: float = math.inf


class Trainer:
    def __init__(self, cfg: Config, force: bool = False, resume_command: str = ""):
        self.cfg = cfg
        self.force = force  # a new run may move an earlier run in output_dir aside
        self.resume_command = resume_command or "asrlib train --config <your config> --resume auto"
        self.stopped_by = ""  # signal name when a SIGINT/SIGTERM ended fit() early
        self.aborted = False  # a second signal ended it without saving (the ranks may be out of step)
        self.lexicon = None  # loss.phone_lexicon, read by setup() when loss.phone_ctc_weight > 0

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.cfg
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = pick_device(cfg.trainer.device, int(os.environ.get("LOCAL_RANK", "0")))
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # before NCCL: else every rank's NCCL context lands on GPU 0
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if cfg.trainer.num_threads > 0:
            torch.set_num_threads(cfg.trainer.num_threads)
        torch.manual_seed(cfg.trainer.seed)
        random.seed(cfg.trainer.seed)
        self.out = Path(cfg.trainer.output_dir)
        self.claim_output_dir()
        # the checkpoint a resumed run continues from ((None, None): a new run)
        self.resume_from = find_checkpoint(cfg.trainer.resume, self.out / "checkpoints", self.log_line) \
            if cfg.trainer.resume else (None, None)

        self.tokenizer = Tokenizer(cfg.tokenizer.tokenizer_path)
        if cfg.model.vocab_size == 0:
            cfg.model.vocab_size = self.tokenizer.vocab_size
        elif cfg.model.vocab_size != self.tokenizer.vocab_size:
            raise UsageError(f"model.vocab_size = {cfg.model.vocab_size} but the tokenizer at "
                             f"{cfg.tokenizer.tokenizer_path} has {self.tokenizer.vocab_size} pieces; set "
                             "model.vocab_size = 0 to take the tokenizer's, or point tokenizer.tokenizer_path at "
                             "the right one")
        td, vd = cfg.train_dataset, cfg.validation_dataset
        sr = cfg.model.frontend.sample_rate
        entries, report = read_manifest(td.train_manifest, min_duration=td.min_duration,
                                         max_duration=td.max_duration, strict=td.strict)
        self.log_line(f"train: {report.summary()}")
        noise = None  # additive noise (asrlib/data/noise.py)
        if td.noise_manifest:
            noise, noise_report = noise_from_manifest(td.noise_manifest, sr, td.noise_snr_db, td.noise_prob, cfg.trainer.seed)
            self.log_line(f"noise: {noise_report.summary()}; added to {td.noise_prob:.0%} of utterances at "
                          f"{td.noise_snr_db[0]:g}-{td.noise_snr_db[1]:g} dB SNR")
        # speed, noise and gain run in the DataLoader workers, drawn by (seed, epoch, utterance index)
        perturbation = WavePerturbation(sr, tuple(td.speed_perturb), tuple(td.gain_db), cfg.trainer.seed, noise)
        if td.cache_audio:  # one cache per loader worker of each process on this machine
            copies = max(td.num_workers, 1) * int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            self.log_line(f"cache_audio: decoded training audio kept in memory, up to "
                          f"{check_audio_cache(entries, sr, copies) / 2**20:.0f} MB on this machine")
        self.train_set = AudioDataset(entries, sr, self.tokenizer, strict=td.strict, max_seconds=td.max_duration,
                                      perturbation=perturbation, min_seconds=cfg.model.frontend.win_ms / 1000,
                                      cache=td.cache_audio)
        self.sampler = BucketBatchSampler([e.duration for e in entries], td.batch_seconds, td.max_batch_size,
                                          td.num_buckets, cfg.trainer.seed, self.rank, self.world,
                                          sorted_epochs=td.sorted_epochs, with_epoch=True)
        # the auxiliary phone CTC's lexicon (None without loss.phone_ctc_weight); sizes the model's phone head
        self.lexicon = phone_lexicon(cfg, (e.text for e in entries))
        self.model = build_model(cfg.model).to(self.device)
        if self.rank == 0:
            check_free_space(self.out, checkpoint_bytes(self.model, cfg.trainer.keep_last))
        # fine-tuning: a new run from another's weights (with the frontend come its feature statistics)
        donor_parts = []
        if cfg.trainer.init_from and self.resume_from[0] is None:
            donor_parts = init_from(self.model, cfg.trainer.init_from, self.tokenizer, cfg.trainer.init_modules,
                                    self.log_line)
        if cfg.model.frontend.normalize and "frontend" not in donor_parts:
            self.estimate_feature_stats()
        self.build_training_modules()

        self.val_sets = []
        for path in cfg.validation_dataset.validation_manifest:
            ventries, vreport = read_manifest([path], max_duration=vd.max_duration, strict=False)
            self.log_line(f"validation {Path(path).name}: {vreport.summary()}")
            if not ventries:
                raise UsageError(f"validation manifest {path} has no usable utterance ({vreport.summary()}); "
                                 "fix it (asrlib manifest check) or set validation_dataset.validation_manifest = []")
            self.val_sets.append((Path(path).stem, AudioDataset(ventries, sr, self.tokenizer, strict=False,
                                                                max_seconds=vd.max_duration)))
        self.progress = Progress()
        self.skips = SkipTally(self.progress.skipped_reasons, self.log_line)
        self.logger = RunLogger(cfg.logger, self.out, to_dict(cfg)) if self.rank == 0 else None
        self.maybe_resume()
        n = count_parameters(self.model)
        self.log_line(f"model: {n / 1e6:.2f} M parameters; device {self.device}; world size {self.world}")

    def build_training_modules(self) -> None:
        """Loss module, DDP wrapper, compilation, optimiser, schedule, autocast dtype, GradScaler and
        weight average around ``self.model`` (on ``self.device``): everything ``train_step`` uses.
        bench/gpu_step.py calls it on a bare Trainer."""
        cfg = self.cfg
        self.loss_module = HybridLoss(self.model, cfg)
        self.ddp = None
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # No buffer broadcast before every forward: the model's buffers (the DFT kernel, the window,
            # the feature statistics) never change in training and every rank computed the same ones;
            # broadcasting them before every forward (1.3 MB) is a wait for nothing.
            # gradient_as_bucket_view: the gradients live in DDP's buckets, not copied in and out.
            self.ddp = DistributedDataParallel(self.loss_module, device_ids=ids, gradient_as_bucket_view=True,
                                               **NO_FORWARD_BUFFER_SYNC)
            if self.device.type == "cpu" and cfg.trainer.cpu_gradient_average == "shared_memory":
                if int(os.environ.get("LOCAL_WORLD_SIZE", self.world)) != self.world:
                    self.log_line("gradients averaged by gloo: the ranks are on more than one machine")
                elif why := shared_memory_average.attach(self.ddp, self.rank, self.world):
                    self.log_line(f"gradients averaged by gloo, not through shared memory: {why}")
        # What trains: the DDP wrapper (or the plain module). compile_scope "model" compiles all of
        # it (dynamo splits the graph at DDP's gradient buckets: DDPOptimizer); "blocks" compiles
        # each encoder block in place (its parameters are graph inputs, so blocks of one kind share
        # one compiled graph; the state_dict keeps its names, and evaluation runs them compiled too).
        self.train_module = self.ddp or self.loss_module
        if cfg.trainer.compile and cfg.trainer.compile_scope == "model":
            self.train_module = torch.compile(self.train_module)
        elif cfg.trainer.compile:
            # The blocks share one forward, and dynamo compiles it again for each mixer kind, for the
            # first shape and then dynamic lengths, for lengths a whole number of chunks, batches of
            # one, and evaluation without gradients: 14 graphs for a GQA + Mamba2 stack on CPU, more
            # than dynamo's default limit of 8 per function, past which it runs the rest eagerly.
            dynamo = torch._dynamo.config
            limit = "recompile_limit" if hasattr(dynamo, "recompile_limit") else "cache_size_limit"  # torch < 2.6
            setattr(dynamo, limit, max(getattr(dynamo, limit), 64))
            for block in self.model.encoder.blocks:
                block.compile()
        self.opt = build_optimizer(self.model, cfg.optim)
        self.sched = build_scheduler(self.opt, cfg.optim, cfg.trainer.max_steps)
        self.amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.trainer.precision]
        if self.amp_dtype == torch.float16 and self.device.type != "cuda":
            self.log_line("trainer.precision = fp16 needs a GPU; training in float32 (bf16 works on CPU)")
            self.amp_dtype = None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.ema = WeightEMA(self.model, cfg.trainer.ema_decay) if cfg.trainer.ema_decay > 0 else None

    def estimate_feature_stats(self, max_utterances: int = 256) -> None:
        """Per-bin log-mel mean/std from a seeded sample of training utterances (same on every rank).

        A resumed run overwrites them with the saved buffers, which are the same numbers.
        """
        n = len(self.train_set)
        pick = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.trainer.seed))[:max_utterances]
        items = (self.train_set[int(i)] for i in pick)
        mean, std = feature_stats(self.model.frontend, (item[0] for item in items if not isinstance(item, Skipped)))
        self.model.frontend.set_normalization(mean, std)
        self.log_line(f"feature normalisation from {min(n, max_utterances)} utterances: "
                      f"mean {float(mean.mean()):.2f}, std {float(std.mean()):.2f} (averaged over bins)")

    def claim_output_dir(self) -> None:
        """Refuse (or with --force archive) an earlier run in output_dir; check it is writable."""
        tc = self.cfg.trainer
        claim_output_dir(self.out, tc.resume, self.force, self.log_line, move=self.rank == 0)
        if self.rank == 0:
            check_writable(self.out)
        if self.world > 1:
            dist.barrier()

    def maybe_resume(self) -> None:
        (path, state), self.resume_from = self.resume_from, (None, None)
        if path is None:
            return
        check_compatible(path, state, to_dict(self.cfg.model), self.tokenizer)
        try:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            self.progress = Progress(**state["progress"])
            self.sampler.load_state_dict(state["sampler"])  # checks that seed and data match
            if self.ema is not None and "ema" in state:
                self.ema.load_state_dict(state["ema"])
            elif self.ema is not None:  # a run that kept no average: it starts from the resumed weights
                self.ema = WeightEMA(self.model, self.cfg.trainer.ema_decay)
                self.log_line(f"{path} holds no weight average; trainer.ema_decay starts one from its weights")
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise UsageError(f"cannot resume from {path}: {str(e).strip().splitlines()[0]}") from None
        set_rng_state(state["rng"], self.device)
        self.skips = SkipTally(self.progress.skipped_reasons, self.log_line)
        self.log_line(f"resumed from {path} at step {self.progress.step}")
        if (moved := self.sampler.resharded) is not None:  # saved on another number of processes
            self.progress.batches_in_epoch = self.sampler.consumed
            was = moved["saved_world_size"]
            self.log_line(f"world size {was} when saved, {self.world} now: epoch {self.progress.epoch} continues at "
                          f"batch {self.sampler.consumed} of {moved['batches_per_rank']} per process "
                          f"({moved['seen_again']} of its utterances seen twice, none skipped); a step now holds "
                          f"{self.world / was:g}x the audio it did, and the learning-rate schedule goes on by steps")

    # ------------------------------------------------------------------ train_step
    def micro_batches(self):
        """Endless stream of batches, epoch after epoch, resuming mid-epoch where saved."""
        loader = self.train_loader()
        while True:
            p = self.progress
            self.sampler.load_state_dict(self.sampler.state_dict(p.epoch, p.batches_in_epoch))
            for batch in loader:  # a new pass over the sampler; persistent workers are reused
                p.batches_in_epoch += 1
                if batch.dropped:
                    p.skipped_utterances += batch.dropped
                    self.skips.attribute(batch.skips)
                if len(batch) > 0:
                    yield batch
            self.progress.epoch += 1
            self.progress.batches_in_epoch = 0

    def train_loader(self) -> torch.utils.data.DataLoader:
        """The training DataLoader (one per run; each epoch is a new pass over it)."""
        td = self.cfg.train_dataset
        workers = td.num_workers
        # A private generator: creating a DataLoader iterator draws a seed from it, and drawing
        # from the global RNG would make a resumed run's dropout differ from an uninterrupted one.
        args = dict(collate_fn=self.train_set.collate, num_workers=workers,
                    generator=torch.Generator().manual_seed(self.cfg.trainer.seed),
                    pin_memory=td.pin_memory and self.device.type == "cuda")
        if workers > 0:  # a signal to the whole run is the trainer's alone to act on (asrlib/stopping.py)
            args.update(persistent_workers=td.persistent_workers, prefetch_factor=td.prefetch_factor,
                        worker_init_fn=ignore_stop_signals)
        return torch.utils.data.DataLoader(self.train_set, batch_sampler=self.sampler, **args)

    def train_step(self, batches: list[Batch]) -> dict[str, float]:
        """One optimiser update over ``batches`` (gradient accumulation); returns logged values."""
        self.model.train()
        seed, step = self.cfg.trainer.seed, self.progress.step
        gen = torch.Generator().manual_seed(stream_seed(seed, self.rank, step, "augment"))
        torch.manual_seed(stream_seed(seed, self.rank, step, "dropout"))  # CPU and every CUDA device
        module = self.train_module
        totals = {"loss": 0.0, "rnnt": 0.0, "ctc": 0.0, "infeasible": 0.0}
        finite, seconds = True, 0.0
        for i, batch in enumerate(batches):
            seconds += float(batch.audio_lengths.sum()) / self.cfg.model.frontend.sample_rate
            sync = self.ddp is None or i == len(batches) - 1
            ctx = self.ddp.no_sync() if (self.ddp is not None and not sync) else contextlib.nullcontext()
            with ctx, torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                     enabled=self.amp_dtype is not None):
                args = (t.to(self.device, non_blocking=True) for t in (batch.audio, batch.audio_lengths,
                                                                        batch.tokens, batch.token_lengths))
                noise = (spec_augment_noise(len(batch), self.cfg.spec_augment, gen).to(self.device)
                         if step >= self.cfg.spec_augment.start_step else None)  # None: no SpecAugment
                # the pruned loss's scales warm up with the step (passed only there: a changing int
                # would make torch.compile recompile the full loss for nothing)
                kw = {"step": step} if self.cfg.loss.rnnt == "pruned" else {}
                if self.lexicon is not None:  # the transcripts spelled in phones, for the phone CTC head
                    phones, phone_lengths = self.lexicon.targets(batch.texts)
                    kw.update(phones=phones.to(self.device), phone_lengths=phone_lengths.to(self.device))
                out = module(*args, noise, **kw)
            loss = out["loss"] / len(batches)
            finite &= bool(torch.isfinite(loss))
            self.scaler.scale(loss).backward()
            for k in ("rnnt_simple", "rnnt_pruned", "inter_ctc", "phone_ctc"):  # optional parts, for the curves
                if k in out:
                    totals[k] = totals.get(k, 0.0) + float(out[k]) / len(batches)
            for k in ("loss", "rnnt", "ctc", "infeasible"):
                totals[k] += float(out[k].detach()) / (len(batches) if k != "infeasible" else 1)
        self.scaler.unscale_(self.opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        grads_finite = bool(torch.isfinite(grad_norm))
        if self.world > 1:  # every rank must take the same decision
            flags = torch.tensor([float(finite), float(grads_finite)], device=self.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MIN)
            finite, grads_finite = bool(flags[0] > 0), bool(flags[1] > 0)
        if finite and grads_finite:
            self.scaler.step(self.opt)
            self.sched.step()
            if self.ema is not None:
                self.ema.update(self.model)
        elif finite and self.scaler.is_enabled():
            # fp16: a finite loss whose scaled gradients overflowed. The GradScaler is still
            # calibrating (or backing off) its scale: an expected skip, not a broken batch.
            self.progress.skipped_scaler += 1
        else:
            self.progress.skipped_nonfinite += 1
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        self.progress.step += 1
        self.progress.infeasible += int(totals["infeasible"])
        self.progress.audio_seconds += seconds
        totals.update(grad_norm=float(grad_norm), lr=self.sched.get_last_lr()[0], seconds=seconds,
                      skipped=float(not (finite and grads_finite)))
        return totals

    # ------------------------------------------------------------------ evaluate
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Losses and WERs on the validation sets, of the weight average when there is one; then
        also of the training weights, under ``<set>/no_ema/…``, to show what the average gains."""
        model = self.shipped_model().eval()
        results = {}
        for name, dataset in self.val_sets:
            r = evaluate_dataset(model, dataset, self.tokenizer, self.device, self.cfg, self.rank, self.world)
            results.update({f"{name}/{k}": v for k, v in r.items() if not isinstance(v, list)})
            if self.ema is not None:
                raw = evaluate_dataset(self.model.eval(), dataset, self.tokenizer, self.device, self.cfg,
                                       self.rank, self.world)
                results.update({f"{name}/no_ema/{k}": v for k, v in raw.items() if not isinstance(v, list)})
            if self.logger:
                for ref, hyp in r["examples"][:3]:
                    self.logger.text(self.progress.step, f"{name}/example", f"ref: {ref}\nhyp: {hyp}")
        return results

    def shipped_model(self) -> torch.nn.Module:
        """The weights a run evaluates and ships: the weight average when it keeps one."""
        return self.model if self.ema is None else self.ema.module

    # ------------------------------------------------------------------ save_checkpoint
    def save_checkpoint(self, best: bool = False) -> Path | None:
        if self.rank != 0:
            return None
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": self.sampler.state_dict(self.progress.epoch, self.progress.batches_in_epoch),
            "progress": self.progress.__dict__.copy(),
            "rng": rng_state(self.device),
            "config": to_dict(self.cfg),
            **ckpt.tokenizer_state(self.tokenizer),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
        }
        folder = self.out / "checkpoints"
        try:
            path = ckpt.atomic_save(state, folder / f"step-{self.progress.step:08d}.pt")
            ckpt.rotate(folder, self.cfg.trainer.keep_last, self.progress.step)
            if best:
                ckpt.atomic_save(state, folder / "best.pt")
                ckpt.export_weights(self.shipped_model(), self.out / "best_model", self.tokenizer,
                                    self.lexicon.source if self.lexicon is not None else None)
        except OSError as e:  # disk full, folder made read-only, …
            raise UsageError(f"could not write a checkpoint to {folder}: {e.strerror or e}; free space or fix the "
                             f"folder, then continue with: {self.resume_command}") from None
        self.last_save = time.monotonic()
        return path

    # ------------------------------------------------------------------ the loop
    def fit(self) -> Progress:
        tc = self.cfg.trainer
        stream = self.micro_batches()
        bar = None
        if self.rank == 0 and tc.progress_bar:
            from tqdm import tqdm

            bar = tqdm(total=tc.max_steps, initial=self.progress.step, desc="train", dynamic_ncols=True)
        t0, seconds0 = time.perf_counter(), self.progress.audio_seconds
        self.last_save = time.monotonic()
        with GracefulStop(announce=self.rank == 0) as stop:
            try:
                while self.progress.step < tc.max_steps and not stop.any_rank(self.world, self.device):
                    self.loop_step(stream, bar, t0, seconds0)
                if stop.requested:
                    self.stopped_by = stop.name
                    path = self.save_checkpoint()
                    self.log_line(f"stopped by {stop.name} at step {self.progress.step}; saved {path or 'a checkpoint'}. "
                                  f"Continue with: {self.resume_command}")
            except Aborted as e:  # a second signal, maybe during that save: out now, no save
                self.stopped_by, self.aborted = e.name, True
                self.log_line(f"second {e.name}: stopped without saving at step {self.progress.step}. Continue from "
                              f"the last checkpoint with: {self.resume_command}")
        stream.close()  # the loader's workers end now, not when the generator is collected
        if bar:
            bar.close()
        self.log_line(skip_summary(self.progress.skipped_utterances, self.progress.skipped_reasons))
        if self.logger:
            self.logger.close()
        return self.progress

    def loop_step(self, stream, bar, t0: float, seconds0: float) -> None:
        """One optimiser step, then logging, evaluation and the checkpoints that fall due."""
        tc = self.cfg.trainer
        values = self.train_step([next(stream) for _ in range(self.cfg.optim.accumulate)])
        step = self.progress.step
        speed = (self.progress.audio_seconds - seconds0) * self.world / max(time.perf_counter() - t0, 1e-9)
        if bar:
            bar.update(1)
            bar.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{values['lr']:.2e}", audio_s_per_s=f"{speed:.1f}")
        if self.logger and (step % tc.log_every == 0 or step == 1):
            self.logger.log(step, "train", {**values, "audio_seconds_per_second": speed})
        if step % tc.eval_every == 0 or step == tc.max_steps:
            metrics = self.evaluate() if self.val_sets else {}
            score = _primary_wer(metrics)
            # without a validation set the latest weights are the best we know: best_model/ follows them
            is_best = score < self.progress.best_wer or not self.val_sets
            if is_best:
                self.progress.best_wer = score
            if self.logger:
                self.logger.log(step, "valid", metrics)
            self.log_line(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            self.save_checkpoint(best=is_best)
        elif tc.save_every_minutes > 0 and time.monotonic() - self.last_save >= 60 * tc.save_every_minutes:
            self.save_checkpoint()

    def log_line(self, text: str) -> None:
        if self.rank == 0:
            print(text, file=sys.stderr, flush=True)


def _primary_wer(metrics: dict[str, float]) -> float:
    """Validation WER that picks the best checkpoint: mean RNN-T WER over validation sets (of the
    weight average when the run keeps one: the training weights' ``no_ema`` keys do not count)."""
    vals = [v for k, v in metrics.items() if k.endswith("wer_rnnt") and "/no_ema/" not in k]
    return sum(vals) / len(vals) if vals else math.inf


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="asrlib train", description="Train a hybrid RNN-T + CTC model from a TOML config.")
    p.add_argument("--config", required=True, help="TOML file (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=3e-4 (repeatable)")
    p.add_argument("--resume", default=None, help="'auto' (latest in output_dir) or a checkpoint path")
    p.add_argument("--force", action="store_true", help="start a new run in an output_dir that holds an earlier "
                   "run, after moving that run to <output_dir>/earlier-runs/<time>/ (nothing is deleted)")
    return p.parse_args(argv)


def resume_command(args: argparse.Namespace) -> str:
    """The command line that continues this run: the same launcher, config and overrides, --resume auto."""
    sets = "".join(f" --set {o}" for o in args.overrides)
    return f"{launcher('asrlib.train', 'asrlib train')} --config {args.config}{sets} --resume auto"


@report_usage_errors("train", TokenizerError, ManifestError, DataError, ConfigError)
def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    overrides = list(args.overrides) + ([f"trainer.resume={args.resume}"] if args.resume else [])
    cfg = load_config(args.config, overrides)
    trainer = Trainer(cfg, force=args.force, resume_command=resume_command(args))
    trainer.setup()
    trainer.fit()
    if dist.is_initialized() and not trainer.aborted:  # aborted: another rank may wait in a collective
        dist.barrier()  # leave together: a rank tearing gloo down while another still uses it can abort
        dist.destroy_process_group()
    if trainer.stopped_by:
        return 128 + int(getattr(signal, trainer.stopped_by))
    return 0


if __name__ == "__main__":
    sys.exit(main())
