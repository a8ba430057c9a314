# Two commands a newcomer needs: `make repro` (the pipeline on the embedded default) and
# `make test`. Both create .venv and install the project first (every pip call uses
# constraints.txt, which pins the torch trio and fastapi).
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install system-deps repro test lint

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

repro: install
	dvc repro
	dvc metrics show

# Debian packages the tests need, each only when missing: PostgreSQL's binaries (the MLflow on
# PostgreSQL test starts its own cluster on a free port; the packaged service is not used) and
# chromium (the browser tests drive it through Playwright; nothing downloads a browser).
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
