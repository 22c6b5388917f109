# Two commands do all set-up: `make demo` and `make test`.
# The virtual environment is (re)built whenever pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: venv demo test test-fast lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) jobs/demo.py --out outputs/demo

# Everything (what CI runs); the slowest tests are listed at the end of the run.
test: $(STAMP)
	$(PY) -m pytest -q --durations=15

# The inner loop: unit and small integration tests, no started heads, no end-to-end runs.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not cluster" --durations=10

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf outputs .pytest_cache
