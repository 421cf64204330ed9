"""The trainer, end to end at the tiny preset on CPU.

- overfitting one batch drives both losses (RNN-T and CTC) down by >= 10x;
- resume is exact: N steps straight == N/2 steps, a new process-like Trainer resuming from the
  checkpoint, N/2 more (model, optimiser, scheduler, RNG bit-equal; dropout, SpecAugment and
  speed perturbation all on, crossing an epoch boundary);
- a non-finite loss skips the update and is counted;
- DDP with torchrun (2 CPU processes, gloo) == one process on the same global batch;
- ClearML is never imported unless asked for, and asking without it installed names the extra;
- ``asrlib train`` through the CLI writes a checkpoint and metrics.jsonl; unknown keys are errors.

Utterances come from data_samples/digits (real speech), copied into tmp_path manifests with
absolute audio paths.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asrlib import cli
from asrlib import checkpoint as ckpt
from asrlib.config import ConfigError, LoggerConfig, load_config
from asrlib.logger import MissingExtraError, RunLogger, read_metrics
from asrlib.train import NO_FORWARD_BUFFER_SYNC, Trainer, _primary_wer

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "data_samples" / "digits"
TINY = ROOT / "configs" / "tiny.toml"

# Lines of digits/train.jsonl (0-based). Short utterances keep every step cheap.
SHORT = [0, 9, 11]  # "three" (3 tokens), "three six" (5), "eight" (4)
EQUAL_TOKENS = [0, 15]  # "three", "nine": 3 tokens each, 0.61 s and 0.79 s
RESUME_SET = [0, 6, 9, 11, 13, 15]  # six utterances of 0.6-1.1 s


def make_manifest(folder: Path, lines: list[int], name: str = "train.jsonl") -> Path:
    rows = (DIGITS / "train.jsonl").read_text().splitlines()
    out = []
    for i in lines:
        r = json.loads(rows[i])
        r["audio_filepath"] = str(DIGITS / r["audio_filepath"])
        out.append(json.dumps(r))
    path = folder / name
    path.write_text("\n".join(out) + "\n")
    return path


def tiny_config(out: Path, train: Path, *extra: str, valid: Path | None = None):
    """The tiny preset with test-sized data, quiet logging, and ``extra`` overrides."""
    over = [
        f"trainer.output_dir={out}",
        f"train_dataset.train_manifest={train}",
        f"validation_dataset.validation_manifest={valid}" if valid else "validation_dataset.validation_manifest=[]",
        "trainer.progress_bar=false",
        "logger.log_to_tensorboard=false",
        *extra,
    ]
    return load_config(TINY, over)


def assert_same_tree(a, b, where: str = "") -> None:
    """Recursive bit-exact comparison of nested dicts/lists/tensors."""
    if isinstance(a, torch.Tensor):
        if not (isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)):
            raise AssertionError(f"tensor differs at {where}")
    elif isinstance(a, dict):
        assert set(a) == set(b), f"keys differ at {where}: {set(a) ^ set(b)}"
        for k in a:
            assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"lengths differ at {where}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_run(expected: dict, got: dict, progress_keys) -> None:
    """Two ``_full_state`` snapshots agree bit for bit: model, optimiser, scheduler, RNG, progress."""
    assert_same_tree(expected["model"], got["model"], "model")
    assert_same_tree(expected["opt"], got["opt"], "optimizer")
    assert_same_tree(expected["sched"], got["sched"], "scheduler")
    assert torch.equal(expected["rng"], got["rng"])
    for k in progress_keys:
        assert expected["progress"][k] == got["progress"][k], k


# --------------------------------------------------------------------------- learning


def test_overfits_one_batch(tmp_path):
    train = make_manifest(tmp_path, SHORT)
    cfg = tiny_config(tmp_path / "run", train, "spec_augment.freq_masks=0", "spec_augment.time_masks=0",
                      "optim.schedule=constant", "optim.warmup_steps=0", "optim.lr=3e-3",
                      "train_dataset.num_buckets=1", "train_dataset.batch_seconds=100.0")
    tr = Trainer(cfg)
    tr.setup()
    batch = next(tr.micro_batches())
    assert len(batch) == 3  # the whole set in one batch
    first = tr.train_step([batch])
    assert first["rnnt"] > 5 and first["ctc"] > 5  # per-token losses of an untrained model
    for _ in range(100):
        v = tr.train_step([batch])
        if first["rnnt"] / v["rnnt"] >= 10 and first["ctc"] / v["ctc"] >= 10:
            break
    assert first["rnnt"] / v["rnnt"] >= 10, (first, v)
    assert first["ctc"] / v["ctc"] >= 10, (first, v)
    assert tr.progress.step <= 101 and tr.progress.skipped_nonfinite == 0


def test_feature_normalisation_standardises_the_training_audio(tmp_path):
    """With frontend.normalize the trainer installs stats that make every bin mean 0, std 1.

    The reference is the definition: over all frames of the training utterances (all of them,
    fewer than the 256 sampled), the normalised features have per-bin mean 0 and std 1.
    """
    train = make_manifest(tmp_path, RESUME_SET)
    tr = Trainer(tiny_config(tmp_path / "run", train, "model.frontend.normalize=true"))
    tr.setup()
    fe = tr.model.frontend.eval()
    with torch.no_grad():
        feats = torch.cat([fe(tr.train_set[i][0][None], torch.tensor([len(tr.train_set[i][0])]))[0][0]
                           for i in range(len(tr.train_set))]).double()
    assert feats.shape[0] > 300
    torch.testing.assert_close(feats.mean(0), torch.zeros(feats.shape[1], dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(feats.std(0, unbiased=False), torch.ones(feats.shape[1], dtype=torch.float64),
                               atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- resume


def _resume_config(out: Path, train: Path, valid: Path, *extra: str):
    return tiny_config(out, train, "model.encoder.dropout=0.1", "model.prediction.dropout=0.1",
                       "train_dataset.speed_perturb=[0.9, 1.0, 1.1]", "train_dataset.gain_db=[-20.0, 6.0]",
                       "train_dataset.batch_seconds=2.5", "model.frontend.normalize=true",
                       "train_dataset.max_batch_size=2", "train_dataset.num_buckets=2",
                       "trainer.max_steps=6", "trainer.eval_every=3", "optim.warmup_steps=2", *extra, valid=valid)


def _full_state(tr: Trainer) -> dict:
    return {"model": tr.model.state_dict(), "opt": tr.opt.state_dict(), "sched": tr.sched.state_dict(),
            "rng": torch.get_rng_state(), "progress": dict(tr.progress.__dict__)}


@pytest.mark.parametrize("noise", [False, True])
def test_resume_is_bit_exact(tmp_path, noise, capsys):
    """With ``noise``, other training utterances are mixed in as noise (babble) as well."""
    train = make_manifest(tmp_path, RESUME_SET)
    extra = (f"train_dataset.noise_manifest={train}", "train_dataset.noise_prob=0.7") if noise else ()
    valid = make_manifest(tmp_path, [13], "valid.jsonl")
    N = 6

    straight = Trainer(_resume_config(tmp_path / "a", train, valid, *extra))
    straight.setup()
    assert len(straight.sampler) < N  # the run crosses an epoch boundary
    straight.fit()
    assert straight.progress.step == N
    expected = _full_state(straight)

    first = Trainer(_resume_config(tmp_path / "b", train, valid, *extra))
    first.setup()  # the scheduler is built for max_steps = N ...
    first.cfg.trainer.max_steps = N // 2  # ... but this run stops half-way (a checkpoint at N/2)
    first.fit()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "b" / "checkpoints")] == ["step-00000003.pt"]
    torch.manual_seed(999)  # whatever happens in between must not matter
    del first

    resumed = Trainer(_resume_config(tmp_path / "b", train, valid, *extra, "trainer.resume=auto"))
    resumed.setup()
    assert resumed.progress.step == N // 2
    resumed.fit()
    assert_same_run(expected, _full_state(resumed),
                    ("step", "epoch", "batches_in_epoch", "audio_seconds", "skipped_nonfinite"))

    resumed.model.train()  # dropout really draws random numbers in this configuration
    b = next(resumed.micro_batches())
    y = resumed.model(b.audio, b.audio_lengths)[0]
    assert not torch.equal(y, resumed.model(b.audio, b.audio_lengths)[0])
    if noise:  # the noise reached the batches: the same first batch differs from a run without it
        noisy, plain = (Trainer(_resume_config(tmp_path / d, train, valid, *e)) for d, e in (("c", extra), ("d", ())))
        noisy.setup()
        plain.setup()
        assert noisy.train_set.perturbation.noise is not None and plain.train_set.perturbation.noise is None
        a, b = next(noisy.micro_batches()), next(plain.micro_batches())
        assert a.indices == b.indices and not torch.equal(a.audio, b.audio)
        assert "noise: kept 6 lines (0.00 h); dropped none; added to 70% of utterances at 10-20 dB SNR" in capsys.readouterr().err


def test_a_noise_file_that_fails_in_a_loader_worker_is_one_line_naming_its_line(tmp_path, capsys):
    """The header reads (so setup keeps the line), the segment does not: the error is raised in a
    DataLoader worker, re-raised by PyTorch in the trainer's process, and reported as the
    worker's one line, manifest:line and what to do, with status 2."""
    import soundfile as sf

    train = make_manifest(tmp_path, RESUME_SET)
    sf.write(tmp_path / "n.wav", [0.1, -0.1] * 4000, 16000)
    noise = tmp_path / "noise.jsonl"
    noise.write_text(json.dumps({"audio_filepath": "n.wav", "duration": 1.0, "offset": 100.0}) + "\n")
    argv = ["train", "--config", str(TINY)]
    for setting in (f"trainer.output_dir={tmp_path / 'run'}", f"train_dataset.train_manifest={train}",
                    "validation_dataset.validation_manifest=[]", "trainer.progress_bar=false",
                    "logger.log_to_tensorboard=false", "trainer.max_steps=2", "train_dataset.num_workers=1",
                    f"train_dataset.noise_manifest={noise}", "train_dataset.noise_prob=1.0"):
        argv += ["--set", setting]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("asrlib train: error: ") and f"{noise}:1: " in err
    assert err.endswith("Fix or remove this line of the noise manifest.") and "Caught" not in err


