"""Checkpoints: atomic under SIGKILL, safe to load, rotated, exported weights rebuild the model."""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from asrlib import checkpoint as ckpt
from asrlib.config import load_config
from asrlib.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "data_samples" / "digits"
TINY = ROOT / "configs" / "tiny.toml"
N_FLOATS = 4_000_000  # 16 MB per state: a torch.save takes long enough to be killed inside it

WRITER = """
import sys, torch
from asrlib.checkpoint import atomic_save
path, version, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
print("ready", flush=True)
while True:
    version += 1
    atomic_save({"version": version, "data": torch.full((n,), float(version))}, path)
"""


def _check_complete(state: dict) -> int:
    v = state["version"]
    assert state["data"].shape == (N_FLOATS,) and bool((state["data"] == float(v)).all()), "a torn state"
    return v


def test_sigkill_while_saving_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "state.pt"
    ckpt.atomic_save({"version": 0, "data": torch.zeros(N_FLOATS)}, path)
    rng = random.Random(0)
    last, temps_seen = 0, 0
    # at least 4 rounds; then more (up to 16) until a kill has landed inside a write: the time
    # outside one (building the next state, fsyncing the folder) can catch a few kills in a row
    for round_ in range(16):
        if round_ >= 4 and temps_seen >= 1:
            break
        start = 1000 * (round_ + 1)  # each writer numbers its states from here
        p = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(start), str(N_FLOATS)],
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.6))
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
        v = _check_complete(ckpt.load_checkpoint(path))
        assert v == last or v > start, "the target went back to an older state"
        last = v
        others = [f.name for f in tmp_path.iterdir() if f.name != "state.pt"]
        for name in others:  # leftovers are temp files of this target, never a partial target
            assert re.fullmatch(r"\.state\.pt\..+\.tmp", name), name
        temps_seen = len(others)
    assert last > 0  # the writers did replace the file
    assert temps_seen >= 1  # and at least one kill landed inside a write (its temp file remains)


def test_truncated_file_is_rejected_with_its_path(tmp_path):
    good = tmp_path / "good.pt"
    ckpt.atomic_save({"w": torch.arange(1000.0)}, good)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes()[:500])  # what a non-atomic save killed mid-write leaves
    with pytest.raises(RuntimeError, match="bad.pt"):
        ckpt.load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")


class Payload:  # an object whose unpickling would import and run code from a module
    pass


def test_checkpoint_holds_no_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": Payload()}, path)
    with pytest.raises(RuntimeError, match="evil.pt"):
        ckpt.load_checkpoint(path)  # weights_only=True refuses it


def test_rotate_keeps_last_k_by_step_number(tmp_path):
    for s in (1, 2, 9, 10, 11):
        (tmp_path / f"step-{s}.pt").write_bytes(b"x")
    (tmp_path / "best.pt").write_bytes(b"x")
    (tmp_path / "notes.txt").write_bytes(b"x")
    ckpt.rotate(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "notes.txt", "step-10.pt", "step-11.pt"]
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-10.pt", "step-11.pt"]


def _trainer(tmp_path: Path, *extra: str) -> Trainer:
    rows = (DIGITS / "train.jsonl").read_text().splitlines()[:3]
    lines = []
    for r in map(json.loads, rows):
        r["audio_filepath"] = str(DIGITS / r["audio_filepath"])
        lines.append(json.dumps(r))
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    cfg = load_config(TINY, [f"trainer.output_dir={tmp_path / 'run'}", f"train_dataset.train_manifest={tmp_path / 'train.jsonl'}",
                             "validation_dataset.validation_manifest=[]", "trainer.progress_bar=false",
                             "logger.log_to_tensorboard=false", *extra])
    tr = Trainer(cfg)
    tr.setup()
    return tr


def test_trainer_checkpoints_rotate_load_and_export(tmp_path):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _check_trainer_checkpoints(tmp_path)
    finally:
        torch.set_num_threads(n)


def _check_trainer_checkpoints(tmp_path: Path) -> None:
    tr = _trainer(tmp_path, "trainer.keep_last=2")
    batch = next(tr.micro_batches())
    folder = tmp_path / "run" / "checkpoints"
    for step in range(1, 5):
        tr.train_step([batch])
        tr.save_checkpoint(best=step == 2)
        if step == 2:
            best_weights = {k: v.clone() for k, v in tr.model.state_dict().items()}
    assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "step-00000003.pt", "step-00000004.pt"]

    # plain torch.load(weights_only=True) reads every file
    last = torch.load(folder / "step-00000004.pt", weights_only=True)
    best = torch.load(folder / "best.pt", weights_only=True)
    assert last["progress"]["step"] == 4 and best["progress"]["step"] == 2
    for k, v in tr.model.state_dict().items():
        assert torch.equal(last["model"][k], v)
        assert torch.equal(best["model"][k], best_weights[k])

    # the exported folder (safetensors + config.json + tokenizer.model) holds the best weights
    export = tmp_path / "run" / "best_model"
    assert sorted(p.name for p in export.iterdir()) == ["config.json", "model.safetensors", "tokenizer.model"]
    assert (export / "tokenizer.model").read_bytes() == (DIGITS / "tokenizer" / "tokenizer.model").read_bytes()
    st = load_file(str(export / "model.safetensors"))
    assert set(st) == set(best_weights) and all(torch.equal(st[k], best_weights[k]) for k in st)

    # load_model rebuilds the same network from either form: same outputs as the trainer's model
    tr.model.load_state_dict(best_weights)
    tr.model.eval()
    with torch.no_grad():
        ref = tr.model(batch.audio, batch.audio_lengths)[0]
        ref_ctc = tr.model.ctc_head(ref)
        for source in (export, folder / "best.pt"):
            model, tok = ckpt.load_model(source)
            assert not model.training and tok is not None and tok.name == "tokenizer.model"
            enc, lengths = model(batch.audio, batch.audio_lengths)
            assert torch.equal(lengths, tr.model.output_lengths(batch.audio_lengths))
            assert torch.equal(enc, ref), source
            assert torch.equal(model.ctc_head(enc), ref_ctc)


