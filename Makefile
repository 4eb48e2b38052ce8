# plait: `make demo` runs the Bookinfo mesh, `make test` runs the suite. Both set up what
# they need on a fresh machine: a virtualenv, Python packages, Debian packages (as root).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# Debian packages the tests drive as real peers and clients (command -> package).
TEST_DEBS := curl:curl wrk:wrk tshark:tshark testssl:testssl.sh haproxy:haproxy nginx:nginx-light prometheus:prometheus chromium:chromium h2load:nghttp2-client redis-server:redis-server redis-cli:redis-tools iptables:iptables ping:iputils-ping
MESH   ?= examples/bookinfo/mesh.yaml
PYTEST_ARGS ?=

.PHONY: demo test lint bench venv debs clean help

help:
	@echo "make demo   run the Bookinfo demo (plait up $(MESH)); Ctrl-C stops it"
	@echo "make test   install everything needed and run the whole test suite"
	@echo "make lint   ruff + mypy"
	@echo "make bench  benchmarks (QUICK=1 for the short version)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[test,bench]'
	rm -f $(VENV)/.installed-*
	touch $@

# The mypyc-compiled data path, codecs included (optional: on any failure the Python source runs).
venv: $(STAMP)
	$(BIN)/python -m plait.build_native

# Install the Debian packages whose commands are missing (needs root; CI runs as root).
debs:
	@missing=""; for pair in $(TEST_DEBS); do \
	  cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

demo: venv
	exec $(BIN)/plait up $(MESH)

# Second pass: the tests that use fakes in the data path, on its Python source (tests/conftest.py).
test: venv debs
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	PLAIT_PURE_PYTHON=1 $(BIN)/python -m pytest -m python_core $(PYTEST_ARGS) || [ $$? = 5 ]

lint: venv
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

bench: venv debs
	$(BIN)/python -m bench.run $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) .plait build *.egg-info src/plait/_core src/plait/_core__mypyc*.so
