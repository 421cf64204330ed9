#!/usr/bin/env bash
# One command for a fresh GPU machine: proves the GPU paths of asrlib and measures a step.
#
#   scripts/gpu_check.sh              # bare machine: venv, CUDA PyTorch, asrlib; pytest -m cuda;
#                                     # seed_large steps in fp32, bf16, bf16 + compile -> one JSON
#   scripts/gpu_check.sh --dry-run    # CPU, tiny sizes, the existing environment: shows the script works
#
# Environment (all optional):
#   TORCH_INDEX_URL  PyTorch wheel index (default https://download.pytorch.org/whl/cu128)
#   GPU_CHECK_VENV   venv folder (default .gpu-venv; reused when it already has a CUDA torch)
#   WITH_MAMBA_SSM=1 also pip install asrlib[cuda] (mamba-ssm; can take long to build)
#   GPU_CHECK_PYTHON an interpreter that already has a CUDA PyTorch and asrlib's dependencies: no venv,
#                    no network (T_TEST / T_BENCH: the phases' timeouts in seconds, default 150 / 240)
#   PYTHON           interpreter for the venv (default python3; for --dry-run, the one to run with,
#                    default .venv/bin/python when present)
#   STEPS, WARMUP    timed / untimed steps per mode (default 6 / 2; the compiled mode compiles in its warm-up)
# Budget: ~8 minutes on a GPU machine with a fast network (install ~2-3 min, tests ~1-2 min,
# steps ~3 min); every phase has a timeout, and the JSON is printed whatever fails.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
START=$SECONDS
OUT=$(mktemp -d -t asrlib-gpu-check-XXXX)
log() { echo "[gpu_check +$((SECONDS - START))s] $*" >&2; }

if [[ $DRY == 1 ]]; then
  PY=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  log "dry run: no install; using $PY ($("$PY" -c 'import torch; print("torch", torch.__version__)'))"
  DEVICE=cpu
  BENCH=(--config configs/tiny.toml --device cpu --utts 2 --seconds 2 --vocab 64 --threads 1
         --steps "${STEPS:-2}" --warmup "${WARMUP:-2}" --peak-tflops 1.0
         --modes fp32 bf16 bf16+compile --compile-backend aot_eager)  # inductor on a CPU: minutes per graph
  T_TEST=300; T_BENCH=900
elif [[ -n ${GPU_CHECK_PYTHON:-} ]]; then
  # a machine whose Python already has a CUDA PyTorch (and asrlib's other dependencies): no install
  PY=$GPU_CHECK_PYTHON
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' \
    || { echo "{\"error\": \"GPU_CHECK_PYTHON=$PY has no CUDA PyTorch\"}"; exit 1; }
  log "using $PY ($("$PY" -c 'import torch; print("torch", torch.__version__)')): no install"
  DEVICE=cuda
  BENCH=(--config configs/seed_large.toml --device cuda --steps "${STEPS:-6}" --warmup "${WARMUP:-2}"
         --modes fp32 bf16 bf16+compile)
  T_TEST=${T_TEST:-150}; T_BENCH=${T_BENCH:-240}
else
  VENV=${GPU_CHECK_VENV:-.gpu-venv}
  PY=$VENV/bin/python
  if ! [[ -x $PY ]] || ! "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    log "creating $VENV and installing the CUDA build of PyTorch"
    "${PYTHON:-python3}" -m venv "$VENV" || { echo '{"error": "python3 -m venv failed"}'; exit 1; }
    "$PY" -m pip install -q --upgrade pip
    timeout 300 "$PY" -m pip install -q torch --index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cu128}" \
      || { echo '{"error": "installing the CUDA PyTorch wheel failed (set TORCH_INDEX_URL?)"}'; exit 1; }
  fi
  log "installing asrlib (+ pytest)"
  timeout 180 "$PY" -m pip install -q -e . "pytest>=8" || { echo '{"error": "pip install -e . failed"}'; exit 1; }
  if [[ ${WITH_MAMBA_SSM:-0} == 1 ]]; then
    timeout 300 "$PY" -m pip install -q -e '.[cuda]' || log "mamba-ssm did not install: its test will skip"
  fi
  "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' \
    || { echo '{"error": "torch.cuda.is_available() is False after the install (driver? TORCH_INDEX_URL?)"}'; exit 1; }
  DEVICE=cuda
  BENCH=(--config configs/seed_large.toml --device cuda --steps "${STEPS:-6}" --warmup "${WARMUP:-2}"
         --modes fp32 bf16 bf16+compile)
  T_TEST=180; T_BENCH=$((480 - (SECONDS - START) - T_TEST - 10))
  (( T_BENCH < 120 )) && T_BENCH=120
fi

log "pytest -m cuda"
timeout "$T_TEST" "$PY" -m pytest -m cuda -q -rs -p no:cacheprovider tests > "$OUT/pytest.txt" 2>&1
TEST_RC=$?
tail -n 25 "$OUT/pytest.txt" >&2

log "training steps: ${BENCH[*]}"
timeout "$T_BENCH" "$PY" bench/gpu_step.py "${BENCH[@]}" > "$OUT/step.json" 2> "$OUT/step.err"
BENCH_RC=$?
[[ $BENCH_RC != 0 ]] && tail -n 20 "$OUT/step.err" >&2

"$PY" - "$OUT" "$TEST_RC" "$BENCH_RC" "$DRY" "$DEVICE" "$((SECONDS - START))" <<'EOF'
import json, re, sys
from pathlib import Path
out, test_rc, bench_rc, dry, device, seconds = sys.argv[1:]
text = Path(out, "pytest.txt").read_text()
summary = next((l.strip("= ") for l in reversed(text.splitlines()) if re.search(r"\d+ (passed|failed|skipped|deselected|error)", l)), "")
counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)", summary)}
try:
    step = json.loads(Path(out, "step.json").read_text())
except (OSError, ValueError):
    err = Path(out, "step.err").read_text().splitlines()
    done = [json.loads(l) for l in err if l.startswith('{"mode"')]  # the modes finished before a timeout
    step = {"error": f"bench/gpu_step.py exit {bench_rc}: " + " | ".join(err[-3:]),
            "modes": {m.pop("mode"): m for m in done}}
print(json.dumps({"gpu_check": "dry-run (CPU, tiny)" if dry == "1" else "GPU", "device": device,
                  "pytest_cuda": {"exit_code": int(test_rc), "counts": counts, "summary": summary},
                  "train_steps": step, "total_seconds": int(seconds),
                  "ok": int(test_rc) == 0 and int(bench_rc) == 0}, indent=1))
EOF
[[ $TEST_RC == 0 && $BENCH_RC == 0 ]]
