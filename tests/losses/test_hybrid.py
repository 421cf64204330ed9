"""Hybrid loss = (1 - w) * rnnt + w * ctc."""

import pytest
import torch

from asrlib.losses.hybrid import LossParts, hybrid_loss


@pytest.mark.parametrize("w", [0.0, 1.0, 0.3])
def test_mix(w):
    r = torch.tensor(2.0, requires_grad=True)
    c = torch.tensor(5.0, requires_grad=True)
    total = hybrid_loss(r, c, w)
    assert total.item() == pytest.approx((1 - w) * 2.0 + w * 5.0)
    total.backward()
    assert r.grad.item() == pytest.approx(1 - w) and c.grad.item() == pytest.approx(w)


def test_weight_out_of_range():
    with pytest.raises(ValueError, match="ctc_weight"):
        hybrid_loss(torch.tensor(1.0), torch.tensor(1.0), 1.5)


def test_loss_parts():
    parts = LossParts.combine((torch.tensor(2.0), 1), (torch.tensor(4.0), 2), 0.25)
    assert parts.total.item() == pytest.approx(0.75 * 2 + 0.25 * 4)
    assert (parts.rnnt.item(), parts.ctc.item(), parts.n_infeasible_rnnt, parts.n_infeasible_ctc) == (2.0, 4.0, 1, 2)


def tiny_cfg(*overrides):
    from asrlib.config import load_config

    return load_config(None, ["model.vocab_size=7", "model.encoder.n_blocks=1", "model.encoder.d_model=16",
                              "model.encoder.attention.n_heads=2", "model.prediction.hidden=8",
                              "model.prediction.embed_dim=8", "model.joint.hidden=8", *overrides])


def batch():
    g = torch.Generator().manual_seed(0)
    audio = 0.1 * torch.randn(2, 8000, generator=g)
    tokens = torch.randint(0, 7, (2, 3), generator=g)
    return audio, torch.tensor([8000, 6000]), tokens, torch.tensor([3, 2])


@pytest.mark.parametrize("step", [0, 500, None])
def test_hybrid_pruned_mixes_simple_and_pruned_with_warm_up(step):
    from asrlib.losses.hybrid import HybridLoss
    from asrlib.model.hybrid import build_model

    cfg = tiny_cfg("loss.rnnt=pruned", "model.joint.simple_projections=true", "loss.prune_warmup_steps=1000",
                   "loss.simple_loss_scale=0.5", "loss.prune_range=3")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    out = HybridLoss(model, cfg)(*batch(), step=step)
    s, p = {0: (1.0, 0.1), 500: (0.75, 0.55), None: (0.5, 1.0)}[step]
    assert out["simple_scale"].item() == pytest.approx(s) and out["pruned_scale"].item() == pytest.approx(p)
    rnnt = s * out["rnnt_simple"] + p * out["rnnt_pruned"]
    assert out["rnnt"].item() == pytest.approx(rnnt.item(), rel=1e-5)
    w = cfg.loss.ctc_weight
    assert out["loss"].item() == pytest.approx(((1 - w) * rnnt + w * out["ctc"]).item(), rel=1e-5)
    out["loss"].backward()
    assert model.simple.am_proj.weight.grad is not None and model.joint.out.weight.grad is not None
    assert all(torch.isfinite(q.grad).all() for q in model.parameters() if q.grad is not None)


def test_hybrid_pruned_without_projections_is_a_clear_error():
    from asrlib.losses.hybrid import HybridLoss
    from asrlib.model.hybrid import build_model

    cfg = tiny_cfg()
    model = build_model(cfg.model)
    cfg.loss.rnnt = "pruned"  # bypassing the config check
    with pytest.raises(ValueError, match="simple_projections"):
        HybridLoss(model, cfg)(*batch())


def _manual_block_outputs(model, audio, lengths):
    """Each block's output by hand (subsampling, input scale, blocks in turn), and the lengths."""
    enc = model.encoder
    feats, feat_lengths = model.features(audio, lengths)
    x, enc_lengths = enc.subsampling(feats, feat_lengths)
    x = x * enc.input_scale
    outs = []
    for block in enc.blocks:
        x = block(x, enc_lengths)
        outs.append(x)
    return outs, enc_lengths


