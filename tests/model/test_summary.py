"""``asrlib summary``: per-layer parameter counts against sum(p.numel()) and a written-out formula.

The formula below counts every weight of every layer by hand from the config (it knows the
architecture, not the code), so a summary that skips or double-counts a layer, and a model
that grows an unexpected parameter, both fail.
"""

from __future__ import annotations

import gc
import math
import re

import pytest
import torch

from asrlib.config import ModelConfig, load_config
from asrlib.model import summary
from asrlib.model.encoder import mixer_kinds
from asrlib.model.hybrid import build_model

VOCAB = 16


def expected_parameters(m: ModelConfig) -> dict[str, int]:
    """Parameter counts per part, from the architecture description (DESIGN.md) and the config."""
    fe, sub, enc = m.frontend, m.subsampling, m.encoder
    V1 = m.vocab_size + 1  # vocabulary + blank
    d = enc.d_model
    win = round(fe.win_ms * fe.sample_rate / 1000)
    n_freq = win // 2 + 1
    out = {"frontend": n_freq * fe.n_mels}  # trainable mel: Linear(F, M), no bias

    C = sub.channels
    stages = int(math.log2(sub.factor))
    f = fe.n_mels
    for _ in range(stages):
        f = (f - 1) // 2 + 1  # 3x3 stride 2, one bin of padding each side
    first = C * 1 * 9 + C  # Conv2d(1, C, 3x3)
    later = (C * 9 + C) + (C * C + C)  # depthwise 3x3 + pointwise 1x1, with biases
    out["subsampling"] = first + (stages - 1) * later + (C * f * d + d)  # + Linear(C*F', D)

    hidden = max(8, (round(enc.ffn_mult * d * 2 / 3) + 7) // 8 * 8)
    ffn = 3 * d * hidden  # SwiGLU gate/up/down, no biases
    norms = 4 * d  # RMSNorm weights: ffn1, mixer, conv, ffn2 (pre-norm block)
    k = enc.conv.kernel_size
    conv_norm = 2 * d if enc.conv.norm == "layernorm" else d
    conv = (d * 2 * d + 2 * d) + (d * k + d) + conv_norm + (d * d + d)  # pw_in, depthwise, norm, pw_out
    common = 2 * ffn + norms + conv

    H = enc.attention.n_heads
    K = enc.attention.n_kv_heads or max(1, H // 2)
    P = d // H
    gqa = d * H * P + d * 2 * K * P + H * P * d  # q, fused kv, out (no biases)

    mc = enc.mamba2
    E = mc.expand * d
    nh = E // mc.headdim
    Cv = E + 2 * mc.ngroups * mc.d_state
    mamba = d * (E + Cv + nh) + (Cv * mc.d_conv + Cv) + 3 * nh + E + E * d  # in_proj, conv1d, dt/A/D, norm, out

    for i in range(enc.n_blocks):
        is_mamba = enc.mamba_period > 0 and (i + 1) % enc.mamba_period == 0
        out[f"block{i}"] = common + (mamba if is_mamba else gqa)
    out["encoder.norm"] = d  # the one RMSNorm after the last block

    pc, jc = m.prediction, m.joint
    out["ctc_head"] = d * V1 + V1
    lstm, inp = 0, pc.embed_dim
    for _ in range(pc.layers):
        lstm += 4 * pc.hidden * (inp + pc.hidden) + 8 * pc.hidden  # W_ih, W_hh, b_ih, b_hh
        inp = pc.hidden
    out["prediction"] = V1 * pc.embed_dim + lstm
    out["joint"] = (d * jc.hidden + jc.hidden) + (pc.hidden * jc.hidden + jc.hidden) + (jc.hidden * V1 + V1)
    return out


def parse_summary(text: str) -> tuple[list[tuple[str, str, int]], dict[str, int], int]:
    """Rows (name, type, n), the 'total <kind>' lines and the TOTAL line of the printed table."""
    table, totals = text.strip().split("\n\n")
    rows = []
    for line in table.splitlines()[1:]:  # skip the header
        name, *kind, n = line.split()
        rows.append((name, " ".join(kind), int(n.replace(",", ""))))
    per_kind, grand = {}, None
    for line in totals.splitlines():
        m = re.fullmatch(r"total (.+?)\s+([\d,]+)", line.strip())
        if m:
            per_kind[m.group(1)] = int(m.group(2).replace(",", ""))
        elif line.startswith("TOTAL"):
            grand = int(line.split()[-1].replace(",", ""))
    return rows, per_kind, grand


def test_summary_command_counts_every_parameter(capsys):
    assert summary.main(["--config", "configs/tiny.toml", "--vocab-size", str(VOCAB)]) == 0
    rows, per_kind, grand = parse_summary(capsys.readouterr().out)

    cfg = load_config("configs/tiny.toml")
    cfg.model.vocab_size = VOCAB
    model = build_model(cfg.model)
    numel = sum(p.numel() for p in model.parameters())
    assert sum(n for _, _, n in rows) == numel == grand
    assert sum(per_kind.values()) == numel
    assert numel < 1_000_000  # the tiny preset's promise

    # every row against the formula, in order
    want = expected_parameters(cfg.model)
    assert [r[0] for r in rows] == ["frontend", "encoder.subsampling"] + [
        f"encoder.blocks.{i}" for i in range(cfg.model.encoder.n_blocks)] + ["encoder.norm", "ctc_head", "prediction", "joint"]
    assert [n for _, _, n in rows] == list(want.values())
    assert [r[1] for r in rows[2:-4]] == [f"conformer/{k}" for k in mixer_kinds(cfg.model.encoder)]
    assert per_kind["conformer/gqa"] == want["block0"] + want["block1"]
    assert per_kind["conformer/mamba2"] == want["block2"]


def test_summary_counts_change_with_the_config(capsys):
    """--set reaches the model: one more block adds exactly one GQA block's parameters."""
    summary.main(["--config", "configs/tiny.toml", "--vocab-size", str(VOCAB)])
    _, _, base = parse_summary(capsys.readouterr().out)
    summary.main(["--config", "configs/tiny.toml", "--vocab-size", str(VOCAB), "--set", "model.encoder.n_blocks=4"])
    _, per_kind, grand = parse_summary(capsys.readouterr().out)
    cfg = load_config("configs/tiny.toml")
    cfg.model.vocab_size = VOCAB
    assert grand - base == expected_parameters(cfg.model)["block0"]  # block 4 is GQA (period 3)


def test_seed_large_preset():
    """12 blocks of d_model 768, Mamba2 at 3, 6, 9, 12; counts match the formula (~174 M)."""
    cfg = load_config("configs/seed_large.toml")
    enc = cfg.model.encoder
    assert (enc.n_blocks, enc.d_model, enc.attention.n_heads, enc.attention.kv_heads()) == (12, 768, 12, 6)
    assert cfg.model.encoder.chunk_frames == 100 and cfg.model.encoder.left_chunks == 1  # 1 s and 1 s
    cfg.model.vocab_size = 1024
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = build_model(cfg.model)  # ~3 s and ~0.7 GB on CPU
        blocks = model.encoder.blocks
        assert len(blocks) == 12 and model.encoder.d_model == 768
        assert [b.kind for b in blocks] == ["gqa", "gqa", "mamba2"] * 4
        rows = summary.summary_rows(model)
        numel = sum(p.numel() for p in model.parameters())
        assert sum(n for _, _, n in rows) == numel == sum(summary.per_kind(model).values())
        assert [n for _, _, n in rows] == list(expected_parameters(cfg.model).values())
        assert 100e6 < numel < 250e6
    finally:
        torch.set_num_threads(threads)
        model = None
        gc.collect()


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_formula_follows_conv_norm_choice(norm, capsys):
    summary.main(["--config", "configs/tiny.toml", "--vocab-size", str(VOCAB), "--set", f"model.encoder.conv.norm={norm}"])
    _, _, grand = parse_summary(capsys.readouterr().out)
    cfg = load_config("configs/tiny.toml", [f"model.encoder.conv.norm={norm}"])
    cfg.model.vocab_size = VOCAB
    assert grand == sum(expected_parameters(cfg.model).values())


def test_the_pruned_loss_projections_are_counted():
    from asrlib.config import load_config
    from asrlib.model.summary import model_from_config, per_kind, summary_rows

    from asrlib.paths import REPO

    model = model_from_config(load_config(REPO / "configs" / "tiny.toml", ["model.joint.simple_projections=true"]).model, 16)
    assert ("simple", "SimpleProjections", sum(p.numel() for p in model.simple.parameters())) in summary_rows(model)
    assert sum(per_kind(model).values()) == sum(p.numel() for p in model.parameters())
