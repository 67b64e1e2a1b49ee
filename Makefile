# xgpp: two commands on a fresh machine.  `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: demo test lint bench docs clean

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# PyTorch goes in first, pinned: the CPU wheel is on disk, an unpinned torch pulls a CUDA build.
$(VENV)/.torch: $(VENV)/bin/activate
	$(PIP) install --quiet "$(TORCH_SPEC)"
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.torch pyproject.toml
	$(PIP) install --quiet -e ".[test]"
	touch $@ $(VENV)/.installed

$(VENV)/.installed-docs: $(VENV)/.torch pyproject.toml
	$(PIP) install --quiet -e ".[docs]"
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/xgpp demo

# `make test` lints first (ruff, then mypy with pyproject's [tool.mypy]): .ci/run calls it.
# Test files are spread over TEST_WORKERS processes (pytest-xdist; a file's tests stay in one
# process, so its fixtures are built once); `make test TEST_WORKERS=0` runs them in one.
TEST_WORKERS ?= 2
test: lint
	$(PY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check xgpp tests benchmarks
	$(VENV)/bin/mypy

# `make bench BENCH_ARGS=--quick` for the few-minute versions
bench: $(VENV)/.installed-test
	$(PY) benchmarks/predict.py $(BENCH_ARGS)
	$(PY) benchmarks/train_loader.py $(BENCH_ARGS)
	$(PY) benchmarks/train_loader.py --moe $(BENCH_ARGS)

# HTML documentation in docs/_build/html; every Sphinx warning is an error.  The API pages
# under docs/generated and every page are rebuilt each time (-E), so a removed name leaves no
# stale page and no warning hides in an unchanged file.
docs: $(VENV)/.installed-docs
	rm -rf docs/generated
	$(VENV)/bin/sphinx-build -E -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf $(VENV) xgpp-demo xgpp-experiment .pytest_cache docs/_build docs/generated
