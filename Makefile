# `make dream`, `make test` and `make bench` set everything up on a fresh machine: each creates
# .venv when missing and (re)installs the project only when pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: dream test bench ui clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

dream: $(VENV)/.installed
	$(PY) -m dreamlab $(ARGS)

test: $(VENV)/.installed-test
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 \
		|| echo "note: Debian's chromium could not be installed; the MLflow UI test will say it is skipped"
	$(PY) -m pytest $(ARGS)

# Timings of this machine: a table on the console and outputs/bench/bench.{csv,json}.
bench: $(VENV)/.installed
	$(PY) benchmarks/bench.py $(ARGS)

ui: $(VENV)/.installed
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db

clean:
	rm -rf outputs
