# The two commands: `make demo` and `make test`. Both create .venv if missing and install into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet -e ".[test,torch]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lowbit demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not gpu" tests

bench: $(STAMP)
	$(VENV)/bin/lowbit bench --json benchmarks/results/latest.json

clean:
	rm -rf $(VENV) build *.egg-info
