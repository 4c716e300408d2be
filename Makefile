# Two commands on a fresh machine (README):
#   make quickstart   venv + install + the four-variant experiment at its quick size (< 1 min of training)
#   make test         venv + install + megatron-core 0.19.2 venv + the whole test suite (what CI runs)
# The venv reuses a CUDA build of torch that the system Python already has (GPU nodes);
# elsewhere it installs the CPU build torch==2.13.0.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -q --durations=20

.PHONY: setup quickstart test test-fast

$(VENV)/.installed: pyproject.toml
	@if $(PYTHON) -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then \
	  echo "make: system torch has CUDA: venv with --system-site-packages"; \
	  $(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
	  $(PYTHON) -m venv $(VENV) && $(PY) -m pip install -q torch==2.13.0; \
	fi
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

quickstart: setup
	$(VENV)/bin/mgn experiment --size quick --out runs/quickstart

# pytest's exit code 5 (no test collected) is a failure here, not a pass.
# The megatron-core 0.19.2 venv is built beside .venv, at the same time (both mostly download).
test:
	@PYTHON=$(PYTHON) bash .ci/mcore019_venv.sh > .mcore019_venv.log 2>&1 & venv019=$$!; \
	  $(MAKE) --no-print-directory setup; rc=$$?; \
	  wait $$venv019; rc019=$$?; cat .mcore019_venv.log; \
	  if [ $$rc -ne 0 ] || [ $$rc019 -ne 0 ]; then echo "make test: setup failed (.venv rc $$rc, .venv-mcore019 rc $$rc019)" >&2; exit 1; fi
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-fast: setup
	$(PY) -m pytest -q -m "not slow"
