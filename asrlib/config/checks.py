"""Rules across a config's keys that a type alone cannot express (a range, a pair, a key that
needs another), checked after a file and its overrides are read. Each failure is a ``ConfigError``
naming the file, the dotted key, what it holds and what it should.
"""

from __future__ import annotations

from asrlib.config.sections import INIT_MODULES, Config, LossConfig, ModelConfig


class ConfigError(ValueError):
    """A config file or override is wrong; the message says where and what is expected."""


def check_config(cfg: Config, source: str) -> None:
    """Every rule across keys of a whole config; ``source`` (the file) starts each message."""
    gain = cfg.train_dataset.gain_db
    if gain and (len(gain) != 2 or gain[0] > gain[1]):
        raise ConfigError(f"{source}: train_dataset.gain_db: expected [low, high] in dB with low <= high, got {gain!r}")
    snr = cfg.train_dataset.noise_snr_db
    if len(snr) != 2 or snr[0] > snr[1]:
        raise ConfigError(f"{source}: train_dataset.noise_snr_db: expected [low, high] in dB with low <= high, got {snr!r}")
    if not 0.0 <= cfg.train_dataset.noise_prob <= 1.0:
        raise ConfigError(f"{source}: train_dataset.noise_prob: expected a probability in [0, 1], got "
                          f"{cfg.train_dataset.noise_prob}")
    if cfg.train_dataset.num_workers < 0:
        raise ConfigError(f"{source}: train_dataset.num_workers: expected >= 0, got {cfg.train_dataset.num_workers}")
    if cfg.train_dataset.prefetch_factor < 1:
        raise ConfigError(f"{source}: train_dataset.prefetch_factor: expected >= 1, got "
                          f"{cfg.train_dataset.prefetch_factor}")
    if any(f <= 0 for f in cfg.train_dataset.speed_perturb):
        raise ConfigError(f"{source}: train_dataset.speed_perturb: factors must be > 0, got {cfg.train_dataset.speed_perturb!r}")
    if not 0.0 <= cfg.trainer.ema_decay < 1.0:
        raise ConfigError(f"{source}: trainer.ema_decay: expected 0 (off) or a decay in (0, 1) such as 0.999, got "
                          f"{cfg.trainer.ema_decay}")
    if not 0.0 <= cfg.spec_augment.freq_warp < 0.5:
        raise ConfigError(f"{source}: spec_augment.freq_warp: expected 0 (off) or a maximum stretch in (0, 0.5) such "
                          f"as 0.1 (alpha uniform in [0.9, 1.1]), got {cfg.spec_augment.freq_warp}")
    unknown = [m for m in cfg.trainer.init_modules if m not in INIT_MODULES]
    if unknown:
        raise ConfigError(f"{source}: trainer.init_modules: {unknown[0]!r} is not a part of the model; choose from "
                          f"{', '.join(INIT_MODULES)}")
    pred = cfg.model.prediction
    if pred.kind == "stateless" and (pred.context < 1 or pred.embed_dim % 4):
        raise ConfigError(f"{source}: model.prediction: the stateless network needs context >= 1 and embed_dim a "
                          f"multiple of 4, got context = {pred.context}, embed_dim = {pred.embed_dim}")
    check_loss_config(cfg.loss, cfg.model, source)


def check_loss_config(loss: LossConfig, model: ModelConfig, source: str = "<config>") -> None:
    """The [loss] keys: the pruned RNN-T loss's ranges and the model field it needs, and the
    intermediate CTC blocks."""
    if loss.prune_range < 2:
        raise ConfigError(f"{source}: loss.prune_range = {loss.prune_range}: expected an integer >= 2 "
                          "(tokens per frame in the pruned band; k2/icefall use 5)")
    if loss.simple_loss_scale < 0:
        raise ConfigError(f"{source}: loss.simple_loss_scale = {loss.simple_loss_scale}: expected a number >= 0")
    for key in ("lm_scale", "am_scale"):
        if not 0.0 <= getattr(loss, key) <= 1.0:
            raise ConfigError(f"{source}: loss.{key} = {getattr(loss, key)}: expected a number in [0, 1]")
    if loss.lm_scale + loss.am_scale > 1.0:
        raise ConfigError(f"{source}: loss.lm_scale + loss.am_scale = {loss.lm_scale + loss.am_scale}: "
                          "expected at most 1 (the rest weighs the simple joint itself)")
    if loss.prune_warmup_steps < 0:
        raise ConfigError(f"{source}: loss.prune_warmup_steps = {loss.prune_warmup_steps}: expected an integer >= 0")
    n = model.encoder.n_blocks
    if any(not 1 <= b < n for b in loss.inter_ctc_blocks) or loss.inter_ctc_weight < 0:
        raise ConfigError(f"{source}: loss.inter_ctc_blocks = {loss.inter_ctc_blocks}, inter_ctc_weight = "
                          f"{loss.inter_ctc_weight}: expected block numbers in 1 .. {n - 1} (the last block is "
                          "the CTC head's own input) and a weight >= 0")
    if loss.inter_ctc_weight > 0 and not loss.inter_ctc_blocks:
        raise ConfigError(f"{source}: loss.inter_ctc_weight = {loss.inter_ctc_weight} but loss.inter_ctc_blocks "
                          "is empty: name the blocks whose output the CTC head should also read, e.g. [3]")
    if loss.phone_ctc_weight < 0 or (loss.phone_ctc_weight > 0 and not loss.phone_lexicon):
        raise ConfigError(f"{source}: loss.phone_ctc_weight = {loss.phone_ctc_weight}, phone_lexicon = "
                          f"{loss.phone_lexicon!r}: expected a weight >= 0 and, when it is > 0, the path of a "
                          "lexicon file ('WORD PHONE PHONE ...' lines; see asrlib/lexicon.py)")
    if not 0 <= loss.phone_ctc_block < n:
        raise ConfigError(f"{source}: loss.phone_ctc_block = {loss.phone_ctc_block}: expected 0 (the encoder's "
                          f"output) or a block number in 1 .. {n - 1} whose output the phone head reads")
    if model.phone_block not in (0, loss.phone_ctc_block):
        raise ConfigError(f"{source}: model.phone_block = {model.phone_block} but loss.phone_ctc_block = "
                          f"{loss.phone_ctc_block}: leave model.phone_block at 0 (the trainer fills it from "
                          "loss.phone_ctc_block)")
    if loss.rnnt == "pruned" and not model.joint.simple_projections:
        raise ConfigError(f"{source}: loss.rnnt = \"pruned\" needs the simple projections on the model: "
                          "set model.joint.simple_projections = true (a model trained so keeps them in its "
                          "checkpoint; decoding ignores them)")
