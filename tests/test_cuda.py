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


def test_compile_on_cuda_matches_eager(tmp_path):
    """Two steps compiled == two steps eager: losses within 1e-3 relative (kernel fusion
    reorders float32 sums), parameters within 1e-4 absolute (two AdamW steps move them ~6e-3)."""
    runs = []
    for i, comp in enumerate((False, True)):
        tr = _trainer(tmp_path / str(i), f"trainer.compile={str(comp).lower()}")
        batch = next(tr.micro_batches())
        runs.append(([tr.train_step([batch])["loss"] for _ in range(2)], tr.model.state_dict()))
    (la, sa), (lb, sb) = runs
    assert lb == pytest.approx(la, rel=1e-3)
    assert max(float((sa[k] - sb[k]).abs().max()) for k in sa) <= 1e-4


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
