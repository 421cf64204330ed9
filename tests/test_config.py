"""asrlib.config: the user's TOML sections, type checks, overrides and path resolution."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from asrlib.config import Config, ConfigError, from_dict, load_config, model_config_from_dict, parse_override, to_dict

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_users_section_names_and_relative_paths(tmp_path):
    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    path = write(cfg_dir, """
[train_dataset]
train_manifest = ["../data/a.jsonl", "/abs/b.jsonl"]
[validation_dataset]
validation_manifest = "../data/dev.jsonl"
[tokenizer]
tokenizer_path = "tok"
[logger]
log_to_clearml = true
""")
    cfg = load_config(path)
    assert cfg.train_dataset.train_manifest == [str((tmp_path / "data" / "a.jsonl").resolve()), "/abs/b.jsonl"]
    assert cfg.validation_dataset.validation_manifest == [str((tmp_path / "data" / "dev.jsonl").resolve())]  # string -> list of one
    assert cfg.tokenizer.tokenizer_path == str((cfg_dir / "tok").resolve())
    assert cfg.logger.log_to_clearml is True
    assert cfg.optim.lr == Config().optim.lr  # untouched sections keep their defaults


def test_unknown_key_names_the_dotted_key(tmp_path):
    path = write(tmp_path, "[model.encoder]\nd_modle = 4\n")
    with pytest.raises(ConfigError, match=r"c.toml.*unknown key 'model.encoder.d_modle'.*d_model"):
        load_config(path)
    with pytest.raises(ConfigError, match="unknown key 'trainr'"):
        load_config(write(tmp_path, "[trainr]\nseed = 1\n", "d.toml"))


@pytest.mark.parametrize("toml,where,expected", [
    ("[optim]\nlr = 'fast'", "optim.lr", "a number"),
    ("[trainer]\nmax_steps = 1.5", "trainer.max_steps", "an integer"),
    ("[trainer]\nmax_steps = true", "trainer.max_steps", "an integer"),
    ("[trainer]\nprogress_bar = 1", "trainer.progress_bar", "true or false"),
    ("[trainer]\nprecision = 'fp8'", "trainer.precision", "one of 'fp32' | 'bf16' | 'fp16'"),
    ("[optim]\nbetas = 0.9", "optim.betas", None),
    ("[optim]\nbetas = ['a', 'b']", "optim.betas[0]", "a number"),
    ("[tokenizer]\ntokenizer_path = 3", "tokenizer.tokenizer_path", "a string"),
    ("model = 3", "model", "expected a table"),
])
def test_wrong_types_name_the_key(tmp_path, toml, where, expected):
    path = write(tmp_path, toml + "\n")
    if expected is None:  # a scalar where a list is expected becomes a list of one
        assert load_config(path).optim.betas == [0.9]
        return
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert where in str(err.value) and expected in str(err.value) and "c.toml" in str(err.value)


def test_ints_widen_to_float(tmp_path):
    assert load_config(write(tmp_path, "[optim]\nlr = 1\n")).optim.lr == 1.0
    assert isinstance(load_config(write(tmp_path, "[optim]\nlr = 1\n")).optim.lr, float)


def test_overrides(tmp_path, monkeypatch):
    path = write(tmp_path, "[optim]\nlr = 0.1\n[trainer]\nseed = 3\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(path, ["optim.lr=3e-4", "trainer.device=cuda:1", "model.encoder.attention.n_heads=8",
                             "train_dataset.train_manifest=['x.jsonl', 'y.jsonl']", "trainer.compile=true"])
    assert cfg.optim.lr == 3e-4 and cfg.trainer.seed == 3
    assert cfg.trainer.device == "cuda:1"  # bare word parsed as a string
    assert cfg.model.encoder.attention.n_heads == 8 and cfg.trainer.compile is True
    assert cfg.train_dataset.train_manifest == [str(tmp_path / "x.jsonl"), str(tmp_path / "y.jsonl")]  # relative to cwd
    with pytest.raises(ConfigError, match="unknown key 'optim.learning_rate'"):
        load_config(path, ["optim.learning_rate=1"])
    with pytest.raises(ConfigError, match="trainer.max_steps: expected an integer"):
        load_config(None, ["trainer.max_steps=many"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(None, ["optim.lr"])
    assert parse_override("a.b = [1, 2]") == (["a", "b"], [1, 2])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[optim\nlr = 1\n"))


def test_round_trip_through_dict():
    cfg = load_config(None, ["model.encoder.d_model=64", "loss.ctc_weight=0.5"])
    data = to_dict(cfg)
    assert from_dict(data) == cfg
    assert model_config_from_dict(data["model"]) == cfg.model
    assert dataclasses.asdict(model_config_from_dict(data["model"]))["encoder"]["d_model"] == 64


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.toml")))
def test_shipped_configs_load(name):
    cfg = load_config(REPO / "configs" / name)
    for manifest in cfg.train_dataset.train_manifest + cfg.validation_dataset.validation_manifest:
        assert Path(manifest).is_absolute()
