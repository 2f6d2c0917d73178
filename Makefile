# `make test` and `make demo` each create .venv and install the project on a fresh machine.
# the first of these that is Python 3.11 or newer (override: make test PYTHON=/path/to/python3.x)
ifndef PYTHON
PYTHON := $(firstword $(foreach p,python3 python3.11 python3.12 python3.13 python3.14,\
  $(shell command -v $(p) >/dev/null 2>&1 && $(p) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  2>/dev/null && echo $(p))))
endif
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR = false

.PHONY: test demo install clean gpu-check gpu-check-bundle

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "need Python 3.11 or newer on PATH (python3, python3.11 ... python3.14)"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# tests/run_suite.py: the tests on 2 pytest-xdist workers (SVBENCH_TEST_WORKERS), then the solo tests alone
# (ARGS are passed to pytest)
test: $(STAMP)
	$(PY) tests/run_suite.py $(ARGS)

# The demo: `mlflow run` of the `main` entry (synthetic corpus, the demo sweep, the report).
demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" MLFLOW_TRACKING_URI="$${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}" \
	  $(VENV)/bin/mlflow run . --env-manager local --experiment-name svbench-demo

# The GPU check (benchmarks/gpu_check.py) on a GPU node that has torch but no package registry:
# `make gpu-check-bundle` here fetches the wheels it lacks (for GPU_PY, the versions of .venv) into
# gpu_bundle/site (26 MB), which travels with the checkout; `make gpu-check` there runs the check within the node's
# time limit.
GPU_PY ?= 3.12
GPU_WHEELS = zeus pydantic pydantic-core annotated-types typing-inspection typing-extensions soundfile \
  cffi pycparser rich markdown-it-py mdurl pygments tyro docstring-parser typeguard httpx httpcore anyio \
  certifi idna h11 python-dateutil six amdsmi
gpu-check-bundle: $(STAMP)
	rm -rf gpu_bundle && mkdir -p gpu_bundle/wheels
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PY) --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  --platform any -d gpu_bundle/wheels $$($(PY) -c "import importlib.metadata as m; \
	  print(' '.join(f'{n}=={m.version(n)}' for n in '$(GPU_WHEELS)'.split()))")
	for w in gpu_bundle/wheels/*.whl; do $(PY) -m zipfile -e $$w gpu_bundle/site; done
	rm -rf gpu_bundle/wheels && du -sh gpu_bundle

gpu-check:
	PYTHONPATH="$(CURDIR):$(CURDIR)/gpu_bundle/site" timeout 560 python3 benchmarks/gpu_check.py --out gpu_check \
	  --budget-s 420

clean:
	rm -rf $(VENV) data/tiny data/demo mlruns mlflow.db