def test_weight_average_follows_the_steps_and_resumes_bit_exact(tmp_path):
    """``trainer.ema_decay``: the average equals the formula applied to the weights after every
    update (float64 reference), leaves the training itself bit-identical to a run without it, is
    checkpointed, and a resumed run continues it bit-exactly."""
    train = make_manifest(tmp_path, RESUME_SET)
    valid = make_manifest(tmp_path, [13], "valid.jsonl")
    decay, N = 0.3, 6  # d_n = min(0.3, n / (9 + n)): the warm-up for 3 updates, then the decay

    straight = Trainer(_resume_config(tmp_path / "a", train, valid, f"trainer.ema_decay={decay}"))
    straight.setup()
    ref = {k: v.double().clone() for k, v in straight.model.state_dict().items()}
    step = straight.train_step

    def step_and_average(batches):
        out = step(batches)
        n = straight.progress.step
        d = min(decay, n / (9 + n))
        for k, v in straight.model.state_dict().items():
            ref[k] = d * ref[k] + (1 - d) * v.double() if v.is_floating_point() else v.clone()
        return out

    straight.train_step = step_and_average
    straight.fit()
    assert straight.progress.step == N and straight.progress.skipped_nonfinite == 0
    got = straight.ema.module.state_dict()
    for k, v in ref.items():
        torch.testing.assert_close(got[k].double(), v, rtol=1e-5, atol=1e-6, msg=k)
    trained = straight.model.state_dict()
    assert any(not torch.allclose(got[k], trained[k]) for k in trained if trained[k].is_floating_point())

    plain = Trainer(_resume_config(tmp_path / "plain", train, valid))  # the average changes nothing that trains
    plain.setup()
    plain.fit()
    assert_same_run(_full_state(plain), _full_state(straight), ("step", "epoch", "batches_in_epoch"))

    first = Trainer(_resume_config(tmp_path / "b", train, valid, f"trainer.ema_decay={decay}"))
    first.setup()
    first.cfg.trainer.max_steps = N // 2
    first.fit()
    del first
    resumed = Trainer(_resume_config(tmp_path / "b", train, valid, f"trainer.ema_decay={decay}",
                                     "trainer.resume=auto"))
    resumed.setup()
    assert resumed.ema.updates == N // 2
    resumed.fit()
    assert_same_run(_full_state(straight), _full_state(resumed), ("step", "epoch", "batches_in_epoch"))
    assert_same_tree(straight.ema.state_dict(), resumed.ema.state_dict(), "ema")


