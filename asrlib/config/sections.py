"""The config's sections and keys: one dataclass per TOML section, one typed field per key.

Each field's default is what a key left out of the file means, and its comment what the key does.
``[model]`` and its sub-tables build the network (asrlib/model/), the dataset sections the batches
(asrlib/data/), ``[loss]`` the training objective, ``[optim]`` and ``[trainer]`` the run. Reading a
file into these is asrlib/config/load.py; rules across keys are asrlib/config/checks.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# --------------------------------------------------------------------------- model


@dataclass
class FrontendConfig:
    sample_rate: int = 16000  # Hz; audio is resampled to this on load
    win_ms: float = 25.0  # STFT window (Hann) length
    hop_ms: float = 10.0  # STFT hop
    n_mels: int = 80  # output features per frame
    f_min: float = 0.0  # lowest mel filter edge, Hz
    f_max: float = 0.0  # highest mel filter edge, Hz; 0 means sample_rate / 2
    trainable_mel: bool = True  # False freezes the mel projection at its mel-bank init
    # Keep the trainable mel weights >= 0: after each optimiser step the weights are clamped at 0
    # (projected gradient descent), so no filter output is clamped before the log. Off: on AN4 it
    # ended level (3 seeds) and started slower (notebook 01, configs/an4.toml).
    mel_nonnegative: bool = False
    # What keeps a filter's output >= 0 for the log: "clamp" (max(x, 0): a filter whose output goes
    # negative gives log(eps) whatever the sound, and passes no gradient back) or "abs" (|x|: a filter
    # with negative lobes reports the size of a contrast between bands, and keeps learning).
    mel_rectifier: Literal["clamp", "abs"] = "clamp"
    log_eps: float = 1e-6  # log(mel + eps)
    normalize: bool = False  # global per-bin mean/std normalisation, estimated from training audio


@dataclass
class SubsamplingConfig:
    factor: int = 4  # 4 or 8: encoder frame rate = frontend rate / factor
    channels: int = 64  # conv channels inside the subsampling stack


@dataclass
class AttentionConfig:
    n_heads: int = 4  # query heads (H)
    n_kv_heads: int = 0  # key/value groups (K); 0 means n_heads // 2
    rope_base: float = 10000.0  # RoPE frequency base
    dropout: float = 0.0  # attention-probability dropout (training only)

    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads > 0 else max(1, self.n_heads // 2)


@dataclass
class Mamba2Config:
    d_state: int = 64  # N, SSM state size per head
    d_conv: int = 4  # causal conv1d kernel
    expand: int = 2  # inner dim = expand * d_model
    headdim: int = 32  # P
    ngroups: int = 1  # groups sharing B and C
    chunk_size: int = 64  # SSD chunk length of the training scan
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    a_init_min: float = 1.0  # A = -exp(A_log), A_log initialised in log(uniform(min, max))
    a_init_max: float = 16.0
    backend: Literal["auto", "torch", "cuda"] = "auto"  # cuda = mamba_ssm kernels


@dataclass
class ConvModuleConfig:
    kernel_size: int = 15  # causal depthwise conv kernel (frames)
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"


@dataclass
class EncoderConfig:
    d_model: int = 144  # D
    n_blocks: int = 6
    ffn_mult: float = 4.0  # SwiGLU hidden = round(ffn_mult * d_model * 2 / 3)
    mamba_period: int = 3  # blocks period, 2*period, ... use Mamba2; 0 disables
    chunk_frames: int = 64  # attention chunk in FRONTEND frames (multiple of subsampling factor)
    left_chunks: int = 2  # chunks of left context each frame may attend to
    dropout: float = 0.1
    input_scale: float = 0.0  # multiplies the subsampling output (start of the residual stream); 0 = sqrt(d_model)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    mamba2: Mamba2Config = field(default_factory=Mamba2Config)
    conv: ConvModuleConfig = field(default_factory=ConvModuleConfig)


@dataclass
class PredictionConfig:
    # "lstm": embedding + LSTM over every previous token; "stateless": embedding + a causal
    # convolution over the last `context` tokens (no recurrence; output size embed_dim)
    kind: Literal["lstm", "stateless"] = "lstm"
    embed_dim: int = 128  # token embedding size
    hidden: int = 128  # LSTM hidden size (output of the prediction network); lstm only
    layers: int = 1  # LSTM layers; lstm only
    context: int = 2  # tokens the stateless network sees (>= 1: 1 is a bigram); stateless only
    dropout: float = 0.1


@dataclass
class JointConfig:
    hidden: int = 128  # joint space
    activation: Literal["tanh", "relu", "silu"] = "tanh"
    # the pruned RNN-T loss's training-only simple projections (model.simple); needed by loss.rnnt = "pruned",
    # kept in the config so a checkpoint rebuilds them; decoding and ONNX export ignore them
    simple_projections: bool = False


@dataclass
class ModelConfig:
    vocab_size: int = 0  # tokenizer pieces (V); filled from the tokenizer when 0. Blank = V.
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    subsampling: SubsamplingConfig = field(default_factory=SubsamplingConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    prediction: PredictionConfig = field(default_factory=PredictionConfig)
    joint: JointConfig = field(default_factory=JointConfig)
    # phones of loss.phone_lexicon: > 0 adds a CTC head over them (asrlib/lexicon.py; trained by the phone CTC,
    # read at inference only to rescore). Filled from the lexicon when 0 and loss.phone_ctc_weight > 0.
    # Blank = phone_vocab_size.
    phone_vocab_size: int = 0
    # the block whose output (through the final norm) the phone head reads; 0 = the encoder output. Filled
    # from loss.phone_ctc_block by the trainer, so that a model folder alone says where its head sits.
    phone_block: int = 0


# --------------------------------------------------------------------------- data


@dataclass
class TrainDatasetConfig:
    train_manifest: list[str] = field(default_factory=list)  # one path or a list
    max_duration: float = 20.0  # seconds; longer utterances are dropped and counted
    min_duration: float = 0.1
    batch_seconds: float = 60.0  # audio seconds per batch (bucketed by duration)
    max_batch_size: int = 64  # cap on utterances per batch
    num_buckets: int = 10
    sorted_epochs: int = 0  # first epochs whose batches go shortest first (SortaGrad), then shuffled
    num_workers: int = 0  # DataLoader worker processes decoding audio (0 = in the training process)
    pin_memory: bool = True  # page-locked batches for asynchronous host -> GPU copies (GPU only)
    persistent_workers: bool = True  # keep workers alive across epochs (with num_workers > 0)
    prefetch_factor: int = 2  # batches each worker prepares ahead (with num_workers > 0)
    strict: bool = False  # True: a bad utterance is an error; False: skipped and counted
    cache_audio: bool = False  # keep decoded training audio in memory after its first use (~230 MB per hour, per loader worker)
    speed_perturb: list[float] = field(default_factory=list)  # e.g. [0.9, 1.0, 1.1]; speed and gain run in the DataLoader workers
    gain_db: list[float] = field(default_factory=list)  # [low, high]: random gain per utterance, e.g. [-20.0, 6.0]
    noise_manifest: list[str] = field(default_factory=list)  # JSONL of noise recordings (texts ignored); [] = no noise
    noise_snr_db: list[float] = field(default_factory=lambda: [10.0, 20.0])  # [low, high]: SNR of the added noise
    noise_prob: float = 0.5  # the share of utterances that get noise (with a noise_manifest)


@dataclass
class ValidationDatasetConfig:
    validation_manifest: list[str] = field(default_factory=list)
    batch_seconds: float = 120.0
    max_batch_size: int = 64
    max_duration: float = 60.0


@dataclass
class TokenizerConfig:
    tokenizer_path: str = ""  # folder holding tokenizer.model (or the .model file)


@dataclass
class SpecAugmentConfig:
    freq_masks: int = 2
    freq_width: int = 15  # max mel bins per mask
    time_masks: int = 2
    time_width: float = 0.05  # max fraction of the utterance per mask
    start_step: int = 0  # the first optimiser steps train without SpecAugment (a faster learning start)
    # frequency warp (VTLP, Jaitly & Hinton 2013), before the masks: each utterance's mel axis is
    # stretched by a factor alpha uniform in [1 - freq_warp, 1 + freq_warp]; 0 = off
    freq_warp: float = 0.0


@dataclass
class LossConfig:
    ctc_weight: float = 0.3  # loss = (1 - w) * rnnt + w * ctc
    # intermediate CTC (Lee & Watanabe 2021): the CTC head also reads the output of these encoder
    # blocks (1-based), and loss += inter_ctc_weight * their mean CTC loss; training only
    inter_ctc_blocks: list[int] = field(default_factory=list)
    inter_ctc_weight: float = 0.0
    # auxiliary CTC over phones (asrlib/lexicon.py): a second CTC head on the encoder output whose
    # targets are the transcript's words spelled by phone_lexicon; loss += phone_ctc_weight * its
    # per-phone mean. At inference the head is read only to rescore (--phone-weight, asrlib/decoding/rescore.py).
    phone_ctc_weight: float = 0.0
    phone_lexicon: str = ""  # 'WORD PHONE PHONE ...' lines; relative to the config file's folder
    phone_ctc_block: int = 0  # the phone head reads block k's output (1-based, through the final norm); 0 = the encoder's
    rnnt_backend: Literal["auto", "native", "torchaudio"] = "native"
    zero_infinity: bool = True  # infeasible utterances contribute 0 and are counted
    fused_t_chunk: int = 0  # native and pruned RNN-T: frames of the joint evaluated at once; 0 = auto
    # "full": every (t, u) node through the joint (rnnt_backend applies); "pruned": k2's pruned RNN-T
    # (asrlib/losses/rnnt_pruned.py), which needs model.joint.simple_projections = true
    rnnt: Literal["full", "pruned"] = "full"
    prune_range: int = 5  # pruned: tokens per frame where the real joint is evaluated (>= 2)
    simple_loss_scale: float = 0.5  # pruned: weight of the simple loss after warm-up (1.0 during warm-up start)
    lm_scale: float = 0.0  # pruned: smoothing of the simple loss towards the prediction-only distribution
    am_scale: float = 0.0  # pruned: smoothing of the simple loss towards the encoder-only distribution
    prune_warmup_steps: int = 2000  # pruned: simple 1.0 -> simple_loss_scale and pruned 0.1 -> 1.0 over these steps


@dataclass
class OptimConfig:
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    warmup_steps: int = 500
    schedule: Literal["cosine", "noam", "constant"] = "cosine"
    min_lr_ratio: float = 0.05  # cosine floor as a fraction of lr
    grad_clip: float = 5.0
    accumulate: int = 1  # gradient accumulation steps
    frontend_lr_scale: float = 1.0  # the trainable mel layer learns at lr x this (see asrlib/optim.py)


INIT_MODULES = ("frontend", "encoder", "ctc_head", "prediction", "joint", "simple")  # HybridASR's parts


@dataclass
class TrainerConfig:
    output_dir: str = "runs/exp"
    max_steps: int = 10000
    eval_every: int = 500
    log_every: int = 20
    keep_last: int = 3
    seed: int = 1234
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = False
    # what compile = true compiles: "blocks" = each encoder block on its own (regional compilation:
    # one block's graph, reused by the blocks of its kind; frontend, heads and losses stay eager),
    # "model" = the whole module that trains, losses and DDP included (far longer to compile: the
    # RNN-T loss's loops unroll into the graph)
    compile_scope: Literal["blocks", "model"] = "blocks"
    resume: str = ""  # "" | "auto" | path to a checkpoint
    # a checkpoint (.pt) or model folder (best_model/, models/...) whose weights a new run starts from
    # (fine-tuning): fresh optimiser, schedule and step; not used when the run resumes. In a file it is
    # relative to the file's folder, like the manifests and the tokenizer
    init_from: str = ""
    # which of its parts: [] = all; e.g. ["frontend", "encoder"] for another tokenizer (the heads,
    # prediction network and joint then start afresh); see INIT_MODULES
    init_modules: list[str] = field(default_factory=list)
    num_threads: int = 0  # torch CPU threads; 0 = torch's default
    progress_bar: bool = True
    save_every_minutes: float = 30.0  # also checkpoint when this long passed since the last save; 0 = off
    ema_decay: float = 0.0  # > 0: evaluate and ship an exponential moving average of the weights (asrlib/ema.py)
    # DDP on CPUs of one machine: average the gradients through shared memory (asrlib/shared_memory_average.py)
    # or send them through gloo's TCP; GPUs and ranks on several machines always use their process group
    cpu_gradient_average: Literal["shared_memory", "gloo"] = "shared_memory"


@dataclass
class LoggerConfig:
    log_to_tensorboard: bool = True
    log_to_clearml: bool = False
    clearml_project: str = "asrlib"
    clearml_task: str = ""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    train_dataset: TrainDatasetConfig = field(default_factory=TrainDatasetConfig)
    validation_dataset: ValidationDatasetConfig = field(default_factory=ValidationDatasetConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
