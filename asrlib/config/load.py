"""Reading a config: a TOML file and ``--set section.key=value`` overrides -> the dataclasses of
asrlib/config/sections.py.

Every key is checked against its field: an unknown key or a value of the wrong type is a
``ConfigError`` that names the file, the dotted key and what was expected. Overrides are parsed
as TOML values and go through the same checks. Relative paths in a file are resolved against the
file's folder, those in overrides against the current directory; then the rules across keys run
(asrlib/config/checks.py).
"""

from __future__ import annotations

import dataclasses
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from asrlib.config.checks import ConfigError, check_config
from asrlib.config.sections import Config, ModelConfig


# Fields that hold paths relative to the config file's folder.
_PATH_LIST_KEYS = {"train_dataset.train_manifest", "train_dataset.noise_manifest", "validation_dataset.validation_manifest"}
_PATH_KEYS = {"tokenizer.tokenizer_path", "trainer.init_from", "loss.phone_lexicon"}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to float)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table [{where.split(': ')[-1]}], got {value!r}")
        return _build(tp, value, where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: expected one of {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # a single manifest path stands for a list of one
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {tp}, got {value!r}")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")


def _build(cls: type, data: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else key
        if key not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(f"unknown key '{dotted}'; known keys here: {known}")
        kwargs[key] = _coerce(value, hints[key], dotted)
    return cls(**kwargs)


def from_dict(data: dict, cls: type = Config, source: str = "<dict>") -> Any:
    """Build ``cls`` from a plain dict, with the same checks as a file."""
    try:
        return _build(cls, data, "")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def to_dict(cfg: Any) -> dict:
    """The resolved config as plain data (TOML/JSON-serialisable); stored in checkpoints."""
    return dataclasses.asdict(cfg)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=3e-4"`` -> (["optim", "lr"], 3e-4). Values are TOML; bare words are strings."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # an unquoted string such as a path or "cuda"
    return key.split("."), value


def _set_nested(data: dict, keys: list[str], value: Any) -> None:
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {'.'.join(keys)}: '{k}' is not a section")
    node[keys[-1]] = value


def _resolve_paths(data: dict, base: Path) -> None:
    """Make relative paths absolute against the config file's folder."""

    def fix(p: str) -> str:
        return p if (not p or Path(p).is_absolute()) else str((base / p).resolve())

    for dotted in _PATH_LIST_KEYS | _PATH_KEYS:
        section, key = dotted.split(".")
        if key in data.get(section, {}):
            v = data[section][key]
            if isinstance(v, str):
                data[section][key] = fix(v)
            elif isinstance(v, list):
                data[section][key] = [fix(x) if isinstance(x, str) else x for x in v]


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> Config:
    """Read a TOML file (or defaults when ``path`` is None) and apply ``--set`` overrides.

    Relative paths in the file are resolved against the file's folder; relative paths given
    in overrides against the current directory.
    """
    data: dict = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        _resolve_paths(data, path.resolve().parent)
    over: dict = {}
    for text in overrides:
        keys, value = parse_override(text)
        _set_nested(over, keys, value)
    _resolve_paths(over, Path.cwd())
    _merge(data, over)
    cfg = from_dict(data, Config, source)
    check_config(cfg, source)
    return cfg


def _merge(base: dict, extra: dict) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def model_config_from_dict(data: dict) -> ModelConfig:
    """Rebuild the model's config from a checkpoint or ONNX metadata."""
    return from_dict(data, ModelConfig, "<checkpoint model config>")