def test_weight_average_is_what_the_run_evaluates_and_ships(tmp_path):
    """With ``trainer.ema_decay`` the validation numbers, ``best_model/`` and what ``asrlib
    evaluate`` reads from a checkpoint are the average's; the training weights stay for resuming."""
    from asrlib.checkpoint import load_model
    from asrlib.evaluate import evaluate_dataset

    train = make_manifest(tmp_path, SHORT)
    valid = make_manifest(tmp_path, [13], "valid.jsonl")
    tr = Trainer(tiny_config(tmp_path / "run", train, "trainer.max_steps=3", "trainer.eval_every=1",
                             "trainer.ema_decay=0.5", valid=valid))
    tr.setup()
    tr.fit()
    name, dataset = tr.val_sets[0]
    metrics = tr.evaluate()
    of = {which: evaluate_dataset(m, dataset, tr.tokenizer, tr.device, tr.cfg)["loss"]
          for which, m in (("average", tr.ema.module), ("training", tr.model.eval()))}
    assert metrics[f"{name}/loss"] == of["average"] != of["training"]
    assert metrics[f"{name}/no_ema/loss"] == of["training"]  # logged beside it, to compare
    rows = [r for r in read_metrics(tmp_path / "run") if r.get("split") == "valid"]
    assert len(rows) == 3 and all(f"{name}/no_ema/wer_rnnt" in r for r in rows)
    # the best checkpoint is picked by the average's WER alone
    assert _primary_wer({"dev/wer_rnnt": 0.2, "dev/no_ema/wer_rnnt": 0.1, "other/wer_rnnt": 0.4}) == pytest.approx(0.3)

    ck = ckpt.load_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000003.pt")
    from_checkpoint, _ = load_model(tmp_path / "run" / "checkpoints" / "step-00000003.pt")
    for k, v in tr.ema.module.state_dict().items():
        assert torch.equal(from_checkpoint.state_dict()[k], v), k
        assert torch.equal(ck["model"][k], tr.model.state_dict()[k]), k  # the training weights, for resume
    shipped, _ = load_model(tmp_path / "run" / "best_model")
    best_ck = ckpt.load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    for k, v in best_ck["ema"]["model"].items():
        assert torch.equal(shipped.state_dict()[k], v), k

    from asrlib.average import average_checkpoints  # `asrlib average` averages the averages

    paths = [tmp_path / "run" / "checkpoints" / f"step-0000000{i}.pt" for i in (2, 3)]
    averaged, _ = average_checkpoints(paths)
    emas = [ckpt.load_checkpoint(p)["ema"]["model"] for p in paths]
    for k, v in averaged.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (emas[0][k] + emas[1][k]) / 2, msg=k)


def test_cached_audio_trains_the_same_run(tmp_path):
    """``train_dataset.cache_audio`` changes where the audio comes from, not what trains: across an
    epoch boundary, with speed and gain drawn anew per epoch, the weights, optimiser and progress
    equal those of a run that decodes every file every time."""
    train = make_manifest(tmp_path, RESUME_SET)
    valid = make_manifest(tmp_path, [13], "valid.jsonl")
    runs = {}
    for name, extra in (("plain", ()), ("cached", ("train_dataset.cache_audio=true",))):
        tr = Trainer(_resume_config(tmp_path / name, train, valid, *extra))
        tr.setup()
        assert len(tr.sampler) < tr.cfg.trainer.max_steps  # a second epoch reads from the cache
        tr.fit()
        runs[name] = _full_state(tr)
    assert tr.train_set.cache is not None and sorted(tr.train_set.cache) == list(range(len(RESUME_SET)))
    assert_same_run(runs["plain"], runs["cached"], ("step", "epoch", "batches_in_epoch", "audio_seconds"))


# --------------------------------------------------------------------------- auxiliary phone CTC


