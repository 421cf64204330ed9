"""Checkpoints: atomic writes, safe loads, rotation, and exported inference weights.

- A training checkpoint is one ``.pt`` file holding only tensors and plain data (model,
  optimiser, scheduler and scaler state, sampler position, RNG states, step, the resolved
  config, the tokenizer path, and the tokenizer itself: the SentencePiece model's bytes as a
  uint8 tensor with their sha256, so a checkpoint decodes without the original folder). It is
  loaded with ``torch.load(weights_only=True)``: a checkpoint never runs code.
- Writes are atomic: a temporary file in the same folder, flushed and fsync'ed, then renamed
  over the target. A process killed mid-save leaves the previous checkpoint intact.
- Exported weights (for inference, ``models/…``) are a folder: ``model.safetensors``,
  ``config.json`` (the ModelConfig and the tokenizer's sha256) and ``tokenizer.model``; a model
  with a phone head also gets its pronunciation lexicon as ``lexicon.txt`` (what rescoring reads).
- ``load_model_and_tokenizer`` returns a model with *its* tokenizer; a tokenizer given on the
  command line must be the same file (same sha256) or it is a one-line error.
- Runtime choices are not properties of the weights: ``model.encoder.mamba2.backend`` (which
  scan kernel runs) is ignored when a resumed run's config is compared with the checkpoint's,
  and loaders rebuild a saved model with ``backend = "auto"`` (or the one asked for), so a
  model trained on a GPU with the mamba-ssm kernels runs offline on a CPU.
- Rotation deletes only checkpoints up to the current step: files of a later step (another
  run's, or the future of a run resumed from an earlier checkpoint) are never touched.
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

from asrlib.config import ConfigError, model_config_from_dict, to_dict
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
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise RuntimeError(f"{path}: not a readable asrlib checkpoint ({e})") from None
    config = ck.get("config") if isinstance(ck, dict) else None
    if isinstance(config, dict) and isinstance(config.get("model"), dict) and "phone_block" not in config["model"]:
        # written before the model recorded its phone head's block: the run's loss section has it
        config["model"]["phone_block"] = config.get("loss", {}).get("phone_ctc_block", 0)
    return ck


def inference_state(ck: dict) -> dict:
    """The weights a training checkpoint is evaluated and shipped with: the run's weight average
    when it kept one (``trainer.ema_decay``, asrlib/ema.py), else its training weights."""
    return ck["ema"]["model"] if "ema" in ck else ck["model"]


_STEP_RE = re.compile(r"^step-(\d+)\.pt$")


def list_checkpoints(folder: str | Path) -> list[Path]:
    """``step-*.pt`` files in ``folder``, oldest step first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = sorted((step, p) for p in folder.iterdir() if (step := step_of(p)) is not None)
    return [p for _, p in found]


def rotate(folder: str | Path, keep_last: int, up_to_step: int | None = None) -> None:
    """Delete all but the newest ``keep_last`` step checkpoints (``best.pt`` is separate).

    Only checkpoints of step <= ``up_to_step`` are candidates (None: all).
    """
    mine = [p for p in list_checkpoints(folder) if up_to_step is None or step_of(p) <= up_to_step]
    for p in mine[:-keep_last] if keep_last > 0 else []:
        p.unlink(missing_ok=True)


def step_of(path: str | Path) -> int | None:
    """The step of a ``step-*.pt`` file name (None for any other name, e.g. ``best.pt``)."""
    m = _STEP_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def tokenizer_state(tokenizer) -> dict:
    """The checkpoint entries that carry a tokenizer: its path, bytes and sha256."""
    return {"tokenizer_path": str(tokenizer.path),
            "tokenizer_model": torch.frombuffer(bytearray(tokenizer.proto), dtype=torch.uint8),
            "tokenizer_sha256": tokenizer.sha256}


def tokenizer_from_state(state: dict, where: str | Path):
    """The tokenizer stored in a checkpoint (None for a checkpoint without one); checks the hash."""
    from asrlib.tokenizer import Tokenizer, TokenizerError

    if "tokenizer_model" not in state:
        return None
    tok = Tokenizer.from_bytes(state["tokenizer_model"].numpy().tobytes(), f"{where} (stored tokenizer)")
    if tok.sha256 != state.get("tokenizer_sha256"):
        raise TokenizerError(f"{where}: the stored tokenizer does not match its sha256; the checkpoint is damaged")
    return tok


RUNTIME_KEYS = ("model.encoder.mamba2.backend",)  # runtime choices: may differ between save and load


def model_mismatch(saved: dict, now: dict) -> str | None:
    """The first config key whose value differs, as ``key = X in the checkpoint, Y now`` (None if equal).

    Keys in ``RUNTIME_KEYS`` are not compared. A key the checkpoint lacks (it was written before
    the key existed, e.g. ``phone_vocab_size``) is compared as its default value."""
    try:
        saved = to_dict(model_config_from_dict(saved))
    except ConfigError:  # a key this version does not know (a newer checkpoint): compared as written
        pass
    return next(model_differences(saved, now), None)


def model_differences(saved: dict, now: dict, prefix: str = "model"):
    """Every config key whose value differs (see ``model_mismatch``), in key order."""
    for key in sorted(set(saved) | set(now)):
        if f"{prefix}.{key}" in RUNTIME_KEYS:
            continue
        a, b = saved.get(key, "<absent>"), now.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            yield from model_differences(a, b, f"{prefix}.{key}")
        elif a != b:
            yield f"{prefix}.{key} = {a!r} in the checkpoint, {b!r} now"


