# Two commands a newcomer needs: `make repro` (the pipeline on the embedded default) and
# `make test`. Both create .venv and install the project first (every pip call uses
# constraints.txt, which pins the torch trio and fastapi).
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install repro test lint

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

repro: install
	dvc repro
	dvc metrics show

test: install
	$(PY) -m pytest

lint: install
	ruff check .