def test_phone_ctc_trains_its_head_logs_its_loss_and_names_a_missing_word(tmp_path, capsys):
    """loss.phone_ctc_weight: the trainer spells each transcript with the lexicon, the phone head
    learns (it is in the model, so checkpoints and resume carry it), and its loss is logged; a
    transcript word the lexicon lacks stops the run before step 1 with one line naming it."""
    train = make_manifest(tmp_path, SHORT)  # "three", "three six", "eight"
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("three TH R IY\nsix S IH K S\neight EY T\n")
    phones = ("loss.phone_ctc_weight=0.5", f"loss.phone_lexicon={lexicon}", "trainer.max_steps=3",
              "trainer.log_every=1", "loss.phone_ctc_block=1")
    tr = Trainer(tiny_config(tmp_path / "run", train, *phones, valid=train))
    tr.setup()
    assert tr.cfg.model.phone_vocab_size == 8 and tr.model.phone_head.proj.out_features == 9  # TH R IY S IH K EY T + blank
    assert tr.cfg.model.phone_block == 1  # the model records where its head reads, for inference
    before = tr.model.phone_head.proj.weight.detach().clone()
    tr.fit()
    assert not torch.equal(before, tr.model.phone_head.proj.weight)
    rows = [m for m in read_metrics(tmp_path / "run") if m["split"] == "train"]
    assert len(rows) == 3 and all(math.isfinite(m["phone_ctc"]) and m["phone_ctc"] > 0 for m in rows)
    state = torch.load(ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")[-1], weights_only=True)
    assert torch.equal(state["model"]["phone_head.proj.weight"], tr.model.phone_head.proj.weight)
    shipped = tmp_path / "run" / "best_model"  # the folder carries the lexicon the head's phones come from
    assert (shipped / "lexicon.txt").read_text() == lexicon.read_text()
    assert ckpt.load_model(shipped)[0].cfg.phone_block == 1

    lexicon.write_text("three TH R IY\nsix S IH K S\n")  # no "eight"
    argv = ["train", "--config", str(TINY)]
    for s in (f"trainer.output_dir={tmp_path / 'run2'}", f"train_dataset.train_manifest={train}",
              "validation_dataset.validation_manifest=[]", "logger.log_to_tensorboard=false", *phones):
        argv += ["--set", s]
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()  # the manifest's summary line, then the error
    assert "Traceback" not in "\n".join(err) and sum("error" in line for line in err) == 1
    assert err[-1].startswith("asrlib train: error: the lexicon") and "'eight' (1x)" in err[-1]


# --------------------------------------------------------------------------- non-finite


def test_nonfinite_loss_is_skipped_and_counted(tmp_path):
    cfg = tiny_config(tmp_path / "run", make_manifest(tmp_path, SHORT[:2]))
    tr = Trainer(cfg)
    tr.setup()
    batch = next(tr.micro_batches())
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    real_forward = tr.loss_module.forward

    def nan_once(*args, **kwargs):
        out = real_forward(*args, **kwargs)
        out["loss"] = out["loss"] * float("nan")  # keeps the graph: NaN gradients follow
        return out

    tr.loss_module.forward = nan_once
    v = tr.train_step([batch])
    assert v["skipped"] == 1.0 and tr.progress.skipped_nonfinite == 1
    for k, p in tr.model.state_dict().items():
        assert torch.equal(p, before[k]), f"{k} changed by a skipped step"
    assert tr.sched.last_epoch == 0 and len(tr.opt.state) == 0  # no optimiser or schedule step
    assert all(p.grad is None for p in tr.model.parameters())  # NaN gradients were cleared

    # inf in the audio is caught the same way (loss or gradient non-finite)
    bad = type(batch)(batch.audio.clone(), batch.audio_lengths, batch.tokens, batch.token_lengths,
                      batch.texts, batch.indices)
    bad.audio[0, 100] = float("inf")
    del tr.loss_module.forward  # back to the real forward
    tr.train_step([bad])
    assert tr.progress.skipped_nonfinite == 2
    assert all(torch.equal(p, before[k]) for k, p in tr.model.state_dict().items())

    v = tr.train_step([batch])  # a finite step updates the parameters again
    assert v["skipped"] == 0.0 and tr.progress.skipped_nonfinite == 2
    changed = [k for k, p in tr.model.state_dict().items() if not torch.equal(p, before[k])]
    assert len(changed) > 0.9 * len(before)


# --------------------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_is_built_without_a_buffer_broadcast_per_forward_and_without_a_deprecation_warning(tmp_path):
    """The keyword the trainer gives DistributedDataParallel stops the broadcast of the buffers
    before every forward (DDP's own answer, ``will_sync_module_buffers``), and is the name this
    torch accepts without warning (torch 2.13 deprecated ``broadcast_buffers``)."""
    import warnings

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    module = torch.nn.Linear(3, 2)
    module.register_buffer("constant", torch.ones(4))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ddp = DistributedDataParallel(module, **NO_FORWARD_BUFFER_SYNC)
        assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]
        assert not ddp.will_sync_module_buffers()
        assert DistributedDataParallel(module).will_sync_module_buffers()  # the default would sync them
    finally:
        dist.destroy_process_group()


# torchrun runs this instead of ``-m asrlib.train`` for the compiled case: torch.compile with the
# aot_eager backend (dynamo's capture and AOT autograd, no code generation), as the in-process
# compile tests patch it.
# Each rank writes its count of captured graphs to a file of its own (ranks printing to one
# stderr can interleave their lines).
AOT_EAGER_TRAIN = """import functools, os, pathlib, runpy, torch
from torch._dynamo.utils import counters
torch.compile = functools.partial(torch.compile, backend="aot_eager")
try:
    runpy.run_module("asrlib.train", run_name="__main__")
finally:
    pathlib.Path(f"graphs-rank{os.environ['RANK']}.txt").write_text(str(counters["stats"]["unique_graphs"]))
"""


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled_blocks"])
def test_ddp_two_processes_equal_one_process(tmp_path, compiled):
    """Two gloo ranks with one utterance each == one process with both in one batch.

    Both utterances have 3 target tokens, so the mean of the per-rank per-token means (what
    DDP's gradient averaging computes) equals the per-token mean of the joint batch. Compiled:
    the ranks compile each encoder block (trainer.compile, the "blocks" scope) and the one
    process runs eagerly, so DDP's gradient hooks must fire from the compiled blocks' backward.
    """
    train = make_manifest(tmp_path, EQUAL_TOKENS)
    common = ["spec_augment.freq_masks=0", "spec_augment.time_masks=0", "trainer.max_steps=1",
              "trainer.eval_every=100", "trainer.num_threads=1", "train_dataset.num_buckets=1",
              "train_dataset.batch_seconds=100.0", "optim.warmup_steps=0", "optim.schedule=constant",
              "trainer.progress_bar=false", "logger.log_to_tensorboard=false",
              f"train_dataset.train_manifest={train}", "validation_dataset.validation_manifest=[]"]
    launch = ["-m", "asrlib.train"]
    ddp_only = [f"trainer.output_dir={tmp_path / 'ddp'}", "train_dataset.max_batch_size=1"]
    if compiled:
        (tmp_path / "train_aot_eager.py").write_text(AOT_EAGER_TRAIN)
        launch = [str(tmp_path / "train_aot_eager.py")]
        ddp_only += ["trainer.compile=true", "trainer.compile_scope=blocks"]
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(_free_port()), *launch, "--config", str(TINY)]
    for o in common + ddp_only:
        args += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "world size 2" in r.stderr
    if compiled:  # each rank captured the graphs of both block kinds: not silently eager
        captured = [int((tmp_path / f"graphs-rank{rank}.txt").read_text()) for rank in (0, 1)]
        assert min(captured) >= 2, (captured, r.stderr[-3000:])

    cfg = load_config(TINY, common + [f"trainer.output_dir={tmp_path / 'one'}", "train_dataset.max_batch_size=2"])
    one = Trainer(cfg)
    one.setup()
    assert len(one.sampler) == 1 and len(one.sampler.plan()[0]) == 2  # both utterances in one batch
    init = {k: v.clone() for k, v in one.model.state_dict().items()}
    one.fit()

    ddp_state = ckpt.load_checkpoint(tmp_path / "ddp" / "checkpoints" / "step-00000001.pt")
    assert ddp_state["progress"]["step"] == 1
    # After one AdamW step the first moment is exactly (1 - beta1) * the (clipped, all-reduced)
    # gradient, so comparing it compares the gradients DDP averaged with the single-process
    # gradients of the joint batch. Tolerance: 1e-5 of the largest entry (float32 round-off of
    # a different summation order). Parameters are not compared entry by entry: Adam divides
    # each gradient by its own magnitude, so an entry that is pure round-off (|g| ~ 1e-9) moves
    # by +-lr in either run. A wrong shard or a missing all-reduce changes the gradients by O(1).
    mine, theirs = one.opt.state_dict()["state"], ddp_state["optimizer"]["state"]
    assert mine.keys() == theirs.keys() and len(mine) > 10
    for i in mine:
        g1, g2 = mine[i]["exp_avg"], theirs[i]["exp_avg"]
        scale = float(g1.abs().max()) + 1e-12
        assert float((g1 - g2).abs().max()) <= 1e-5 * scale + 1e-9, f"parameter {i}: gradients differ"
    moved = max(float((init[k] - p).abs().max()) for k, p in one.model.state_dict().items())
    assert moved > 1e-3  # the step really trained (AdamW's first step moves weights by ~lr = 2e-3)


