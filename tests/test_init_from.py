"""``trainer.init_from``: a new run that starts from another run's weights (fine-tuning).

The weights after setup are compared with the tensors read straight from the donor's file; the
optimiser, schedule and step start afresh; settings that leave the weights' shapes alone may
differ and are named; a model they do not fit, another tokenizer or a missing file is one line;
a run that resumes ignores it. ``trainer.init_modules`` takes only some parts: a trained encoder
under a new tokenizer, the rest as a fresh run of the same seed builds it.
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file
from test_resume_safety import run_of_4  # noqa: F401 (a fixture)
from test_run_folder import one_error_line, train_argv
from test_train import SHORT, make_manifest, tiny_config

from asrlib import checkpoint as ckpt
from asrlib import cli
from asrlib.tokenizer import Tokenizer, train_tokenizer
from asrlib.train import Trainer


def assert_weights(model, expected: dict) -> None:
    got = model.state_dict()
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(got[k], v), k


NORM = "model.frontend.normalize=true"  # the donors carry feature statistics


def normalised_donor(tmp_path):
    """(train manifest, the last checkpoint of a 2-step tiny run with feature normalisation)."""
    train = make_manifest(tmp_path, SHORT)
    first = Trainer(tiny_config(tmp_path / "donor", train, NORM, "trainer.max_steps=2"))
    first.setup()
    first.fit()
    return train, ckpt.list_checkpoints(tmp_path / "donor" / "checkpoints")[-1]


def test_a_new_run_starts_from_a_checkpoints_weights(tmp_path, capsys):
    train, donor = normalised_donor(tmp_path)
    expected = ckpt.load_checkpoint(donor)["model"]
    capsys.readouterr()
    tr = Trainer(tiny_config(tmp_path / "tuned", train, NORM, "trainer.max_steps=2", f"trainer.init_from={donor}",
                             "model.encoder.dropout=0.1"))
    tr.setup()
    assert "frontend.feat_mean" in expected
    assert_weights(tr.model, expected)  # the feature statistics included
    assert tr.progress.step == 0 and tr.opt.state_dict()["state"] == {}
    assert tr.sched.last_epoch == 0
    err = capsys.readouterr().err
    assert f"initialised from {donor}" in err and "model.encoder.dropout = 0.0 in the checkpoint, 0.1 now" in err
    assert "feature normalisation from" not in err  # the donor's statistics, not new ones
    tr.fit()
    assert tr.progress.step == 2
    assert not torch.equal(tr.model.state_dict()["ctc_head.proj.weight"], expected["ctc_head.proj.weight"])


def test_from_an_exported_folder_and_from_a_weight_average(run_of_4, tmp_path):
    out, train = run_of_4
    state = ckpt.load_checkpoint(out / "checkpoints" / "step-00000004.pt")
    model, tok_path = ckpt.load_model(out / "checkpoints" / "step-00000004.pt")
    folder = ckpt.export_weights(model, tmp_path / "exported", Tokenizer(tok_path))
    tr = Trainer(tiny_config(tmp_path / "a", train, f"trainer.init_from={folder}"))
    tr.setup()
    assert_weights(tr.model, load_file(str(folder / "model.safetensors")))

    averaged = {k: v + 1.0 if v.is_floating_point() else v for k, v in state["model"].items()}
    with_ema = tmp_path / "with-ema.pt"
    torch.save({**state, "ema": {"model": averaged, "updates": 4}}, with_ema)
    tr = Trainer(tiny_config(tmp_path / "b", train, f"trainer.init_from={with_ema}"))
    tr.setup()
    assert_weights(tr.model, averaged)  # what the run was evaluated and shipped with


def test_weights_that_do_not_fit_another_tokenizer_or_no_file_are_one_line(run_of_4, tmp_path, capsys):
    out, train = run_of_4
    donor = out / "checkpoints" / "step-00000004.pt"
    capsys.readouterr()
    argv = train_argv(tmp_path / "x", train, None, f"trainer.init_from={donor}", "model.encoder.d_model=64")
    assert cli.main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "its weights do not fit this model (model.encoder.d_model = 48 in the checkpoint, 64 now)" in line

    other = another_tokenizer(tmp_path, 32)  # the digits tokenizer's size: the weights would fit
    argv = train_argv(tmp_path / "y", train, None, f"trainer.init_from={donor}",
                      f"tokenizer.tokenizer_path={other.parent}")
    assert cli.main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"trainer.init_from = {donor} was trained with another tokenizer than {other}" in line

    missing = tmp_path / "nowhere.pt"
    assert cli.main(train_argv(tmp_path / "z", train, None, f"trainer.init_from={missing}")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"trainer.init_from = {missing}: checkpoint not found" in line


def test_a_resumed_run_ignores_it(run_of_4, tmp_path, capsys):
    out, train = run_of_4
    own = ckpt.load_checkpoint(out / "checkpoints" / "step-00000004.pt")["model"]
    stranger = Trainer(tiny_config(tmp_path / "stranger", train, "trainer.seed=7", "trainer.max_steps=1"))
    stranger.setup()
    stranger.fit()
    other = ckpt.list_checkpoints(tmp_path / "stranger" / "checkpoints")[-1]
    capsys.readouterr()
    tr = Trainer(tiny_config(out, train, "trainer.max_steps=6", "trainer.eval_every=2", "trainer.resume=auto",
                             f"trainer.init_from={other}"))
    tr.setup()
    assert tr.progress.step == 4
    assert_weights(tr.model, own)
    assert "initialised from" not in capsys.readouterr().err


def test_only_the_frontend_and_encoder_under_another_tokenizer(tmp_path, capsys):
    train, donor = normalised_donor(tmp_path)
    theirs = ckpt.load_checkpoint(donor)["model"]
    other = another_tokenizer(tmp_path, 40)
    over = [NORM, f"tokenizer.tokenizer_path={other.parent}", "trainer.seed=5"]
    fresh = Trainer(tiny_config(tmp_path / "fresh", train, *over))
    fresh.setup()
    capsys.readouterr()
    tr = Trainer(tiny_config(tmp_path / "tuned", train, *over, f"trainer.init_from={donor}",
                             'trainer.init_modules=["frontend", "encoder"]'))
    tr.setup()
    got, new = tr.model.state_dict(), fresh.model.state_dict()
    for k in got:
        want = theirs[k] if k.split(".")[0] in ("frontend", "encoder") else new[k]
        assert torch.equal(got[k], want), k
    assert got["ctc_head.proj.weight"].shape[0] == 41 != theirs["ctc_head.proj.weight"].shape[0]
    err = capsys.readouterr().err
    assert f"initialised from the frontend, encoder of {donor}" in err and "model.vocab_size = 32" in err
    assert "feature normalisation from" not in err

    capsys.readouterr()
    argv = train_argv(tmp_path / "w", train, None, f"trainer.init_from={donor}", 'trainer.init_modules=["decoder"]')
    assert cli.main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "trainer.init_modules: 'decoder' is not a part of the model; choose from frontend, encoder" in line


def another_tokenizer(tmp_path, size: int):
    """A BPE tokenizer of ``size`` pieces over pangrams: not the digits tokenizer."""
    texts = ["the quick brown fox jumps over the lazy dog", "pack my box with five dozen liquor jugs",
             "sphinx of black quartz judge my vow", "how vexingly quick daft zebras jump"]
    m = tmp_path / f"other{size}.jsonl"
    m.write_text("".join(json.dumps({"audio_filepath": "x.wav", "text": t, "duration": 1.0}) + "\n" for t in texts))
    path = train_tokenizer(m, size, "bpe", tmp_path / f"other{size}")
    assert Tokenizer(path).vocab_size == size
    return path


def test_a_relative_path_in_a_config_file_is_the_files(tmp_path):
    """Like the manifests and the tokenizer: relative to the config file's folder in the file,
    to the current directory in an override."""
    from asrlib.config import load_config

    (tmp_path / "exp").mkdir()
    cfg_file = tmp_path / "exp" / "tune.toml"
    cfg_file.write_text('[trainer]\ninit_from = "../runs/base/best_model"\n')
    assert load_config(cfg_file).trainer.init_from == str(tmp_path / "runs" / "base" / "best_model")


def test_a_donor_without_a_phone_head_starts_a_run_with_one(tmp_path, capsys):
    """Fine-tuning with loss.phone_ctc_weight from a model trained without it: every donor weight
    is loaded, and the phone head (training only) starts as a fresh run of the same seed draws it."""
    from asrlib.model.hybrid import build_model

    train, donor = normalised_donor(tmp_path)
    expected = ckpt.load_checkpoint(donor)["model"]
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("three TH R IY\nsix S IH K S\neight EY T\n")
    tr = Trainer(tiny_config(tmp_path / "tuned", train, NORM, "trainer.max_steps=1", f"trainer.init_from={donor}",
                             "loss.phone_ctc_weight=0.3", f"loss.phone_lexicon={lexicon}"))
    tr.setup()
    got = tr.model.state_dict()
    assert set(got) - set(expected) == {"phone_head.proj.weight", "phone_head.proj.bias"}
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    torch.manual_seed(tr.cfg.trainer.seed)
    fresh = build_model(tr.cfg.model).phone_head
    assert torch.equal(got["phone_head.proj.weight"], fresh.proj.weight)
    assert "model.phone_vocab_size = 0 in the checkpoint, 8 now" in capsys.readouterr().err
    tr.fit()
    assert tr.progress.step == 1
