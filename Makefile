# Two commands for a newcomer: `make demo` (train + evaluate on the bundled digits) and
# `make test` (pytest + the notebooks under nbval). Both set up .venv first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.asrlib-installed
# The CPU wheel of PyTorch. GPU users: `make setup TORCH_SPEC=torch` (a CUDA build from PyPI).
TORCH_SPEC ?= torch==2.13.0
EXTRAS  ?= notebooks,onnx,dev
DEMO_OUT ?= runs/demo
# make demo DATA=an4 (or make demo-an4) trains configs/an4.toml on the bundled AN4 speech;
# DATA=an4-long trains configs/an4_long.toml (the run behind models/an4: 71-76 minutes of training on a 2-core
# AVX-512 Xeon at 62-67 audio-s/s, 113 on a 2-core Zen 3 EPYC at 42; see its header).
DATA    ?= digits
DEMO_CONFIG := $(if $(filter an4,$(DATA)),configs/an4.toml,$(if $(filter an4-long,$(DATA)),configs/an4_long.toml,configs/demo.toml))
# make demo SEED=2: another seed, in its own folder (runs/demo-seed2)
SEED    ?=
DEMO_DIR    := $(if $(filter an4 an4-long,$(DATA)),runs/$(DATA),$(DEMO_OUT))$(if $(SEED),-seed$(SEED))
DEMO_ARGS   ?= $(if $(SEED),--set trainer.seed=$(SEED))
# AN4's texts have structure (words spelled, dates, numbers) that an n-gram model of the training text
# learns: its table adds beam search with one fused in (asrlib/ngram.py); random digit strings have none
DEMO_LM     := $(if $(filter an4 an4-long,$(DATA)),--lm-order 8)
# make demo trains with this many one-thread processes (torchrun + DDP, gloo); 1 = plain python.
DEMO_PROCS ?= 2

.PHONY: setup demo demo-an4 test test-fast notebooks lab bench clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $(STAMP)

demo: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m torch.distributed.run --standalone --nproc_per_node $(DEMO_PROCS) \
		-m asrlib.demo --config $(DEMO_CONFIG) --out $(DEMO_DIR) $(DEMO_LM) $(DEMO_ARGS)

demo-an4:
	$(MAKE) demo DATA=an4

test: setup
	$(BIN)/python -m pytest -q tests
	$(BIN)/python -m pytest -q --nbval-lax --nbval-current-env notebooks

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" tests

# Re-run every notebook in place (papermill, CPU, a few minutes): the saved figures and
# outputs are what someone browsing the repository sees.
notebooks: setup
	@for nb in notebooks/0*.ipynb; do echo "== $$nb"; \
		$(BIN)/papermill --cwd notebooks -k python3 --no-progress-bar "$$nb" "$$nb" || exit 1; done

lab: setup
	$(BIN)/jupyter lab notebooks

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b; done

clean-venv:
	rm -rf $(VENV)
