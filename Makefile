# Two commands a newcomer needs: `make repro` (the pipeline on the embedded default) and
# `make test`. Both create .venv and install the project first, from the lock
# (locks/requirements.txt: every package pinned with its hashes; `make lock` regenerates it).
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PIP := $(PY) -m pip install -q --disable-pip-version-check
LOCK := locks/requirements.txt
# resolved for every platform and Python >= 3.11; constraints.txt holds the pins it keeps to
COMPILE := $(VENV)/bin/uv pip compile -q --universal --python-version 3.11 --generate-hashes \
  --no-strip-extras
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install lock system-deps repro seeds test lint

$(STAMP): $(LOCK) pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) --require-hashes -r $(LOCK)
	$(PIP) --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# After editing pyproject.toml's dependencies or constraints.txt (needs the package registry).
lock: install
	$(COMPILE) pyproject.toml locks/build.in --extra dev --extra cluster -c constraints.txt \
	  -o $(LOCK)
	$(COMPILE) locks/mlflow-server.in -c $(LOCK) -o locks/mlflow-server.txt

repro: install
	dvc repro
	$(PY) -m tasks.summary

# The paper's claims over three data + training seeds (three pipelines up to evaluate, about
# 40 minutes on 2 cores): reports/seeds.md
seeds: install
	$(PY) -m tasks.seeds

# Debian packages the tests need, each only when missing: PostgreSQL's binaries (the MLflow on
# PostgreSQL test starts its own cluster on a free port; the packaged service is not used) and
# chromium (the Prefect UI and demo tests drive it through Playwright; nothing downloads a browser).
system-deps:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  $$sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive \
	  $$sudo apt-get install -y -q --no-install-recommends $$missing; \
	fi

test: install system-deps
	$(PY) -m pytest

lint: install
	ruff check .