def test_resume_on_another_number_of_processes(tmp_path):
    """A run saved by one process after 3 steps resumes under torchrun on two (a preempted job
    restarted on other GPUs): it is not refused, it says what changed, and it trains to the end
    with the epoch's remaining utterances split over the two ranks."""
    train = make_manifest(tmp_path, RESUME_SET)
    valid = make_manifest(tmp_path, [13], "valid.jsonl")
    over = [f"trainer.output_dir={tmp_path / 'run'}", f"train_dataset.train_manifest={train}",
            f"validation_dataset.validation_manifest={valid}", "trainer.progress_bar=false",
            "logger.log_to_tensorboard=false", "train_dataset.batch_seconds=2.5", "train_dataset.max_batch_size=2",
            "train_dataset.num_buckets=2", "trainer.max_steps=6", "trainer.eval_every=3", "optim.warmup_steps=2"]
    first = Trainer(load_config(TINY, over))
    first.setup()
    batches = len(first.sampler)
    first.cfg.trainer.max_steps = 3  # stops half-way, with a checkpoint at step 3
    first.fit()
    assert first.progress.epoch == 0 and first.progress.batches_in_epoch == 3 < batches

    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(_free_port()), "-m", "asrlib.train", "--config", str(TINY), "--resume", "auto"]
    for o in over:
        args += ["--set", o]
    r = subprocess.run(args, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                       text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stderr and "world size 1 when saved, 2 now: epoch 0 continues at batch" in r.stderr
    assert "none skipped" in r.stderr and "a step now holds 2x the audio it did" in r.stderr
    last = ckpt.load_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000006.pt")
    assert last["progress"]["step"] == 6 and last["sampler"]["world_size"] == 2


def test_ddp_validation_is_sharded_and_gives_the_one_process_wer(tmp_path):
    """Two gloo ranks each decode part of the dev set (3 + 2 utterances) and sum their counts:
    the WERs, utterance count and losses equal one process decoding all of it.

    The learning rate is 0, so both runs validate the seeded initial model (an update would
    differ between them by float32 round-off)."""
    train = make_manifest(tmp_path, EQUAL_TOKENS)
    valid = make_manifest(tmp_path, [6, 9, 11, 13, 15], "valid.jsonl")
    common = ["trainer.max_steps=1", "trainer.num_threads=1", "optim.lr=0.0", "optim.warmup_steps=0",
              "optim.schedule=constant", "trainer.progress_bar=false", "logger.log_to_tensorboard=false",
              f"train_dataset.train_manifest={train}", f"validation_dataset.validation_manifest={valid}",
              "validation_dataset.max_batch_size=2", "train_dataset.max_batch_size=1"]
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(_free_port()), "-m", "asrlib.train", "--config", str(TINY)]
    for o in common + [f"trainer.output_dir={tmp_path / 'ddp'}"]:
        args += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    got = [m for m in read_metrics(tmp_path / "ddp") if m["split"] == "valid"][-1]

    one = Trainer(load_config(TINY, common + [f"trainer.output_dir={tmp_path / 'one'}"]))
    one.setup()
    want = one.evaluate()
    assert got["valid/num_utterances"] == want["valid/num_utterances"] == 5
    for k in ("valid/wer_rnnt", "valid/wer_ctc", "valid/cer_rnnt", "valid/cer_ctc"):
        assert got[k] == want[k], k
    for k in ("valid/loss", "valid/rnnt", "valid/ctc"):
        assert got[k] == pytest.approx(want[k], rel=1e-5), k


# --------------------------------------------------------------------------- logging


