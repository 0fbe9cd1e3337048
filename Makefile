# The two commands: `make demo` and `make test`. Both create .venv if missing and install into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-model install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet -e ".[test,torch,examples]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lowbit demo
	$(VENV)/bin/lowbit decoder

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m "not slow and not gpu" tests

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[test,bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(VENV)/bin/lowbit bench --markdown

bench-model: $(STAMP)
	$(VENV)/bin/lowbit decoder --hidden 2048 --layers 4 --vocab 4096 --json benchmarks/results/decoder.json

clean:
	rm -rf $(VENV) build *.egg-info
