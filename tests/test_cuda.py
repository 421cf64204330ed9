"""GPU-only checks (marker ``cuda``; each skips cleanly without a CUDA device).

Run on a GPU machine with ``pytest -m cuda`` (scripts/gpu_check.sh does). What they prove:
- fp16 + GradScaler and bf16 steps of the trainer on CUDA stay finite and learn;
- torch.compile on CUDA takes the same two steps as eager (tolerance below);
- streaming == full forward on CUDA (the central property, on the GPU's kernels);
- the chunk-masked attention through SDPA on CUDA (fused kernels) equals the dense reference;
- (tests/model/test_mamba2.py) the mamba-ssm kernel equals the pure-PyTorch scan.
"""

from __future__ import annotations

import math

import pytest
import torch

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

from test_train import SHORT, make_manifest, tiny_config  # noqa: E402  (tests/ is on sys.path)

from asrlib.train import Trainer  # noqa: E402


def _trainer(tmp_path, *extra):
    cfg = tiny_config(tmp_path / "run", make_manifest(tmp_path, SHORT), "trainer.device=cuda",
                      "spec_augment.freq_masks=0", "spec_augment.time_masks=0", "optim.schedule=constant",
                      "optim.warmup_steps=0", "optim.lr=3e-3", "train_dataset.batch_seconds=100.0",
                      "train_dataset.num_buckets=1", *extra)
    tr = Trainer(cfg)
    tr.setup()
    return tr


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_steps_learn(tmp_path, precision):
    tr = _trainer(tmp_path, f"trainer.precision={precision}")
    assert tr.device.type == "cuda" and tr.scaler.is_enabled() == (precision == "fp16")
    batch = next(tr.micro_batches())
    values = [tr.train_step([batch]) for _ in range(12)]
    done = [v for v in values if not v["skipped"]]
    assert tr.progress.skipped_nonfinite == 0, values  # fp16 calibration skips go to skipped_scaler
    assert len(done) >= 8 and all(math.isfinite(v["loss"]) for v in done)
    assert done[-1]["loss"] < 0.8 * done[0]["loss"], [v["loss"] for v in values]


@pytest.mark.parametrize("scope", ["blocks", "model"])
def test_compile_on_cuda_matches_eager(tmp_path, scope):
    """Two steps compiled == two steps eager on CUDA: losses within 1e-4 relative, AdamW first
    moments within 1e-3 of each parameter's largest entry (fused kernels reorder sums; TF32 off)."""
    from test_train import assert_steps_close, two_steps

    torch.backends.cuda.matmul.allow_tf32 = False
    eager = two_steps(tmp_path, "eager", "trainer.device=cuda")
    compiled = two_steps(tmp_path, "compiled", "trainer.device=cuda", "trainer.compile=true",
                         f"trainer.compile_scope={scope}")
    assert_steps_close(eager, compiled, 1e-4, 1e-3)


def test_streaming_equals_full_on_cuda():
    from test_streaming import TOL, _check, _model, _utterance

    from asrlib.compare import compare_stream

    model = _model("tiny").cuda()
    for piece in (37, 1600, 0):
        r = compare_stream(model, _utterance(1), piece)
        assert r["max_abs_diff"] <= TOL * 10 * max(1.0, r["max_abs_value"]), r["max_abs_diff"]  # GPU kernels: 10x
        r["max_abs_diff"] = 0.0
        _check(r)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_chunk_masked_sdpa_on_cuda_equals_dense(dtype, tol):
    from model.test_attention import make

    torch.manual_seed(0)
    m = make(n_heads=4, n_kv_heads=2, chunk=4, left=2).cuda().to(dtype)
    x = torch.randn(3, 37, m.out_proj.in_features, device="cuda", dtype=dtype)
    lengths = torch.tensor([37, 20, 5], device="cuda")
    with torch.no_grad():
        got, ref = m(x, lengths), m.forward_dense(x, lengths)
    valid = torch.arange(37, device="cuda")[None] < lengths[:, None]
    diff = (got - ref).float().abs()[valid].max().item()
    assert diff <= tol * max(1.0, ref.float().abs().max().item())