def export_weights(model: HybridASR, out_dir: str | Path, tokenizer=None, lexicon: str | Path | None = None) -> Path:
    """Write an inference folder: model.safetensors + config.json (+ tokenizer.model, + lexicon.txt)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "asrlib"})
    write_config_and_tokenizer(model, out, tokenizer, lexicon)
    return out


def write_config_and_tokenizer(model: HybridASR, out: Path, tokenizer=None, lexicon: str | Path | None = None) -> None:
    """``config.json`` (the ModelConfig, the tokenizer's sha256) and ``tokenizer.model`` beside a model.

    ``tokenizer``: a Tokenizer, or the path of a tokenizer folder / .model file, or None.
    ``lexicon``: the pronunciation lexicon of the model's phone head, copied as ``lexicon.txt``
    (ignored for a model without a phone head).
    """
    from asrlib.tokenizer import Tokenizer

    tok = Tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
    meta = {"model": to_dict(model.cfg)}
    if tok is not None:
        meta["tokenizer_sha256"] = tok.sha256
        tok.save(out / "tokenizer.model")
    (out / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    if lexicon is not None and model.phone_head is not None and Path(lexicon).resolve() != (out / "lexicon.txt").resolve():
        shutil.copyfile(lexicon, out / "lexicon.txt")


def lexicon_of(path: str | Path) -> Path | None:
    """The phone lexicon that goes with a model: ``lexicon.txt`` in a model folder, or the file a
    training checkpoint's ``loss.phone_lexicon`` names (None when there is none, or it is gone)."""
    path = Path(path)
    if path.is_dir():
        found = path / "lexicon.txt"
    else:
        loss = load_checkpoint(path).get("config", {}).get("loss", {})
        found = Path(loss["phone_lexicon"]) if loss.get("phone_ctc_weight", 0) > 0 and loss.get("phone_lexicon") else None
    return found if found is not None and found.is_file() else None


def load_model(path: str | Path, device: str | torch.device = "cpu",
               mamba_backend: str = "auto") -> tuple[HybridASR, Path | None]:
    """Load a model from a training checkpoint (.pt) or an exported folder.

    Returns the model in eval mode and the tokenizer path it was trained with (or None). The
    Mamba2 scan backend is ``mamba_backend``, whatever the saved config says (a runtime choice).
    """
    path = Path(path)
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{path}: no config.json; is this an exported asrlib model folder?")
        cfg = model_config_from_dict(json.loads(cfg_file.read_text())["model"])
        cfg.encoder.mamba2.backend = mamba_backend
        model = build_model(cfg)
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        tok = path / "tokenizer.model"
        tok_path = tok if tok.is_file() else None
    else:
        model, tok_path = _model_of_checkpoint(load_checkpoint(path), mamba_backend)
    return model.to(device).eval(), tok_path


def _model_of_checkpoint(ck: dict, mamba_backend: str = "auto") -> tuple[HybridASR, Path | None]:
    """The model a loaded training checkpoint evaluates with, and its tokenizer path (or None)."""
    cfg = model_config_from_dict(ck["config"]["model"])
    cfg.encoder.mamba2.backend = mamba_backend
    model = build_model(cfg)
    model.load_state_dict(inference_state(ck))
    return model, Path(ck["tokenizer_path"]) if ck.get("tokenizer_path") else None


def load_model_and_tokenizer(path: str | Path, tokenizer: str | Path | None = None,
                             device: str | torch.device = "cpu"):
    """(model in eval mode, its Tokenizer) from a checkpoint or an exported folder.

    ``tokenizer`` (e.g. ``--tokenizer``) is optional; when the model carries its own, the given
    one must be the same file (sha256), else a TokenizerError says so in one line.
    """
    from asrlib.tokenizer import Tokenizer, TokenizerError

    path = Path(path)
    if path.is_dir():
        model, tok_path = load_model(path, device)
        own = Tokenizer(tok_path) if tok_path else None
        expected = json.loads((path / "config.json").read_text()).get("tokenizer_sha256")
        if own is not None and expected and own.sha256 != expected:
            raise TokenizerError(f"{tok_path} is not the tokenizer this model was exported with (sha256 "
                                 f"{own.sha256[:12]} vs {expected[:12]} in config.json); restore its tokenizer.model")
    else:  # the checkpoint read once, for the model and its stored tokenizer
        ck = load_checkpoint(path)
        model, tok_path = _model_of_checkpoint(ck)
        model = model.to(device).eval()
        own = tokenizer_from_state(ck, path)
        if own is None and tok_path is not None and tok_path.exists():
            own = Tokenizer(tok_path)  # an older checkpoint: only the path was stored
    if tokenizer is not None:
        given = Tokenizer(tokenizer)
        if own is not None and given.sha256 != own.sha256:
            raise TokenizerError(f"--tokenizer {tokenizer} is not the tokenizer {path} was trained with (sha256 "
                                 f"{given.sha256[:12]} vs {own.sha256[:12]}); drop --tokenizer to use the model's own")
        own = given
    if own is None:
        raise TokenizerError(f"{path} carries no tokenizer (no tokenizer.model); pass --tokenizer with the one it "
                             "was trained with")
    if own.vocab_size != model.cfg.vocab_size:
        raise TokenizerError(f"the tokenizer {own.path} has {own.vocab_size} pieces but {path} has vocab_size "
                             f"{model.cfg.vocab_size}; pass the tokenizer the model was trained with")
    return model, own
