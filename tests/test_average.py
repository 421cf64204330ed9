"""asrlib average: the mean of a run's checkpoints, checked against the mean taken key by key here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from asrlib.average import average_state_dicts, checkpoint_files, main
from asrlib.checkpoint import atomic_save, load_model_and_tokenizer, tokenizer_state
from asrlib.config import load_config, to_dict
from asrlib.errors import UsageError
from asrlib.model.hybrid import build_model
from asrlib.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = Tokenizer(ROOT / "data_samples" / "digits" / "tokenizer")


def _config(d_model: int = 32):
    cfg = load_config(ROOT / "configs" / "tiny.toml")
    cfg.model.vocab_size = TOKENIZER.vocab_size
    cfg.model.encoder.d_model = d_model
    return cfg


def _save(folder: Path, step: int, seed: int, cfg) -> dict:
    torch.manual_seed(seed)
    weights = build_model(cfg.model).state_dict()
    atomic_save({"model": weights, "config": to_dict(cfg), **tokenizer_state(TOKENIZER)},
                folder / f"step-{step:08d}.pt")
    return weights


@pytest.fixture
def run(tmp_path):
    folder = tmp_path / "checkpoints"
    cfg = _config()
    weights = {step: _save(folder, step, seed, cfg) for seed, step in enumerate([100, 200, 1000])}
    atomic_save({"model": weights[100], "config": to_dict(cfg), **tokenizer_state(TOKENIZER)}, folder / "best.pt")
    return folder, weights


def test_last_two_are_the_mean_of_their_weights(run, tmp_path, capsys):
    folder, weights = run
    out = tmp_path / "avg"
    assert main([str(folder), "--last", "2", "--out", str(out)]) == 0
    assert "steps 200, 1000" in capsys.readouterr().err  # by step, not by name; best.pt is not a step
    model, tok = load_model_and_tokenizer(out)
    assert tok.sha256 == TOKENIZER.sha256
    got = model.state_dict()
    assert set(got) == set(weights[200])
    for key, value in got.items():
        a, b = weights[200][key], weights[1000][key]
        if value.is_floating_point():
            torch.testing.assert_close(value, (a + b) / 2, rtol=0, atol=1e-6)
        else:
            assert torch.equal(value, a)
    moved = [k for k in got if got[k].is_floating_point() and not torch.equal(weights[200][k], weights[1000][k])]
    assert moved, "the seeds gave identical weights: the test would not see an average"


def test_explicit_files_and_the_one_line_errors(run, tmp_path, capsys):
    folder, _ = run
    out = tmp_path / "avg"
    (out).mkdir()
    (out / "notes.txt").write_text("mine\n")
    assert main([str(folder / "step-00000100.pt"), "--out", str(out)]) == 2
    assert (out / "notes.txt").read_text() == "mine\n"
    assert main([str(tmp_path / "nope.pt"), "--out", str(tmp_path / "new")]) == 2
    assert main([str(tmp_path), "--out", str(tmp_path / "new2")]) == 2  # a folder with no step-*.pt
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("asrlib average: error: ") for e in errors)
    assert "--force" in errors[0] and "nope.pt" in errors[1] and "step-*.pt" in errors[2]


def test_checkpoints_of_another_model_are_refused(run, tmp_path, capsys):
    folder, _ = run
    other = tmp_path / "other"
    _save(other, 5, 7, _config(d_model=48))
    out = tmp_path / "avg"
    assert main([str(folder / "step-00001000.pt"), str(other / "step-00000005.pt"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "model.encoder.d_model" in err and not (out / "model.safetensors").exists()


def test_integer_tensors_must_agree_and_are_kept():
    ints = torch.tensor([1, 2, 3])
    mean = average_state_dicts([{"w": torch.tensor([1.0, 3.0]), "n": ints}, {"w": torch.tensor([2.0, 5.0]), "n": ints}])
    assert torch.equal(mean["w"], torch.tensor([1.5, 4.0])) and mean["w"].dtype == torch.float32
    assert torch.equal(mean["n"], ints)
    with pytest.raises(UsageError, match="not floating point"):
        average_state_dicts([{"n": ints}, {"n": ints + 1}])


def test_files_are_ordered_by_step_and_deduplicated(run):
    folder, _ = run
    files = checkpoint_files([folder / "step-00001000.pt", folder, folder / "best.pt"])
    assert [p.name for p in files] == ["step-00000100.pt", "step-00000200.pt", "step-00001000.pt", "best.pt"]
    with pytest.raises(UsageError, match="--last"):
        checkpoint_files([folder], last=0)
