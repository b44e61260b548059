# `make dream`, `make test` and `make bench` set everything up on a fresh machine: each creates
# .venv when missing and (re)installs the project only when pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=

HOST ?= 127.0.0.1
PORT ?= 5000
# Debian packages the tests start for real: chromium (MLflow UI), SLURM + munge, PostgreSQL.
APT_TEST := chromium slurm-wlm munge postgresql

.PHONY: dream sweep test bench ui server docs wheelhouse gpu-check clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip

# .installed: dreamlab with the TensorFlow backend (make dream, sweep). The stamps of
# installs without TensorFlow (ui, server, docs) do not touch it.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install -qq -e '.[tensorflow]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PY) -m pip install -qq -e '.[test]'
	touch $@ $(VENV)/.installed

# With no ARGS, dreamlab.fallback adds backbone=mobilenet_v2 backbone.weights=bundled (and says
# so) when InceptionV3's ImageNet weights are neither cached nor downloadable.
dream: $(VENV)/.installed
	$(PY) -m dreamlab $(if $(ARGS),$(ARGS),$$($(PY) -m dreamlab.fallback))

# A first grid (sweeps/starter.yaml) on the bundled network: works offline.
sweep: $(VENV)/.installed
	$(PY) -m dreamlab -m +sweep=starter backbone=mobilenet_v2 backbone.weights=bundled $(ARGS)

$(VENV)/.installed-server: pyproject.toml | $(PY)
	$(PY) -m pip install -qq -e '.[server]'
	touch $@

test: $(VENV)/.installed-test
	@command -v chromium >/dev/null 2>&1 && command -v slurmctld >/dev/null 2>&1 && command -v munged >/dev/null 2>&1 \
		&& ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_TEST)) >/dev/null 2>&1 \
		|| echo "note: could not apt-get install $(APT_TEST); the tests that need them say why they fail or skip"
	$(PY) -m pytest $(ARGS)

# Timings of this machine: a table on the console and outputs/bench/bench.{csv,json}. It times
# both backends and every launcher (Ray, SLURM), so it installs what make test does.
bench: $(VENV)/.installed-test
	$(PY) benchmarks/bench.py $(ARGS)

$(VENV)/.installed-ui: pyproject.toml | $(PY)
	$(PY) -m pip install -qq -e '.[ui]'
	touch $@

# The store make dream and make sweep write to (the full mlflow: the extra ui).
ui: $(VENV)/.installed-ui
	@echo "MLflow UI of outputs/mlflow.db: http://$(HOST):$(PORT) (Ctrl-C stops it)"
	@MLFLOW_LOGGING_LEVEL=WARNING $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db \
		--host $(HOST) --port $(PORT) $(ARGS)

# The team's MLflow server (dreamlab/server.py): PostgreSQL (DATABASE_URL, else a cluster under
# outputs/server), served artifacts, basic auth; HOST=0.0.0.0 to open it to the network.
server: $(VENV)/.installed-server
	@[ -n "$$DATABASE_URL" ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null 2>&1 \
		|| echo "note: could not apt-get install postgresql; set DATABASE_URL to an existing database"
	$(PY) -m dreamlab.server --host $(HOST) --port $(PORT) $(ARGS)

$(VENV)/.installed-docs: pyproject.toml | $(PY)
	$(PY) -m pip install -qq -e '.[docs]'
	touch $@

# The documentation site (mkdocs.yml, docs/), built offline; --strict fails on a broken link.
# NO_MKDOCS_2_WARNING quiets Material's end-of-life banner, which is not about this site.
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict -d outputs/site
	@echo "site: outputs/site/index.html"

# The GPU box (docs/backends.md#the-gpu-box). On a machine with internet: the wheels that a
# target without internet lacks for dreamlab[jax], minus what its package list HAVE names;
# imports only the standard library (and numpy), so any python3 with pip runs it.
PYTHON_VERSION ?= 3.12
PLATFORM ?= manylinux_2_28_x86_64
HAVE ?=
WHEELHOUSE ?= wheelhouse
wheelhouse:
	$(PYTHON) -m dreamlab.wheelhouse --python-version $(PYTHON_VERSION) --platform $(PLATFORM) \
		$(if $(HAVE),--have $(HAVE)) --out $(WHEELHOUSE) $(ARGS)

# On the target: install $(WHEELHOUSE)/ into $(PYTHON)'s own environment (no index; its JAX
# and numpy kept), then a real sweep on every GPU; CPU=1 runs the same check on the CPU.
OUT ?= outputs/gpu-check
CPU ?=
gpu-check:
	$(PYTHON) -m dreamlab.gpucheck --wheelhouse $(WHEELHOUSE) --out $(OUT) $(if $(CPU),--cpu) $(ARGS)

clean:
	rm -rf outputs
