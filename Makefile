# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= runs/demo

.PHONY: demo test test-fast lint bench drill clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m pav_jax.main --config=configs/demo.py --workdir=$(WORKDIR)

# Two workers, one test file at a time each (a file's shared fixtures and
# compiled programs are built once), slowest files first (tests/conftest.py).
XDIST := -n 2 --dist loadscope --no-loadscope-reorder

# The whole suite (CI runs this): lint, then every test, slow ones included.
test: lint
	$(PY) -m pytest $(XDIST) -q tests

# The quick loop while editing: lint, then all but the `slow`-marked tests.
test-fast: lint
	$(PY) -m pytest $(XDIST) -q -m "not slow" tests

lint: $(STAMP)
	$(VENV)/bin/ruff check pav_jax tests benchmarks tools configs experiments

# Kill / corrupt / changed-config / NaN / lock drills on a tiny pipeline.
drill: $(STAMP)
	$(PY) tools/drill.py

bench: $(STAMP)
	$(PY) benchmarks/sampler.py

clean:
	rm -rf $(VENV) runs