def test_model_saved_with_cuda_backend_runs_on_cpu(tmp_path):
    """The Mamba2 backend is a runtime choice: a checkpoint / export from a GPU run that used
    backend "cuda" loads on a CPU (as "auto") and gives the same output; resuming compares
    model configs without it."""
    tr = _trainer(tmp_path)
    batch = next(tr.micro_batches())
    tr.train_step([batch])
    path = tr.save_checkpoint()
    state = torch.load(path, weights_only=True)
    state["config"]["model"]["encoder"]["mamba2"]["backend"] = "cuda"  # as a GPU run saves it
    torch.save(state, tmp_path / "gpu.pt")
    export = tmp_path / "export"
    ckpt.export_weights(tr.model, export)
    meta = json.loads((export / "config.json").read_text())
    meta["model"]["encoder"]["mamba2"]["backend"] = "cuda"
    (export / "config.json").write_text(json.dumps(meta))
    tr.model.eval()
    with torch.no_grad():
        ref = tr.model(batch.audio, batch.audio_lengths)[0]
        for source in (tmp_path / "gpu.pt", export):
            model, _ = ckpt.load_model(source, "cpu")
            assert all(b.mixer.cfg.backend == "auto" for b in model.encoder.blocks if hasattr(b.mixer, "A_log"))
            assert torch.equal(model(batch.audio, batch.audio_lengths)[0], ref)
    now = state["config"]["model"] | {"encoder": {**state["config"]["model"]["encoder"],
                                                  "mamba2": {**state["config"]["model"]["encoder"]["mamba2"],
                                                             "backend": "torch"}}}
    assert ckpt.model_mismatch(state["config"]["model"], now) is None


def test_a_model_key_older_checkpoints_lack_counts_as_its_default():
    """A checkpoint written before a model key existed (phone_vocab_size came later) still resumes
    into a run that leaves the key at its default, and is refused by one that sets it."""
    from asrlib.config import load_config, to_dict

    now = to_dict(load_config(None, []).model)
    older = {k: v for k, v in now.items() if k != "phone_vocab_size"}
    assert ckpt.model_mismatch(older, now) is None
    with_phones = to_dict(load_config(None, ["model.phone_vocab_size=33"]).model)
    assert ckpt.model_mismatch(older, with_phones) == "model.phone_vocab_size = 0 in the checkpoint, 33 now"
    unknown = {**now, "encoder": {**now["encoder"], "from_the_future": 1}}  # a newer checkpoint: as written
    assert ckpt.model_mismatch(unknown, now) == "model.encoder.from_the_future = 1 in the checkpoint, '<absent>' now"


def test_a_checkpoint_from_before_model_phone_block_takes_it_from_its_loss_section(tmp_path):
    """Checkpoints written before the model recorded its phone head's block read it from the run's
    loss.phone_ctc_block (what the head was trained on), so they resume and rescore as trained."""
    from asrlib.config import to_dict

    cfg = load_config(None, ["model.phone_vocab_size=5", "loss.phone_ctc_block=4"])
    saved = to_dict(cfg)
    del saved["model"]["phone_block"]
    ckpt.atomic_save({"config": saved, "model": {}}, tmp_path / "old.pt")
    assert ckpt.load_checkpoint(tmp_path / "old.pt")["config"]["model"]["phone_block"] == 4
    saved["model"]["phone_block"] = 2  # a newer checkpoint's own value stands
    ckpt.atomic_save({"config": saved, "model": {}}, tmp_path / "new.pt")
    assert ckpt.load_checkpoint(tmp_path / "new.pt")["config"]["model"]["phone_block"] == 2


def test_exported_weights_carry_the_phone_heads_lexicon_and_only_its(tmp_path):
    from asrlib.model.hybrid import build_model

    lexicon = tmp_path / "words.txt"
    lexicon.write_text("B B IY\nTWO T UW\n")
    cfg = load_config(ROOT / "configs" / "tiny.toml", ["model.vocab_size=16"]).model
    ckpt.export_weights(build_model(cfg), tmp_path / "plain", lexicon=lexicon)
    assert not (tmp_path / "plain" / "lexicon.txt").exists()  # no phone head: nothing reads it
    cfg.phone_vocab_size, cfg.phone_block = 4, 2
    ckpt.export_weights(build_model(cfg), tmp_path / "phones", lexicon=lexicon)
    assert (tmp_path / "phones" / "lexicon.txt").read_text() == lexicon.read_text()
    assert ckpt.lexicon_of(tmp_path / "phones") == tmp_path / "phones" / "lexicon.txt"
    assert ckpt.load_model(tmp_path / "phones")[0].cfg.phone_block == 2
