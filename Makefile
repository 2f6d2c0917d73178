# `make test` and `make demo` each create .venv and install the project on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR = false

.PHONY: test demo install clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Python 3.11) on PATH"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# The demo: `mlflow run` of the `main` entry (synthetic corpus, the demo sweep, the report).
demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" MLFLOW_TRACKING_URI="$${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}" \
	  $(VENV)/bin/mlflow run . --env-manager local --experiment-name svbench-demo

clean:
	rm -rf $(VENV) data/tiny data/demo mlruns mlflow.db