def test_intermediate_ctc_adds_the_shared_head_on_the_tapped_blocks():
    from asrlib.losses.hybrid import HybridLoss
    from asrlib.model.hybrid import build_model

    audio, lengths, tokens, token_lengths = batch()
    base_cfg = tiny_cfg("model.encoder.n_blocks=3")
    cfg = tiny_cfg("model.encoder.n_blocks=3", "loss.inter_ctc_blocks=[1, 2]", "loss.inter_ctc_weight=0.4")
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    base = HybridLoss(model, base_cfg)(audio, lengths, tokens, token_lengths)
    out = HybridLoss(model, cfg)(audio, lengths, tokens, token_lengths)
    # reference: the CTC head (after the encoder's final norm) on blocks 1 and 2, averaged
    outs, enc_lengths = _manual_block_outputs(model, audio, lengths)
    inter = [torch.nn.functional.ctc_loss(model.ctc_head(model.encoder.norm(h)).transpose(0, 1), tokens, enc_lengths,
                                          token_lengths, blank=model.blank, reduction="none")
             for h in outs[:2]]
    want = torch.stack([v.sum() / token_lengths.sum() for v in inter]).mean()  # "mean_tokens": sum / all tokens
    assert out["inter_ctc"].item() == pytest.approx(want.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(base["loss"].item() + 0.4 * want.item(), rel=1e-5)
    assert (out["rnnt"].item(), out["ctc"].item()) == (base["rnnt"].item(), base["ctc"].item())
    assert "inter_ctc" not in base


def test_encoder_taps_do_not_change_the_output():
    from asrlib.model.hybrid import build_model

    audio, lengths, _, _ = batch()
    torch.manual_seed(0)
    model = build_model(tiny_cfg("model.encoder.n_blocks=3").model).eval()
    feats, feat_lengths = model.features(audio, lengths)
    plain, plain_lengths = model.encoder(feats, feat_lengths)
    tapped_out, tapped_lengths, taps = model.encoder.forward_taps(feats, feat_lengths, (2,))
    outs, _ = _manual_block_outputs(model, audio, lengths)
    assert torch.equal(plain, tapped_out) and torch.equal(plain_lengths, tapped_lengths)
    assert len(taps) == 1 and torch.allclose(taps[0], model.encoder.norm(outs[1]))


@pytest.mark.parametrize("blocks, weight", [("[3]", "0.3"), ("[0]", "0.3"), ("[1]", "-1.0"), ("[]", "0.3")])
def test_intermediate_ctc_config_errors(blocks, weight):
    from asrlib.config import ConfigError

    with pytest.raises(ConfigError, match="inter_ctc_blocks"):
        tiny_cfg("model.encoder.n_blocks=3", f"loss.inter_ctc_blocks={blocks}", f"loss.inter_ctc_weight={weight}")


def test_phone_ctc_adds_the_phone_head_over_the_phone_targets():
    from asrlib.losses.hybrid import HybridLoss
    from asrlib.model.hybrid import build_model

    audio, lengths, tokens, token_lengths = batch()
    phones, phone_lengths = torch.tensor([[0, 3, 1, 4], [2, 2, 0, 0]]), torch.tensor([4, 2])
    cfg = tiny_cfg("model.phone_vocab_size=5", "loss.phone_ctc_weight=0.25", "loss.phone_lexicon=unused.txt")
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    base = HybridLoss(model, cfg)(audio, lengths, tokens, token_lengths)  # no phones (evaluation): no term
    out = HybridLoss(model, cfg)(audio, lengths, tokens, token_lengths, phones=phones, phone_lengths=phone_lengths)
    # reference: torch's CTC over the phone head's log-probs, blank last, summed over utterances / all phones
    enc, enc_lengths = model(audio, lengths)
    logits = model.phone_head.proj(enc).log_softmax(-1)
    assert logits.shape[-1] == 6
    ref = torch.nn.functional.ctc_loss(logits.transpose(0, 1), phones, enc_lengths, phone_lengths, blank=5,
                                       reduction="sum") / phone_lengths.sum()
    assert "phone_ctc" not in base and out["phone_ctc"].item() == pytest.approx(ref.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(base["loss"].item() + 0.25 * ref.item(), rel=1e-5)
    assert (out["rnnt"].item(), out["ctc"].item()) == (base["rnnt"].item(), base["ctc"].item())
    out["loss"].backward()
    assert model.phone_head.proj.weight.grad.abs().sum() > 0


def test_the_phone_head_leaves_every_other_parameter_and_the_random_state_as_without_it():
    from asrlib.model.hybrid import build_model

    torch.manual_seed(7)
    plain = build_model(tiny_cfg().model)
    after_plain = torch.rand(3)
    torch.manual_seed(7)
    with_head = build_model(tiny_cfg("model.phone_vocab_size=5").model)
    after_head = torch.rand(3)
    assert plain.phone_head is None and with_head.phone_head.proj.weight.shape == (6, 16)
    a, b = plain.state_dict(), with_head.state_dict()
    assert set(b) - set(a) == {"phone_head.proj.weight", "phone_head.proj.bias"}
    assert all(torch.equal(a[k], b[k]) for k in a) and torch.equal(after_plain, after_head)
    torch.manual_seed(8)  # the head is drawn from the seed like everything else
    assert not torch.equal(build_model(tiny_cfg("model.phone_vocab_size=5").model).phone_head.proj.weight,
                           with_head.phone_head.proj.weight)


@pytest.mark.parametrize("weight, lexicon", [("-0.1", "lex.txt"), ("0.3", "")])
def test_phone_ctc_config_errors(weight, lexicon):
    from asrlib.config import ConfigError

    with pytest.raises(ConfigError, match="phone_ctc_weight"):
        tiny_cfg(f"loss.phone_ctc_weight={weight}", f"loss.phone_lexicon={lexicon}")


@pytest.mark.parametrize("inter", [False, True])
def test_phone_ctc_on_a_lower_block_reads_that_blocks_output(inter):
    from asrlib.losses.hybrid import HybridLoss
    from asrlib.model.hybrid import build_model

    audio, lengths, tokens, token_lengths = batch()
    phones, phone_lengths = torch.tensor([[0, 3, 1, 4], [2, 2, 0, 0]]), torch.tensor([4, 2])
    keys = ["model.encoder.n_blocks=3", "model.phone_vocab_size=5", "loss.phone_ctc_weight=0.25",
            "loss.phone_lexicon=unused.txt", "loss.phone_ctc_block=1"]
    if inter:  # intermediate CTC on block 2 beside it: each term must read its own block
        keys += ["loss.inter_ctc_blocks=[2]", "loss.inter_ctc_weight=0.4"]
    torch.manual_seed(0)
    model = build_model(tiny_cfg(*keys).model).eval()
    out = HybridLoss(model, tiny_cfg(*keys))(audio, lengths, tokens, token_lengths, phones=phones,
                                             phone_lengths=phone_lengths)
    top = HybridLoss(model, tiny_cfg(*keys[:-1] if not inter else keys[:4] + keys[5:]))(
        audio, lengths, tokens, token_lengths, phones=phones, phone_lengths=phone_lengths)
    # reference: the phone head on block 1's output through the final norm, by a manual block loop
    outs, enc_lengths = _manual_block_outputs(model, audio, lengths)
    logits = model.phone_head.proj(model.encoder.norm(outs[0])).log_softmax(-1)
    ref = torch.nn.functional.ctc_loss(logits.transpose(0, 1), phones, enc_lengths, phone_lengths, blank=5,
                                       reduction="sum") / phone_lengths.sum()
    assert out["phone_ctc"].item() == pytest.approx(ref.item(), rel=1e-5)
    assert out["phone_ctc"].item() != pytest.approx(top["phone_ctc"].item(), rel=1e-3)  # the top block differs
    assert (out["rnnt"].item(), out["ctc"].item()) == (top["rnnt"].item(), top["ctc"].item())
    if inter:
        want = torch.nn.functional.ctc_loss(model.ctc_head(model.encoder.norm(outs[1])).transpose(0, 1), tokens,
                                            enc_lengths, token_lengths, blank=model.blank, reduction="sum")
        assert out["inter_ctc"].item() == pytest.approx(want.item() / token_lengths.sum().item(), rel=1e-5)


@pytest.mark.parametrize("block", ["3", "-1"])
def test_phone_ctc_block_out_of_range_is_a_config_error(block):
    from asrlib.config import ConfigError

    with pytest.raises(ConfigError, match="phone_ctc_block"):
        tiny_cfg("model.encoder.n_blocks=3", f"loss.phone_ctc_block={block}")


def test_model_phone_block_is_the_losss_or_left_to_the_trainer():
    """model.phone_block records where the phone head reads (filled from loss.phone_ctc_block by the
    trainer); set by hand to another block it would contradict the loss: a config error naming both."""
    from asrlib.config import ConfigError

    assert tiny_cfg("model.encoder.n_blocks=3", "loss.phone_ctc_block=2", "model.phone_block=2").model.phone_block == 2
    with pytest.raises(ConfigError, match="model.phone_block = 1 but loss.phone_ctc_block = 2"):
        tiny_cfg("model.encoder.n_blocks=3", "loss.phone_ctc_block=2", "model.phone_block=1")