def test_clearml_not_imported_when_off(tmp_path):
    train = make_manifest(tmp_path, SHORT[:1])
    code = f"""
import sys, torch
from asrlib.config import load_config
from asrlib.train import Trainer
cfg = load_config({str(TINY)!r}, ["trainer.output_dir={tmp_path / 'run'}", "train_dataset.train_manifest={train}",
                  "validation_dataset.validation_manifest=[]", "trainer.progress_bar=false",
                  "trainer.max_steps=2", "trainer.eval_every=2", "trainer.log_every=1"])
tr = Trainer(cfg)
tr.setup()
tr.fit()
print("CLEARML" if "clearml" in sys.modules else "NO-CLEARML")
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "NO-CLEARML"
    assert (tmp_path / "run" / "tensorboard").is_dir()  # the default logger did run
    assert [m["step"] for m in read_metrics(tmp_path / "run") if m["split"] == "train"] == [1, 2]


def test_clearml_missing_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "clearml", None)  # import clearml -> ImportError
    cfg = LoggerConfig(log_to_tensorboard=False, log_to_clearml=True)
    with pytest.raises(MissingExtraError, match=r"pip install 'asrlib\[clearml\]'"):
        RunLogger(cfg, tmp_path / "run")


# --------------------------------------------------------------------------- CLI


def test_cli_train_three_steps(tmp_path):
    train = make_manifest(tmp_path, SHORT)
    valid = make_manifest(tmp_path, [13], "valid.jsonl")
    out = tmp_path / "run"
    sets = [f"trainer.output_dir={out}", f"train_dataset.train_manifest={train}",
            f"validation_dataset.validation_manifest={valid}", "trainer.max_steps=3", "trainer.progress_bar=false",
            "logger.log_to_tensorboard=false", "trainer.log_every=1"]
    argv = ["train", "--config", str(TINY)]
    for s in sets:
        argv += ["--set", s]
    assert cli.main(argv) == 0
    found = ckpt.list_checkpoints(out / "checkpoints")
    assert [p.name for p in found] == ["step-00000003.pt"]
    state = torch.load(found[0], weights_only=True)  # plain data only
    assert state["progress"]["step"] == 3 and state["config"]["trainer"]["max_steps"] == 3
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics if m["split"] == "train"] == [1, 2, 3]
    valid_rows = [m for m in metrics if m["split"] == "valid"]
    assert len(valid_rows) == 1 and valid_rows[0]["step"] == 3
    assert math.isfinite(valid_rows[0]["valid/loss"]) and 0 <= valid_rows[0]["valid/wer_rnnt"]


def test_cli_unknown_key_names_it(tmp_path, capsys):
    """A config typo is the user's mistake: one line naming the key, exit status 2, no run folder."""
    code = cli.main(["train", "--config", str(TINY), "--set", "trainer.no_such_key=1",
                     "--set", f"trainer.output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("asrlib train: error: ") and "trainer.no_such_key" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- precision, RNG streams, devices


def test_bf16_on_cpu_trains(tmp_path):
    """bf16 autocast runs on CPU: a few steps on one batch stay finite and the loss falls."""
    cfg = tiny_config(tmp_path / "run", make_manifest(tmp_path, SHORT), "trainer.precision=bf16",
                      "spec_augment.freq_masks=0", "spec_augment.time_masks=0", "optim.schedule=constant",
                      "optim.warmup_steps=0", "optim.lr=3e-3", "train_dataset.batch_seconds=100.0",
                      "train_dataset.num_buckets=1")
    tr = Trainer(cfg)
    tr.setup()
    assert tr.amp_dtype == torch.bfloat16 and not tr.scaler.is_enabled()
    batch = next(tr.micro_batches())
    seen = {}
    hook = tr.model.encoder.register_forward_hook(lambda m, i, o: seen.update(enc=o[0].dtype) and None)
    values = [tr.train_step([batch]) for _ in range(8)]
    hook.remove()
    assert seen["enc"] == torch.bfloat16  # autocast really ran the encoder in bf16
    assert all(math.isfinite(v["loss"]) and v["skipped"] == 0.0 for v in values)
    assert values[-1]["loss"] < 0.8 * values[0]["loss"], [v["loss"] for v in values]


def test_scaler_skips_are_counted_apart_from_nonfinite(tmp_path):
    """fp16's GradScaler skips steps whose scaled gradients overflow while it calibrates.

    A CPU GradScaler with a huge initial scale overflows the float32 gradients the same way:
    those steps (finite loss) are counted in ``skipped_scaler``, leave the weights alone, and
    the scale backs off until steps go through; ``skipped_nonfinite`` stays 0.
    """
    tr = Trainer(tiny_config(tmp_path / "run", make_manifest(tmp_path, SHORT[:2])))
    tr.setup()
    tr.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**126, growth_interval=1000)
    batch = next(tr.micro_batches())
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    v = tr.train_step([batch])
    assert v["skipped"] == 1.0 and tr.progress.skipped_scaler == 1 and tr.progress.skipped_nonfinite == 0
    assert all(torch.equal(p, before[k]) for k, p in tr.model.state_dict().items())
    for _ in range(12):
        v = tr.train_step([batch])
        if not v["skipped"]:
            break
    assert v["skipped"] == 0.0 and tr.progress.skipped_nonfinite == 0 and tr.progress.skipped_scaler >= 1
    assert tr.scaler.get_scale() < 2.0**126


def test_loader_workers_give_the_same_batches_across_epochs(tmp_path):
    """Worker processes (persistent, prefetching) deliver the batches of the in-process loader,
    speed- and gain-perturbed alike, epoch after epoch; bad loader settings are config errors
    naming the key."""
    train = make_manifest(tmp_path, RESUME_SET)
    seqs, audio = [], []
    for i, workers in enumerate((0, 1)):
        tr = Trainer(tiny_config(tmp_path / f"run{i}", train, f"train_dataset.num_workers={workers}",
                                 "train_dataset.batch_seconds=2.5", "train_dataset.max_batch_size=2",
                                 "train_dataset.speed_perturb=[0.9, 1.0, 1.1]", "train_dataset.gain_db=[-20.0, 6.0]"))
        tr.setup()
        stream = tr.micro_batches()
        n = 2 * len(tr.sampler) + 1  # into the third epoch
        batches = [next(stream) for _ in range(n)]
        seqs.append([b.indices for b in batches])
        audio.append([[b.audio[k, : b.audio_lengths[k]] for k in range(len(b))] for b in batches])
        assert tr.progress.epoch == 2
    assert seqs[0] == seqs[1]
    assert all(torch.equal(a, b) for x, y in zip(*audio) for a, b in zip(x, y))
    # each epoch draws anew: an utterance's waveform in epoch 0 differs from epoch 1's
    half = len(seqs[0]) // 2
    epoch0 = {i: w for ids, ws in zip(seqs[0][:half], audio[0][:half]) for i, w in zip(ids, ws)}
    epoch1 = {i: w for ids, ws in zip(seqs[0][half : 2 * half], audio[0][half : 2 * half]) for i, w in zip(ids, ws)}
    assert set(epoch0) == set(epoch1)
    assert sum(not (a.shape == epoch1[i].shape and torch.equal(a, epoch1[i])) for i, a in epoch0.items()) >= len(epoch0) - 1
    assert seqs[0][: len(seqs[0]) // 2] != seqs[0][len(seqs[0]) // 2 : 2 * (len(seqs[0]) // 2)]  # reshuffled
    with pytest.raises(ConfigError, match="train_dataset.prefetch_factor"):
        load_config(TINY, ["train_dataset.prefetch_factor=0"])
    with pytest.raises(ConfigError, match="train_dataset.num_workers"):
        load_config(TINY, ["train_dataset.num_workers=-1"])


# --------------------------------------------------------------------------- torch.compile


def two_steps(tmp_path: Path, tag: str, *extra: str) -> tuple[list[float], dict]:
    """Losses of two steps on one batch, and AdamW's first moments after them (a gradient
    record: Adam moves round-off-sized gradient entries by ~lr whatever their value, so
    parameters are not comparable entry by entry; see the DDP test)."""
    cfg = tiny_config(tmp_path / tag, make_manifest(tmp_path, SHORT), "train_dataset.batch_seconds=100.0",
                      "train_dataset.num_buckets=1", *extra)
    tr = Trainer(cfg)
    tr.setup()
    batch = next(tr.micro_batches())
    losses = [tr.train_step([batch])["loss"] for _ in range(2)]
    return losses, {i: s["exp_avg"].clone() for i, s in tr.opt.state_dict()["state"].items()}


def assert_steps_close(a, b, rel_loss: float, rel_grad: float) -> None:
    assert b[0] == pytest.approx(a[0], rel=rel_loss, abs=0)
    assert a[1].keys() == b[1].keys() and len(a[1]) > 10
    for i in a[1]:
        scale = float(a[1][i].abs().max()) + 1e-12
        assert float((a[1][i] - b[1][i]).abs().max()) <= rel_grad * scale + 1e-9, f"parameter {i}"


@pytest.mark.parametrize("scope", ["blocks", "model"])
def test_compile_scope_wraps_the_blocks_or_the_training_module(tmp_path, scope):
    """blocks: every encoder block compiled in place, the module that trains left as it is and the
    parameter names those of an uncompiled model (its checkpoints load anywhere); model: the
    module that trains wrapped whole. torch.compile is lazy: nothing is compiled here."""
    from torch._dynamo.eval_frame import OptimizedModule

    manifest = make_manifest(tmp_path, SHORT)
    plain = Trainer(tiny_config(tmp_path / "plain", manifest))
    plain.setup()
    tr = Trainer(tiny_config(tmp_path / scope, manifest, "trainer.compile=true", f"trainer.compile_scope={scope}"))
    tr.setup()
    blocks = list(tr.model.encoder.blocks)
    assert [b._compiled_call_impl is not None for b in blocks] == [scope == "blocks"] * len(blocks)
    assert isinstance(tr.train_module, OptimizedModule) == (scope == "model")
    assert list(tr.model.state_dict()) == list(plain.model.state_dict())


@pytest.mark.slow
def test_compiled_graph_capture_equals_eager(tmp_path, monkeypatch):
    """torch.compile's capture (dynamo + AOT autograd, backend aot_eager: no code generation)
    of the whole training module takes the same two steps as eager, bit for bit (~30 s on 1
    CPU), and really went through the compiler. (The blocks scope: the whole run below.)"""
    import functools

    from torch._dynamo.utils import counters

    eager = two_steps(tmp_path, "eager")
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    counters.clear()
    compiled = two_steps(tmp_path, "compiled", "trainer.compile=true", "trainer.compile_scope=model")
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo captured graphs: not silently eager
    assert compiled[0] == eager[0]
    assert_steps_close(eager, compiled, 0.0, 0.0)


@pytest.mark.slow
def test_fit_with_compiled_blocks_logs_what_eager_logs(tmp_path, monkeypatch):
    """A whole run with the blocks compiled (trainer.compile_scope = "blocks"; aot_eager capture,
    ~100 s on 1 CPU: each block kind compiles again for dynamic lengths and for evaluation without
    gradients) logs the eager run's metrics bit for bit: training, validation, the weight average
    (a deep copy of compiled blocks, which runs eagerly) and the training weights beside it."""
    import functools

    manifest = make_manifest(tmp_path, SHORT)

    def fit(tag, *extra):
        cfg = tiny_config(tmp_path / tag, manifest, "trainer.max_steps=4", "trainer.eval_every=2",
                          "trainer.ema_decay=0.9", *extra, valid=manifest)
        tr = Trainer(cfg)
        tr.setup()
        tr.fit()
        return read_metrics(tmp_path / tag)

    from torch._dynamo.utils import counters

    eager = fit("eager")
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    counters.clear()
    compiled = fit("blocks", "trainer.compile=true")
    assert counters["stats"]["unique_graphs"] >= 4  # two block kinds, trained and evaluated: not silently eager
    drop = ("seconds", "per_second")  # the clocks differ; nothing else may
    strip = [[{k: v for k, v in r.items() if not any(d in k for d in drop)} for r in rs] for rs in (eager, compiled)]
    assert any("train/no_ema/loss" in r for r in strip[0]) and len(strip[0]) >= 2
    assert strip[1] == strip[0]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("ASRLIB_TEST_INDUCTOR") != "1",
                    reason="inductor on a CPU compiles for 5-15 minutes: set ASRLIB_TEST_INDUCTOR=1 to run it "
                           "(make test keeps the aot_eager graph-capture test above; gpu_check.sh compiles on CUDA)")
@pytest.mark.parametrize("scope", ["blocks", "model"])
def test_compiled_inductor_two_steps_match_eager(tmp_path, scope):
    """The real thing on CPU (inductor, C++ code generation: needs g++; minutes on a busy
    2-core machine). Tolerance: losses 1e-5 relative, AdamW first moments 1e-4 of each
    parameter's largest entry: generated kernels reorder float32 sums."""
    eager = two_steps(tmp_path, "eager")
    compiled = two_steps(tmp_path, "compiled", "trainer.compile=true", f"trainer.compile_scope={scope}")
    assert compiled[0] == pytest.approx(eager[0], rel=1e-5)
    assert_steps_close(eager, compiled, 1e-5, 1e-4)


def test_compile_wraps_the_module_that_trains(tmp_path, monkeypatch):
    """trainer.compile_scope = "model" compiles what train_step calls (the DDP wrapper under DDP,
    else the loss module); it used to compile a module that never ran under DDP."""
    compiled = []

    def fake_compile(module, **kw):
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    tr = Trainer(tiny_config(tmp_path / "run", make_manifest(tmp_path, SHORT[:1]), "trainer.compile=true",
                             "trainer.compile_scope=model"))
    tr.setup()
    assert compiled == [tr.loss_module] and tr.train_module is tr.loss_module and tr.ddp is None
    calls = []
    monkeypatch.setattr(tr, "train_module", lambda *a: calls.append(1) or tr.loss_module(*a))
    tr.train_step([next(tr.micro_batches())])
    assert calls == [1]


def test_without_validation_best_model_holds_the_latest_weights(tmp_path):
    from asrlib.checkpoint import load_model

    train = make_manifest(tmp_path, SHORT)
    tr = Trainer(tiny_config(tmp_path / "run", train, "trainer.max_steps=2", "trainer.eval_every=1"))
    tr.setup()
    tr.fit()
    exported, _ = load_model(tmp_path / "run" / "best_model")
    for name, value in tr.model.state_dict().items():
        assert torch.equal(exported.state_dict()[name], value.cpu()), name


def test_spec_augment_starts_at_its_step(tmp_path, monkeypatch):
    import asrlib.losses.hybrid as hybrid

    masked_at = []  # the optimiser step of every SpecAugment call
    real = hybrid.apply_spec_augment

    def spy(*args, **kwargs):
        masked_at.append(tr.progress.step)
        return real(*args, **kwargs)

    monkeypatch.setattr(hybrid, "apply_spec_augment", spy)
    train = make_manifest(tmp_path, SHORT)
    cfg = tiny_config(tmp_path / "run", train, "spec_augment.start_step=2", "train_dataset.num_buckets=1",
                      "train_dataset.batch_seconds=100.0")
    tr = Trainer(cfg)
    tr.setup()
    batch = next(tr.micro_batches())
    for _ in range(4):
        tr.train_step([batch])
    assert masked_at == [2, 3]


def test_freq_warp_reaches_the_training_step_with_factors_in_range(tmp_path, monkeypatch):
    import asrlib.data.augment as augment

    alphas = []
    real = augment.apply_freq_warp

    def spy(feats, lengths, alpha, frontend):
        alphas.append(alpha.clone())
        assert frontend.n_mels == feats.shape[-1]  # the run's own frontend
        return real(feats, lengths, alpha, frontend)

    monkeypatch.setattr(augment, "apply_freq_warp", spy)
    train = make_manifest(tmp_path, SHORT)
    tr = Trainer(tiny_config(tmp_path / "run", train, "spec_augment.freq_warp=0.2", "train_dataset.num_buckets=1",
                             "train_dataset.batch_seconds=100.0"))
    tr.setup()
    batch = next(tr.micro_batches())
    for _ in range(3):
        logged = tr.train_step([batch])
        assert math.isfinite(logged["loss"])
    got = torch.cat(alphas)
    assert len(alphas) == 3 and len(got) == 3 * len(batch)
    assert ((got >= 0.8) & (got <= 1.2)).all() and len(set(got.tolist())) == len(got)  # one draw per utterance


def test_validation_wer_and_cer_are_the_corpus_rates_of_each_utterance_decoded_alone(tmp_path):
    """The trainer's validation decodes duration-sorted batches and sums edit counts. Reference:
    each utterance decoded alone (batch of one), both heads, scored by metrics.wer / metrics.cer
    over the whole list."""
    from asrlib.decoding.ctc import CTCGreedyDecoder, CTCGreedyOptions
    from asrlib.decoding.rnnt import RNNTGreedyDecoder, RNNTGreedyOptions
    from asrlib.evaluate import evaluate_dataset
    from asrlib.metrics import cer, wer

    train = make_manifest(tmp_path, SHORT)
    valid = make_manifest(tmp_path, [6, 9, 11, 13, 15], "valid.jsonl")
    tr = Trainer(tiny_config(tmp_path / "run", train, "trainer.max_steps=1", "validation_dataset.max_batch_size=3",
                             valid=valid))
    tr.setup()
    tr.model.eval()
    (_, dataset), = tr.val_sets
    got = evaluate_dataset(tr.model, dataset, tr.tokenizer, tr.device, tr.cfg)
    refs, hyps = {"ctc": [], "rnnt": []}, {"ctc": [], "rnnt": []}
    blank = tr.model.blank
    with torch.no_grad():
        for i in range(len(dataset)):
            batch = dataset.collate([dataset[i]])
            enc, lengths = tr.model(batch.audio, batch.audio_lengths)
            ctc = CTCGreedyDecoder(CTCGreedyOptions(blank=blank)).decode(tr.model.ctc_head(enc), lengths,
                                                                         tr.tokenizer.decode)
            rnnt = RNNTGreedyDecoder(RNNTGreedyOptions(blank=blank)).decode(
                tr.model.prediction, tr.model.joint, enc, lengths, tr.tokenizer.decode)
            for head, result in (("ctc", ctc), ("rnnt", rnnt)):
                refs[head].append(batch.texts[0])
                hyps[head].append(result[0].text)
    assert got["num_utterances"] == 5
    assert any(hyps["rnnt"]), "the seeded model should say something, or the rates test nothing"
    for head in ("ctc", "rnnt"):
        assert got[f"wer_{head}"] == pytest.approx(wer(refs[head], hyps[head]), abs=1e-12), head
        assert got[f"cer_{head}"] == pytest.approx(cer(refs[head], hyps[head]), abs=1e-12), head
