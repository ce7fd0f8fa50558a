# Two commands for a newcomer: `make run` (demo pipeline) and `make test` (the test suite).
# Both create .venv when missing and install the package with its pinned dependency ranges.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test bench install clean

$(STAMP): setup.py
	@command -v java >/dev/null || { echo "Java 17 is required (java not found on PATH)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[bench]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/crm-mining run

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m bench.run_bench

clean:
	rm -rf lake demo_data mlflow.db mlartifacts reports spark-warehouse metastore_db derby.log
