# Two commands for a fresh machine (see README):  make demo   |   make test
# The venv is created on first use. On a CPU-only machine torch is pinned to the CPU build (torch==2.13.0);
# on a machine whose system python already has a CUDA torch, the venv reuses it (--system-site-packages).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test test-slow test-all install browser bench clean

$(BIN)/microt2i: pyproject.toml
	@if $(PY) -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then \
	  echo "[setup] CUDA torch found: reusing it"; \
	  $(PY) -m venv --system-site-packages $(VENV) && $(BIN)/pip install -q -e ".[eval,dev,data,lora]"; \
	else \
	  echo "[setup] CPU machine: pinning torch==2.13.0 (CPU build)"; \
	  $(PY) -m venv $(VENV) && $(BIN)/pip install -q "torch==2.13.0" -e ".[eval,dev,data,lora]"; \
	fi
	@touch $@

install: $(BIN)/microt2i

demo: install
	$(BIN)/microt2i demo

# The browser tests (tests/test_first_run.py) drive Debian's headless chromium. Installed here when we may (root
# and apt-get); otherwise the reason is printed and pytest reports those tests as skipped with it (-ra).
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
	    || command -v google-chrome >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "[setup] installing chromium for the browser tests (apt-get)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "[setup] chromium could not be installed: the browser tests will be skipped"; \
	else \
	  echo "[setup] no chromium and no root apt-get: the browser tests will be skipped (install chromium to run them)"; \
	fi

test: install browser
	$(BIN)/python -m pytest -q -m "not slow" tests

test-slow: install
	$(BIN)/python -m pytest -q -m slow tests

test-all: install browser
	$(BIN)/python -m pytest -q tests

bench: install
	$(BIN)/microt2i bench train

clean:
	rm -rf $(VENV) runs .pytest_cache
