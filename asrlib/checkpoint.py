"""Checkpoints: atomic writes, safe loads, rotation, and exported inference weights.

- A training checkpoint is one ``.pt`` file holding only tensors and plain data (model,
  optimiser, scheduler and scaler state, sampler position, RNG states, step, the resolved
  config and the tokenizer path). It is loaded with ``torch.load(weights_only=True)``: a
  checkpoint never runs code.
- Writes are atomic: a temporary file in the same folder, flushed and fsync'ed, then renamed
  over the target. A process killed mid-save leaves the previous checkpoint intact.
- Exported weights (for inference, ``models/…``) are a folder: ``model.safetensors``,
  ``config.json`` (the ModelConfig) and ``tokenizer.model``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from asrlib.config import model_config_from_dict, to_dict
from asrlib.model.hybrid import HybridASR, build_model


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj, path: str | Path) -> Path:
    """torch.save ``obj`` to ``path`` via a temp file + fsync + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise RuntimeError(f"{path}: not a readable asrlib checkpoint ({e})") from None


_STEP_RE = re.compile(r"^step-(\d+)\.pt$")


def list_checkpoints(folder: str | Path) -> list[Path]:
    """``step-*.pt`` files in ``folder``, oldest step first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def rotate(folder: str | Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` step checkpoints (``best.pt`` is separate)."""
    for p in list_checkpoints(folder)[:-keep_last] if keep_last > 0 else []:
        p.unlink(missing_ok=True)


def export_weights(model: HybridASR, out_dir: str | Path, tokenizer_path: str | Path | None = None) -> Path:
    """Write an inference folder: model.safetensors + config.json (+ tokenizer.model)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "asrlib"})
    write_config_and_tokenizer(model, out, tokenizer_path)
    return out


def write_config_and_tokenizer(model: HybridASR, out: Path, tokenizer_path: str | Path | None) -> None:
    """``config.json`` (the ModelConfig) and a copy of ``tokenizer.model`` beside a model's files."""
    (out / "config.json").write_text(json.dumps({"model": to_dict(model.cfg)}, indent=2) + "\n")
    if tokenizer_path:
        src = Path(tokenizer_path)
        src = src / "tokenizer.model" if src.is_dir() else src
        if src.resolve() != (out / "tokenizer.model").resolve():
            shutil.copyfile(src, out / "tokenizer.model")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[HybridASR, Path | None]:
    """Load a model from a training checkpoint (.pt) or an exported folder.

    Returns the model in eval mode and the tokenizer path it was trained with (or None).
    """
    path = Path(path)
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{path}: no config.json; is this an exported asrlib model folder?")
        cfg = model_config_from_dict(json.loads(cfg_file.read_text())["model"])
        model = build_model(cfg)
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        tok = path / "tokenizer.model"
        tok_path = tok if tok.is_file() else None
    else:
        ck = load_checkpoint(path)
        cfg = model_config_from_dict(ck["config"]["model"])
        model = build_model(cfg)
        model.load_state_dict(ck["model"])
        tok_path = Path(ck["tokenizer_path"]) if ck.get("tokenizer_path") else None
    return model.to(device).eval(), tok_path
